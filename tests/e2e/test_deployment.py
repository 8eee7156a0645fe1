"""The app on a real deployment: one flower-superlink and flower-supernode processes on
127.0.0.1, TLS and SuperNode authentication on, tiny synthetic data.

Every wait is bounded; every process is stopped (process groups, SIGTERM then SIGKILL) when a
test ends, pass or fail, and the tests check that nothing of theirs is left running."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import REPO, write_idx_fashion_mnist

from mefl.runtime.deployment import LocalDeployment
from mefl.runtime.processes import port_is_bound, run_config_arg

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds leftover processes through /proc"),
]

EXITS = ["block1", "block3", "block5"]
KINDS = ("personalized", "global_local", "central")


def processes_of(flwr_home: Path) -> list[int]:
    """Live processes whose environment names this FLWR_HOME: everything a deployment started,
    however deep (Flower's own subprocesses inherit the environment)."""
    marker = f"FLWR_HOME={flwr_home}".encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    if marker in handle.read() + b"\0":
                        found.append(int(entry))
            except OSError:
                continue
    return found


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise TimeoutError(f"gave up after {timeout:.0f}s waiting for {what}")


def assert_all_stopped(flwr_home: Path, ports: list[int]) -> None:
    """Nothing of this deployment runs or listens any more. Leftovers (a bug) are killed here,
    so that a failing test does not leave them behind either."""
    deadline = time.monotonic() + 15
    while processes_of(flwr_home) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = processes_of(flwr_home)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"processes left running: {left}"
    assert not [p for p in ports if port_is_bound(p)], "a port is still bound"


def base_config(data_dir: Path, output_dir: Path, rounds: int) -> dict:
    return {
        "data-dir": data_dir,
        "output-dir": output_dir,
        "num-server-rounds": rounds,
        "local-epochs": 1,
        "min-partition-size": 20,
        "min-available-nodes": 2,
        "min-train-nodes": 2,
        "min-train-replies": 2,
        "round-timeout": 180.0,
        "eval-batch-size": 200,
    }


@pytest.fixture(scope="module")
def fmnist_dir(tmp_path_factory):
    return write_idx_fashion_mnist(tmp_path_factory.mktemp("data"), n_train=240, n_test=60)


@pytest.fixture(scope="module")
def shards(fmnist_dir, tmp_path_factory):
    """One shard file per device, written by the shard CLI (as for real devices)."""
    out = tmp_path_factory.mktemp("shards")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mefl",
            "shards",
            "--num-partitions",
            "3",
            "--out",
            str(out),
            "--app-dir",
            str(REPO),
            "--run-config",
            f"data-dir='{fmnist_dir}' min-partition-size=20",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, shards):
    """SuperLink (TLS, SuperNode authentication) + 3 registered SuperNodes, each with its shard."""
    workdir = tmp_path_factory.mktemp("deployment")
    link = LocalDeployment(workdir, REPO)
    try:
        with link:
            link.add_nodes([f"shard-file='{shards / f'client_{i:03d}.npz'}'" for i in range(3)])
            link.wait_for_nodes(3, timeout=90)
            yield link
    finally:
        link.close()
        assert_all_stopped(link.flwr_home, [link.port, *(n.port for n in link.nodes)])


def assert_round_complete(entry: dict, kinds=KINDS) -> None:
    for kind in kinds:
        assert list(entry[kind]) == EXITS, kind
        for metrics in entry[kind].values():
            assert 0.0 <= metrics["accuracy"] <= 1.0
    assert entry["seconds"] > 0 and entry["bytes_down"] > 0 and entry["bytes_up"] > 0


