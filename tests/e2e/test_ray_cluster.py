"""The simulation attached to a Ray cluster started with ``ray start`` on 127.0.0.1: clients placed
on a head and a worker node, clients sharing a GPU by fractional GPU resources, and every Ray
process stopped afterwards. Flower's actor pool holds as many client actors as the cluster's
resources fit (``client-resources-num-cpus`` / ``-num-gpus`` each), which is what is checked."""

import threading
import time
from pathlib import Path

import pytest
from helpers import REPO, only_results, write_idx_fashion_mnist

from mefl.runtime.processes import descendants, process_alive
from mefl.runtime.simulation import RayCluster, SimulationSuperLink

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray actors through /proc")]
CLIENTS = 4


def _client_actors(node_pid: int) -> set[int]:
    """Pids of Flower's client actors (process title ``ray::ClientAppActor...``) under one Ray node."""
    found = set()
    for pid in descendants([node_pid]):
        try:
            if b"ClientAppActor" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.add(pid)
        except OSError:
            pass
    return found


def _run_watching_actors(cluster: RayCluster, tmp_path: Path, **resources) -> tuple[dict, list[dict[int, set[int]]]]:
    """Run 2 rounds of the app on ``cluster``; returns the results and, sampled every 0.2 s
    during the run, the client actors found under each Ray node."""
    data_dir = write_idx_fashion_mnist(tmp_path / "data", n_train=320, n_test=80)
    config = {
        "data-dir": data_dir,
        "output-dir": tmp_path / "out",
        "num-server-rounds": 2,
        "local-epochs": 1,
        "min-partition-size": 10,
    }
    samples: list[dict[int, set[int]]] = []
    with SimulationSuperLink(tmp_path / "flwr-home", ray_address=cluster.address) as link:
        outcome = {}
        run = threading.Thread(target=lambda: outcome.setdefault("proc", link.run(REPO, config, CLIENTS, **resources)))
        run.start()
        while run.is_alive():
            samples.append({node.pid: _client_actors(node.pid) for node in cluster.nodes})
            time.sleep(0.2)
        run.join()
    proc = outcome["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = only_results(tmp_path / "out")
    assert results["status"] == "completed"
    assert [r["replies"]["train"]["ok"] for r in results["rounds"]] == [CLIENTS, CLIENTS]
    return results, samples


def _assert_stopped(processes: dict[int, str]) -> None:
    left = [pid for pid, started in processes.items() if process_alive(pid, started)]
    assert not left, f"Ray processes left running: {left}"


def test_clients_spread_over_head_and_worker_node(tmp_path):
    with RayCluster(tmp_path / "ray", num_cpus=1) as cluster:
        cluster.add_worker(num_cpus=1)
        head, worker = (node.pid for node in cluster.nodes)
        _, samples = _run_watching_actors(cluster, tmp_path, num_cpus=1)
        ray_processes = descendants([head, worker])
    # One 1-CPU actor fits each node: the clients ran on both.
    assert set().union(*(s[head] for s in samples)), "no client actor on the head node"
    assert set().union(*(s[worker] for s in samples)), "no client actor on the worker node"
    _assert_stopped(ray_processes)


def test_clients_share_a_gpu_by_fractional_resources(tmp_path):
    # One (logical) GPU and 4 CPUs; each client asks for 1 CPU and half a GPU: the GPU, not the
    # CPUs, limits the pool to 2 concurrent clients. Without CUDA, device = "auto" trains on the CPU.
    with RayCluster(tmp_path / "ray", num_cpus=4, num_gpus=1) as cluster:
        head = cluster.nodes[0].pid
        _, samples = _run_watching_actors(cluster, tmp_path, num_cpus=1, num_gpus=0.5)
        ray_processes = descendants([head])
    assert len(_lasting(samples, head)) == 2
    _assert_stopped(ray_processes)


def _lasting(samples: list[dict[int, set[int]]], node: int) -> set[int]:
    """The client actors seen under ``node`` in at least a fifth of the samples that saw any: the
    pool's actors live through the run, while on a loaded machine a process can carry an actor's
    title for a moment (a fork before its exec, a worker Ray replaces)."""
    seen = [s[node] for s in samples if s[node]]
    counts = {pid: sum(pid in s for s in seen) for pid in set().union(*seen)}
    return {pid for pid, count in counts.items() if count >= len(seen) / 5}
