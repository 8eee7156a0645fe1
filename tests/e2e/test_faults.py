"""Fault injection through Flower's real simulation engine: each fault ends in a run recorded as
``failed`` with its reason (before round 1 for the input faults), a non-zero exit code from the
command that drove it, and no process left behind."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from helpers import REPO, only_results, write_unimib_shar

from mefl import cli
from mefl.runtime.processes import descendants, process_alive
from mefl.runtime.simulation import SimulationSuperLink

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not Path("/proc").is_dir(), reason="watches processes through /proc")]


def _strict(path: Path) -> dict:
    def refuse(token):
        raise ValueError(f"{token} in {path}: not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _run_watching(tmp_path: Path, config: dict, clients: int, during=None) -> tuple[dict, dict[int, str]]:
    """One run on a private SuperLink; ``during(link)`` runs beside it. Returns the results and
    every process seen below the SuperLink, for the check that none outlives it."""
    seen: dict[int, str] = {}
    with SimulationSuperLink(tmp_path / "flwr-home") as link:
        outcome = {}
        runner = threading.Thread(target=lambda: outcome.setdefault("proc", link.run(REPO, config, clients)))
        runner.start()
        while runner.is_alive():
            seen.update(descendants([link.process.pid]))
            if during is not None:
                during = during(link, seen)
            time.sleep(0.2)
        runner.join()
    deadline = time.monotonic() + 30
    while any(process_alive(pid, started) for pid, started in seen.items()) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not [pid for pid, started in seen.items() if process_alive(pid, started)], "processes left running"
    return _strict(next((tmp_path / "out").glob("*/results.json"))), seen


def _config(data_dir, tmp_path, **extra) -> dict:
    return {"data-dir": data_dir, "output-dir": tmp_path / "out", "local-epochs": 1, "min-partition-size": 10, **extra}


@pytest.mark.usefixtures("campaigns_on_the_session_cluster")
def test_a_diverging_run_fails_and_the_campaign_command_says_so(tmp_path, small_fmnist, capsys):
    """A learning rate far too large: the clients' losses turn NaN; the run must not complete."""
    out = tmp_path / "campaign"
    config = (
        f"data-dir='{small_fmnist}' learning-rate=1000000.0 local-epochs=1 min-partition-size=10 num-server-rounds=3"
    )
    argv = ["study", "--task", "fmnist", "--seeds", "0", "--variants", "me", "--clients", "2", "--out", str(out)]
    assert cli.main([*argv, "--run-config", config]) == 1
    assert "1 run(s) did not complete: me-seed0" in capsys.readouterr().err
    results = _strict(next(out.glob("runs/me-seed0/*/results.json")))
    assert results["status"] == "failed" and "NonFiniteError" in results["error"]
    assert "non-finite" in results["error"]
    assert cli.main(["status", str(out)]) == 1


def test_an_exit_profile_that_does_not_fit_the_federation_fails_before_round_1(tmp_path, small_fmnist):
    """Through the real engine; every other misfit of profile and federation: test_run_faults.py."""
    results, _ = _run_watching(tmp_path, _config(small_fmnist, tmp_path, **{"exit-profile": "1:8,2:8,3:8"}), clients=2)
    message = "covers 24 clients, the federation has 2 partitions"
    assert results["status"] == "failed" and "FederationError" in results["error"] and message in results["error"]
    assert results["rounds"] == [] and "federation" not in results


def test_one_non_finite_value_in_the_har_files_fails_before_round_1_naming_the_file(tmp_path):
    root = write_unimib_shar(tmp_path / "har", n=120)
    data = scipy.io.loadmat(root / "acc_data.mat")["acc_data"]
    data[7, 3] = np.nan
    scipy.io.savemat(root / "acc_data.mat", {"acc_data": data})
    results, _ = _run_watching(tmp_path, _config(root, tmp_path, task="har"), clients=2)
    assert results["status"] == "failed" and results["rounds"] == []
    assert "acc_data.mat: 1 non-finite value(s) (NaN or Inf) in 1 window(s), the first in row 8" in results["error"]


def test_a_dead_simulation_worker_fails_the_run_naming_it(tmp_path, small_fmnist):
    """SIGKILL one of the Ray client actors once round 1 has started: Flower's backend cannot
    restart it and would keep sending it messages, so the run stops, naming the dead worker."""
    killed = []

    def kill_one_actor(link, seen):
        files = list((tmp_path / "out").glob("*/results.json"))
        if not files or "federation" not in json.loads(files[0].read_text()):
            return kill_one_actor  # the census first: the actors exist and the run is under way
        for pid in seen:
            try:
                if b"ClientAppActor" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return None
            except OSError:
                continue
        return kill_one_actor

    config = _config(small_fmnist, tmp_path, **{"num-server-rounds": 20})
    results, _ = _run_watching(tmp_path, config, clients=4, during=kill_one_actor)
    assert killed, "no client actor found to kill"
    assert results["status"] == "failed" and "DeadWorker" in results["error"], results.get("error")
    assert "the simulation worker serving node" in results["error"] and "died" in results["error"]
    assert len(results["rounds"]) < 20


def test_only_results_is_strict_json_for_a_good_run(tmp_path, small_fmnist):
    results, _ = _run_watching(tmp_path, _config(small_fmnist, tmp_path, **{"num-server-rounds": 1}), clients=2)
    assert results["status"] == "completed" and sorted(results["federation"]) == ["0", "1"]
    assert only_results(tmp_path / "out")["status"] == "completed"