def test_launcher_runs_two_rounds_on_three_supernodes_with_tls_and_node_auth(fmnist_dir, shards, tmp_path):
    """``mefl deploy``: the whole path a user takes, then nothing left running."""
    workdir, outputs = tmp_path / "deploy", tmp_path / "outputs"
    config = run_config_arg(base_config(fmnist_dir, outputs, 2))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mefl",
            "deploy",
            "--nodes",
            "3",
            "--shards",
            str(shards),
            "--workdir",
            str(workdir),
            "--run-config",
            config,
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:  # the launcher hung: stop it the way a user would, then hard
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        assert_all_stopped(workdir / "flwr-home", [])
    assert proc.returncode == 0, out[-5000:]
    assert "TLS, SuperNode authentication" in out
    config_toml = (workdir / "flwr-home" / "config.toml").read_text()
    assert "root-certificates" in config_toml and "insecure" not in config_toml
    superlink_log = (workdir / "logs" / "superlink.log").read_text()
    assert "Uvicorn running on https://" in superlink_log
    assert superlink_log.count("[Fleet.ActivateNode] Activated") == 3

    files = sorted(outputs.glob("*/results.json"))
    assert len(files) == 1, files
    results = json.loads(files[0].read_text())
    assert results["status"] == "completed", results.get("error")
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for entry in results["rounds"]:
        assert_round_complete(entry)
        assert entry["replies"]["train"] == {
            "sent": 3,
            "ok": 3,
            "failed": 0,
            "missing": 0,
            "partitions": [0, 1, 2],
            "errors": {},
        }
        assert entry["replies"]["evaluate"]["ok"] == 3
        assert len(entry["personalized"]["block5"]["per_client"]) == 3
    assert (files[0].parent / "model.pt").exists()
    assert f"results      {files[0]}" in out
    manifest = json.loads((shards / "manifest.json").read_text())
    assert sum(p["num_train"] for p in results["partitions"].values()) == sum(
        c["num_train"] for c in manifest["clients"]
    )


def test_supernode_with_unregistered_key_is_refused(deployment):
    before = deployment.online_node_ids()
    assert len(before) == 3
    intruder = deployment.add_node("partition-id=0 num-partitions=3", register=False)
    try:
        code = intruder.process.popen.wait(timeout=60)
    finally:
        deployment.kill_node(intruder, signal.SIGTERM)
    log = intruder.process.log_path.read_text()
    assert code != 0, log
    assert "Failed to activate SuperNode" in log
    superlink_log = deployment.superlink.log_path.read_text()
    assert "No SuperNode found with the given public key" in superlink_log
    nodes = deployment.list_nodes()
    assert {int(n["node-id"]) for n in nodes} == {n.node_id for n in deployment.nodes if n.node_id is not None}
    assert deployment.online_node_ids() == before


def test_run_completes_when_a_supernode_is_killed_mid_round_and_it_rejoins(deployment, fmnist_dir, tmp_path):
    """SIGKILL one SuperNode (and its ClientApp) while it trains in round 1 of 3: Flower 1.42's
    SuperLink answers for it with a NODE_UNAVAILABLE error once its heartbeat lapses (at most
    2 x 30 s), the round goes on with the two others; restarted, the node takes part again.
    No federated evaluation phase (fraction-evaluate = 0) to halve the rounds' time; the
    central evaluation and the personalized scores still come every round."""
    nodes = [n for n in deployment.nodes if n.node_id is not None]
    deployment.wait_for_nodes(3, timeout=60)
    victim = nodes[2]
    log_path = victim.process.log_path
    trained_before = log_path.read_text().count("Receiving: train")
    config = {**base_config(fmnist_dir, tmp_path, 3), "fraction-evaluate": 0.0}
    outcome: dict = {}

    def run():
        try:
            outcome["run"] = deployment.run(config, timeout=420)
        except BaseException as error:  # reported below
            outcome["error"] = error

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    try:
        wait_for(
            lambda: log_path.read_text().count("Receiving: train") > trained_before, 120, "round 1 to reach the victim"
        )
        deployment.kill_node(victim, signal.SIGKILL)

        def round_one_done():
            files = list(tmp_path.glob("*/results.json"))
            if files:
                rounds = json.loads(files[0].read_text())["rounds"]
                return rounds and "seconds" in rounds[0]

        wait_for(round_one_done, 150, "round 1 to finish without the victim")
        deployment.start_node(victim)  # the device comes back with the same key
        runner.join(timeout=400)
        assert not runner.is_alive(), "the run did not finish"
    finally:
        if runner.is_alive():
            deployment.close()
    assert "error" not in outcome, outcome.get("error")
    run = outcome["run"]
    results = run.results
    assert run.returncode == 0 and run.status == "finished:completed", run.output[-3000:]
    assert results["status"] == "completed", results.get("error")
    assert (run.results_path.parent / "model.pt").exists()
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]
    for entry in results["rounds"]:
        assert_round_complete(entry, kinds=("personalized", "central"))
    first = results["rounds"][0]["replies"]["train"]
    assert first["sent"] == 3 and first["ok"] == 2 and first["failed"] + first["missing"] == 1, first
    assert first["partitions"] == [0, 1]
    for reason in first["errors"].values():
        assert "Node Unavailable" in reason
    # Rejoined: the restarted node trains again in the last round.
    assert results["rounds"][2]["replies"]["train"]["partitions"] == [0, 1, 2]
    deployment.wait_for_nodes(3, timeout=60)


