"""A stop (Ctrl-C, or SIGTERM turned into KeyboardInterrupt) that lands while a Ray cluster or a
simulation SuperLink is still starting must not leave its processes behind: ``__exit__`` never
runs when ``__enter__`` raises. Seen for real: a campaign stopped during ``ray start`` orphaned
a Ray head. Real processes (``sleep``) stand in for Ray and the SuperLink.

Likewise a Ctrl-C between starting a process and recording it: ``deferred_interrupts`` holds it
until the record is made (seen for real: the deployment launcher hung at exit after a Ctrl-C
that landed while its run timer was starting)."""

import signal
import subprocess
import threading
from pathlib import Path

import pytest

from mefl.runtime import simulation
from mefl.runtime.processes import ManagedProcess, deferred_interrupts

POPEN = subprocess.Popen  # the real one, also where a test replaces the module's attribute


def _sleeper(*args, **kwargs):
    return POPEN(["sleep", "120"], start_new_session=True)


def _managed(popen):
    return ManagedProcess("sleep", popen, Path("/dev/null"))


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt("signal 15")


def test_interrupted_ray_head_start_stops_the_head(tmp_path, monkeypatch):
    cluster = simulation.RayCluster(tmp_path / "ray")
    monkeypatch.setattr(cluster, "_start", lambda args, num_cpus: cluster.nodes.append(_managed(_sleeper())))
    monkeypatch.setattr(cluster, "wait_for_nodes", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        with cluster:
            pass
    assert cluster.nodes and not any(node.running() for node in cluster.nodes)


def test_interrupted_superlink_start_stops_the_superlink(tmp_path, monkeypatch):
    monkeypatch.setattr(simulation.subprocess, "Popen", _sleeper)
    monkeypatch.setattr(simulation.urllib.request, "urlopen", _interrupt)
    link = simulation.SimulationSuperLink(tmp_path / "home")
    with pytest.raises(KeyboardInterrupt):
        with link:
            pass
    assert link.process is not None and not link.process.running()


def test_ctrl_c_inside_deferred_interrupts_is_raised_after_the_block():
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            signal.raise_signal(signal.SIGINT)  # delivered here, at once
            steps.append("after the signal")
            with deferred_interrupts():  # nested: still held until the outermost block ends
                steps.append("nested")
            steps.append("end of block")
    assert steps == ["after the signal", "nested", "end of block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_sigterm_handler_runs_after_the_block():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with deferred_interrupts():
            signal.raise_signal(signal.SIGTERM)
            assert seen == []
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_deferred_interrupts_leaves_signals_alone_outside_the_main_thread():
    handlers = []

    def worker():
        with deferred_interrupts():
            handlers.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert handlers == [signal.default_int_handler]


def test_an_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with deferred_interrupts():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # and nothing raised
    finally:
        signal.signal(signal.SIGINT, previous)
