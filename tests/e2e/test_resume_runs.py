"""Continuing stopped runs through the real simulation engine and real processes."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, only_results, relative_distance, write_idx_fashion_mnist

from mefl.campaigns import completed_results, run_configs
from mefl.runtime.app_bundle import bundle_folder
from mefl.runtime.processes import BIN, descendants, process_alive, run_config_arg
from mefl_app.server.run_folder import RESULTS_FILE

pytestmark = pytest.mark.e2e
EXITS = ["block1", "block3", "block5"]


# What a run keeps between rounds beside the model: FedDyn's h and its clients' g (with mutual
# distillation: DepthFL without its ramp, which a shorter run would rescale) and HypeMeFed's
# hypernetworks (2 passes a round, not 25: what is kept, not how well they learn), with a client at
# each exit level. (A stateless FedAvg run is continued by
# test_a_killed_campaign_leaves_no_processes_and_continues.)
KEPT_STATE = {
    "strategy": "feddyn",
    "distill-teacher": "mutual",
    "distill-weight": 1.0,
    "distill-temperature": 1.0,
    "hypernetwork-rank": 100,
    "hypernetwork-epochs": 2,
    "exit-profile": "1:1,2:1,3:1",
}


@pytest.mark.usefixtures("campaigns_on_the_session_cluster")
def test_a_campaign_continues_a_stopped_run_to_the_same_result(tmp_path):
    """Simulation engine: a run stopped after round 2 of 3 and continued by a campaign ends
    where an uninterrupted run ends, with what the strategy and the clients keep between rounds."""
    data = write_idx_fashion_mnist(tmp_path / "data", n_train=300, n_test=60)
    base = {
        "task": "fmnist",
        "data-dir": str(data),
        "local-epochs": 1,
        "min-partition-size": 10,
        "seed": 0,
        "partition-seed": 0,
        "num-server-rounds": 3,
        **KEPT_STATE,
    }
    out = tmp_path / "campaign"
    run_configs({"whole": base, "stopped": {**base, "num-server-rounds": 2}}, out, clients=3, cpus_per_client=1)
    whole = completed_results(out / "runs" / "whole")
    first = completed_results(out / "runs" / "stopped")
    # Make the 2-round run look killed in round 3 of 3: no final model, status still "running".
    path = out / "runs" / "stopped" / first["_path"].split("/")[-2]
    (path / "model.pt").rename(path / "checkpoint-round2.pt")
    killed = {k: v for k, v in first.items() if k not in ("_path", "finished_at", "wall_seconds")}
    killed.update(status="running", checkpoint={**first["checkpoint"], "file": "checkpoint-round2.pt"})
    (path / RESULTS_FILE).write_text(json.dumps(killed))
    assert "server_state" in killed["checkpoint"]

    run_configs({"stopped": base}, out, clients=3, cpus_per_client=1)
    continued = completed_results(out / "runs" / "stopped")
    assert continued["_path"] != first["_path"]  # a fresh attempt folder; the stopped one is kept
    assert continued["resumed"] == [{"from": str(path.resolve()), "after_round": 2}]
    assert [r["round"] for r in continued["rounds"]] == [1, 2, 3]
    assert continued["rounds"][:2] == first["rounds"]
    # Round 3 trains from the same model, state and per-round seeds; only the float summation
    # order of the aggregate (reply order) may differ.
    for kind in ("personalized", "global_local", "central"):
        for exit_name in EXITS:
            assert continued["rounds"][2][kind][exit_name]["accuracy"] == pytest.approx(
                whole["rounds"][2][kind][exit_name]["accuracy"], abs=0.02
            )
    assert continued["rounds"][2]["bytes_cumulative"] == whole["rounds"][2]["bytes_cumulative"]
    finished = Path(continued["_path"]).parent
    assert sorted(p.name for p in finished.glob("*.pt")) == ["model.pt", "server-state-round3.pt"]
    assert continued["checkpoint"]["round"] == 3
    expected = torch.load(Path(whole["_path"]).parent / "model.pt", weights_only=True)
    got = torch.load(finished / "model.pt", weights_only=True)
    distance = relative_distance(got, expected)
    assert distance < 1e-4, f"the continued run's final model is another model (relative distance {distance:.2e})"


def test_a_killed_campaign_leaves_no_processes_and_continues(tmp_path):
    """Real processes: `kill` (SIGTERM) the campaign command (its ``python -m mefl_app.experiments``
    alias, as results/ records it) after its first finished round;
    its SuperLink, Ray cluster and client actors stop with it, and the same command run again
    continues the stopped run instead of starting over."""
    data = write_idx_fashion_mnist(tmp_path / "data", n_train=300, n_test=60)
    out = tmp_path / "campaign"
    command = [
        sys.executable,
        "-m",
        "mefl_app.experiments",
        "run",
        "--task",
        "fmnist",
        "--seeds",
        "0",
        "--variants",
        "me",
        "--clients",
        "3",
        "--out",
        str(out),
        "--run-config",
        f"data-dir='{data}' num-server-rounds=5 local-epochs=1 min-partition-size=10",
    ]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started, seen = time.monotonic(), {}
    try:
        while not any(json.loads(p.read_text()).get("checkpoint") for p in out.glob("runs/me-seed0/*/results.json")):
            assert proc.poll() is None and time.monotonic() - started < 300, "no round finished"
            seen.update(descendants([proc.pid]))
            time.sleep(0.2)
        seen.update(descendants([proc.pid]))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 60
    while any(process_alive(pid, start) for pid, start in seen.items()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(seen) > 3  # the SuperLink, Ray's daemons and actors were found ...
    assert not [pid for pid, start in seen.items() if process_alive(pid, start)]  # ... and are gone
    stopped = json.loads(next(out.glob("runs/me-seed0/*/results.json")).read_text())
    assert stopped["status"] == "interrupted" and stopped["checkpoint"]["round"] >= 1  # resumable

    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    continued = completed_results(out / "runs" / "me-seed0")
    assert [r["round"] for r in continued["rounds"]] == list(range(1, 6))
    assert continued["resumed"][0]["after_round"] == stopped["checkpoint"]["round"]


def test_flwr_stop_records_the_run_as_interrupted_and_resumable(superlink, small_fmnist, tmp_path):
    """``flwr stop`` of a running simulation: the run reads as interrupted (resumable), with its
    checkpoint, not as failed."""
    out = tmp_path / "out"
    config = {"data-dir": small_fmnist, "output-dir": out, "local-epochs": 1, "min-partition-size": 10}
    config["num-server-rounds"] = 30
    with bundle_folder(REPO) as app:
        command = [str(BIN / "flwr"), "run", str(app), "test", "--format", "json"]
        command += ["--run-config", run_config_arg(config), "--federation-config", "num-supernodes=3"]
        started = subprocess.run(command, env=superlink.env, capture_output=True, text=True)
    run_id = json.loads(started.stdout)["run-id"]
    deadline = time.monotonic() + 300
    while not any(json.loads(p.read_text()).get("checkpoint") for p in out.glob("*/results.json")):
        assert time.monotonic() < deadline, "no round finished"
        time.sleep(0.5)
    subprocess.run([str(BIN / "flwr"), "stop", run_id, "test"], env=superlink.env, check=True, capture_output=True)
    deadline = time.monotonic() + 120
    while (results := only_results(out))["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert results["status"] == "interrupted", results.get("error")
    assert results["checkpoint"]["round"] >= 1 and len(results["rounds"]) < 30