def _finished_rounds(output_dir: Path) -> list:
    files = list(output_dir.glob("*/results.json"))
    return [r for r in json.loads(files[0].read_text())["rounds"] if "seconds" in r] if files else []


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_stopping_the_launcher_mid_run_stops_every_process_and_records_the_run_as_interrupted(
    tmp_path, fmnist_dir, stop
):
    """``--insecure`` says so loudly. Ctrl-C in round 2 stops the run first (its results.json says
    ``interrupted``, not a failure of the federation), then the SuperNodes, then the SuperLink
    (also with ``--timestamps``, where the launcher pipes every log). SIGKILL of the launcher
    itself cannot be caught: its watchdog stops what it had started."""
    workdir = tmp_path / "deploy"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mefl",
            "deploy",
            "--nodes",
            "2",
            "--insecure",
            "--timestamps",
            "--workdir",
            str(workdir),
            "--run-config",
            f"data-dir='{fmnist_dir}' output-dir='{tmp_path / 'outputs'}' num-server-rounds=50",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: "starting the run" in "".join(lines), 90, "the SuperNodes to come online")
        assert processes_of(workdir / "flwr-home")
        wait_for(lambda: _finished_rounds(tmp_path / "outputs"), 180, "round 1 to finish")
        os.kill(proc.pid, stop)
        try:
            returncode = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGUSR1)  # the launcher prints every thread's stack
            time.sleep(2)
            raise AssertionError(
                "the launcher did not stop within 60 s of SIGINT:\n" + "".join(lines)[-6000:]
            ) from None
        assert returncode == (130 if stop == signal.SIGINT else -signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        reader.join(timeout=10)
        assert_all_stopped(workdir / "flwr-home", [])
    results = json.loads(next((tmp_path / "outputs").glob("*/results.json")).read_text())
    assert results["status"] == "interrupted" and "signal" in results["error"]
    assert results["checkpoint"]["round"] >= 1  # resumable
    out = "".join(lines)
    assert "INSECURE" in out and (stop == signal.SIGKILL or "interrupted" in out)
    assert "insecure = true" in (workdir / "flwr-home" / "config.toml").read_text()
    first_line = (workdir / "logs" / "supernode-0.log").read_text().splitlines()[0]
    assert first_line[:4].isdigit() and "Starting Flower SuperNode" in first_line  # --timestamps


def test_a_node_with_a_corrupt_shard_file_fails_the_run_before_round_1_and_the_launcher_exits_1(
    tmp_path, fmnist_dir, shards
):
    """A device whose shard file is truncated: the census before round 1 names the node and the
    file, the run is recorded as failed, and the launcher's exit code says so."""
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    victim = copy / "client_002.npz"
    victim.write_bytes(victim.read_bytes()[:1000])
    workdir = tmp_path / "deploy"
    run_config = f"data-dir='{fmnist_dir}' output-dir='{tmp_path / 'outputs'}' num-server-rounds=2"
    run_config += " min-partition-size=20"
    command = [sys.executable, "-m", "mefl", "deploy", "--nodes", "3", "--shards", str(copy), "--insecure"]
    command += ["--workdir", str(workdir), "--run-config", run_config]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:]
    results = json.loads(next((tmp_path / "outputs").glob("*/results.json")).read_text())
    assert results["status"] == "failed" and results["rounds"] == []
    assert "could not start" in results["error"] and "client_002.npz is corrupt or truncated" in results["error"]
    assert_all_stopped(workdir / "flwr-home", [])
