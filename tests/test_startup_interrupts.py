"""A stop (Ctrl-C, or SIGTERM turned into KeyboardInterrupt) that lands while a Ray cluster or a
simulation SuperLink is still starting must not leave its processes behind: ``__exit__`` never
runs when ``__enter__`` raises. Seen for real: a campaign stopped during ``ray start`` orphaned
a Ray head. Real processes (``sleep``) stand in for Ray and the SuperLink."""

import subprocess

import pytest

from mefl_app import simulation


POPEN = subprocess.Popen  # the real one, also where a test replaces the module's attribute


def _sleeper(*args, **kwargs):
    return POPEN(["sleep", "120"], start_new_session=True)


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt("signal 15")


def test_interrupted_ray_head_start_stops_the_head(tmp_path, monkeypatch):
    cluster = simulation.RayCluster(tmp_path / "ray")
    monkeypatch.setattr(cluster, "_start", lambda args, num_cpus: cluster.nodes.append(_sleeper()))
    monkeypatch.setattr(cluster, "wait_for_nodes", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        with cluster:
            pass
    assert cluster.nodes and all(node.poll() is not None for node in cluster.nodes)


def test_interrupted_superlink_start_stops_the_superlink(tmp_path, monkeypatch):
    monkeypatch.setattr(simulation.subprocess, "Popen", _sleeper)
    monkeypatch.setattr(simulation.urllib.request, "urlopen", _interrupt)
    link = simulation.SimulationSuperLink(tmp_path / "home")
    with pytest.raises(KeyboardInterrupt):
        with link:
            pass
    assert link.process is not None and link.process.poll() is not None
