"""The Flower app's per-round cost against a plain-PyTorch loop doing the
same work, in ONE run on the same machine.

(a) the app through ``flwr run`` and the simulation engine (private SuperLink, Ray), for two
    client-resource layouts: N concurrent 1-thread clients (``client-resources-num-cpus=1``,
    ``torch-threads=1``) and one N-thread client at a time;
(b) ``benchmarks/plain_fedavg.py``'s loop in this process: the same shards, model, batches,
    optimizer steps and evaluations, sequential, FedAvg by hand, no Flower, no Ray -- with 1 and
    with N torch threads.

Reports per-round seconds (start-up separately), the ratio (a)/(b), training samples/s,
achieved training GFLOP/s against this machine's measured matmul peak, and the peak memory of
the simulation (sum of the proportional set size of the SuperLink's process tree).

``--engine deployment`` replaces (a) by a real local deployment (``mefl_app.deploy``: one
SuperLink, one SuperNode per client, all concurrent, no Ray) -- for a machine without Ray, such
as the GPU machine of benchmarks/gpu_run.sh. With ``--run-config "device='cuda'"`` both arms
train on the GPU and the peak is the GPU's float32 matmul rate.

    python benchmarks/app_vs_plain.py --task fmnist --clients 24 --rounds 2 --json out.json
    python benchmarks/app_vs_plain.py --render out.json      # Markdown table, no measuring
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from flwr.common.config import parse_config_args

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_fedavg import run as run_plain  # noqa: E402
from provenance import cited, provenance, write_json  # noqa: E402

from mefl.runtime.deployment import LocalDeployment  # noqa: E402
from mefl.runtime.simulation import SimulationSuperLink  # noqa: E402
from mefl_app.data.shards import make_client_shard  # noqa: E402
from mefl_app.device import select_device  # noqa: E402
from mefl_app.settings import RunSettings  # noqa: E402
from mefl_app.task import load_task_data, model_costs  # noqa: E402

APP_DIR = Path(__file__).resolve().parents[1]


def matmul_peak_gflops(threads: int, size: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Best of ``repeats`` float32 matrix multiplications: the machine's (or GPU's) practical peak."""
    torch.set_num_threads(threads)
    if device != "cpu":
        size *= 4  # a GPU needs a bigger product to reach its rate
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    best = min(_timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn, device: str = "cpu") -> float:
    started = time.perf_counter()
    fn()
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - started


class TreeMemory:
    """Samples the summed PSS of a process and all its descendants (``without_root``: the
    descendants only), keeps the peak."""

    def __init__(self, root_pid: int, interval: float = 0.5, without_root: bool = False) -> None:
        self.root_pid, self.interval, self.peak_mb = root_pid, interval, 0.0
        self.without_root = without_root
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            pids = _tree(self.root_pid)[1 if self.without_root else 0 :]
            self.peak_mb = max(self.peak_mb, sum(_pss_kb(p) for p in pids) / 1024)
            self._stop.wait(self.interval)


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rfind(")") + 2 :].split()[1]), []).append(int(entry))
    found, stack = [root], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_app(
    task_config: dict, clients: int, rounds: int, cpus_per_client: int, threads: int, work: Path, **extra
) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"app-cpus{cpus_per_client}-", dir=work))  # one per arm
    out = run_dir / "out"
    config = {**task_config, "output-dir": out, "num-server-rounds": rounds, "torch-threads": threads, **extra}
    with SimulationSuperLink(run_dir / "home") as link:
        with TreeMemory(link.process.pid) as memory:
            started = time.perf_counter()
            proc = link.run(APP_DIR, config, clients, timeout=3600, num_cpus=cpus_per_client)
            wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return _app_numbers(out, wall, memory.peak_mb)


def run_app_deployment(task_config: dict, clients: int, rounds: int, threads: int, work: Path) -> dict:
    """The app on a real local deployment: a SuperLink and one SuperNode per client (insecure:
    loopback only), every client concurrent; start-up includes bringing the SuperNodes online."""
    run_dir = Path(tempfile.mkdtemp(prefix="app-deployment-", dir=work))
    out = run_dir / "out"
    config = {**task_config, "output-dir": out, "num-server-rounds": rounds, "torch-threads": threads}
    started = time.perf_counter()
    with TreeMemory(os.getpid(), without_root=True) as memory:  # SuperLink, SuperNodes, ClientApps
        with LocalDeployment(run_dir / "deployment", APP_DIR, secure=False) as deployment:
            deployment.add_nodes([f"partition-id={i} num-partitions={clients}" for i in range(clients)])
            deployment.wait_for_nodes(clients, timeout=300)
            outcome = deployment.run(config, timeout=3600)
    wall = time.perf_counter() - started
    if outcome.returncode != 0:
        raise RuntimeError(outcome.output[-3000:])
    return _app_numbers(out, wall, memory.peak_mb)


def _app_numbers(out: Path, wall: float, peak_pss_mb: float) -> dict:
    results = json.loads(next(out.glob("*/results.json")).read_text())
    if results["status"] != "completed":
        raise RuntimeError(results.get("error"))
    per_round = [r["seconds"] for r in results["rounds"]]
    return {
        "wall_seconds": wall,
        "round_seconds": per_round,
        "startup_seconds": wall - sum(per_round),
        "peak_pss_mb": peak_pss_mb,
        "final_central": results["rounds"][-1]["central"][results["exit_names"][-1]]["accuracy"],
    }


def run_reference(settings: RunSettings, clients: int, rounds: int, threads: int) -> dict:
    settings = RunSettings(**{**settings.__dict__, "torch_threads": threads})
    torch.set_num_threads(threads)
    started = time.perf_counter()
    history = run_plain(settings, clients, rounds, log=lambda line: print(f"  plain, round: {line}", flush=True))
    wall = time.perf_counter() - started
    per_round = [h["round_seconds"] for h in history]
    return {
        "wall_seconds": wall,
        "round_seconds": per_round,
        "startup_seconds": wall - sum(per_round),
        "final_central": history[-1]["central"][-1],
    }


def render_markdown(report: dict) -> str:
    """One Markdown table of a report written by ``--json`` (what benchmarks/RESULTS.md shows)."""
    w = report["workload"]
    lines = [
        cited(report),
        "",
        f"Workload: {w['task']}, {w['clients']} clients, {w['rounds']} rounds, {w['local_epochs']} local epochs, "
        f"{w['samples_per_round']} training samples per round, "
        f"{w['training_flops_per_sample'] / 1e6:.1f} MFLOP per training sample (forward + backward). "
        "Matmul peak: "
        + ", ".join(f"{v:.1f} GFLOP/s at {k} thread(s)" for k, v in report["matmul_peak_gflops"].items())
        + ".",
        "",
        "| run | start-up s | s per round (each) | ratio to best plain | train samples/s | GFLOP/s | share of "
        "matmul peak | peak PSS MB | final central acc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["runs"].items():
        rounds = ", ".join(f"{x:.1f}" for x in r["round_seconds"])
        memory = f"{r['peak_pss_mb']:.0f}" if "peak_pss_mb" in r else "-"
        lines.append(
            f"| {name} | {r['startup_seconds']:.1f} | {r['mean_round_seconds']:.1f} ({rounds}) | "
            f"{r['ratio_to_best_plain']:.3f} | {r['train_samples_per_second']:.0f} | {r['achieved_gflops']:.1f} | "
            f"{r['share_of_matmul_peak']:.0%} | {memory} | {r['final_central']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--render", type=Path, nargs="+", help="print the Markdown table of these --json files and stop"
    )
    parser.add_argument("--task", default="fmnist", choices=["fmnist", "har"])
    parser.add_argument("--data-dir", default=None, help="data-dir run-config value (default: pyproject's)")
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--run-config", default="", help="further overrides, flwr run syntax")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument(
        "--cohort-sizes", type=int, nargs="*", default=[], help="also the app with cohort-size K, one arm per K"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=[],
        help="run only the arms whose name contains one of these (e.g. 'plain, 1 thread' 'x 1 thread')",
    )
    parser.add_argument(
        "--compare-polling",
        action="store_true",
        help="also run the app with Flower's own 3 s reply polling (reply-poll-seconds=3)",
    )
    parser.add_argument(
        "--engine",
        default="simulation",
        choices=["simulation", "deployment"],
        help="how the app runs: Flower's simulation engine (Ray; two client layouts) or a "
        "local deployment with one SuperNode per client (no Ray)",
    )
    args = parser.parse_args()
    if args.compare_polling and args.engine != "simulation":
        parser.error(
            "--compare-polling measures the simulation engine's reply polling; drop it with --engine deployment"
        )
    if args.render:
        print("\n\n".join(render_markdown(json.loads(path.read_text())) for path in args.render))
        return

    overrides = (
        f"task='{args.task}'" + (f" data-dir='{args.data_dir}'" if args.data_dir else "") + " " + args.run_config
    )
    settings = RunSettings.from_app_dir(APP_DIR, overrides)
    task_config = parse_config_args([overrides])  # the same overrides reach the app
    device = select_device(settings).type
    data = load_task_data(settings)
    shards = [make_client_shard(data, settings, p, args.clients) for p in range(args.clients)]
    samples_per_round = settings.local_epochs * sum(len(s.train) for s in shards)
    # FLOPs of one sample's forward + backward pass (FlopCounterMode plus mefl's LSTM formulas).
    flops_per_sample = model_costs(settings, data.num_classes, data.input_shape)[1] * 1e6
    gpu = f", GPU {torch.cuda.get_device_name()}" if device == "cuda" else ""
    report: dict = {
        **provenance(gpu),
        "workload": {
            "task": args.task,
            "clients": args.clients,
            "rounds": args.rounds,
            "local_epochs": settings.local_epochs,
            "samples_per_round": samples_per_round,
            "training_flops_per_sample": flops_per_sample,
        },
        "matmul_peak_gflops": {str(t): matmul_peak_gflops(t, device=device) for t in {1, args.cores}},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs = {"plain, 1 thread": lambda: run_reference(settings, args.clients, args.rounds, 1)}
        if device == "cpu" and args.cores > 1:  # on a GPU the host threads barely matter
            runs[f"plain, {args.cores} threads"] = lambda: run_reference(
                settings, args.clients, args.rounds, args.cores
            )
        if args.engine == "deployment":
            runs[f"app, deployment, {args.clients} SuperNodes x 1 thread"] = lambda: run_app_deployment(
                task_config, args.clients, args.rounds, 1, work
            )
        else:
            runs[f"app, {args.cores} clients x 1 thread"] = lambda: run_app(
                task_config, args.clients, args.rounds, 1, 1, work
            )
            runs[f"app, 1 client x {args.cores} threads"] = lambda: run_app(
                task_config, args.clients, args.rounds, args.cores, args.cores, work
            )
        for k in args.cohort_sizes:  # clients trained in cohorts of k (mefl_app/cohort.py)
            runs[f"app, {args.cores} clients x 1 thread, cohorts of {k}"] = lambda k=k: run_app(
                task_config, args.clients, args.rounds, 1, 1, work, **{"cohort-size": k}
            )
        if args.compare_polling:
            runs[f"app, {args.cores} clients x 1 thread, Flower's 3 s reply polling"] = lambda: run_app(
                task_config, args.clients, args.rounds, 1, 1, work, **{"reply-poll-seconds": 3.0}
            )
        if args.only:
            runs = {name: fn for name, fn in runs.items() if any(part in name for part in args.only)}
            if not any(name.startswith("plain") for name in runs):
                parser.error("--only must keep a plain arm: every ratio is to the best plain loop")
        report["runs"], report["finished"] = {}, False
        for name, fn in runs.items():
            print(f"running: {name}", flush=True)
            report["runs"][name] = fn()
            # Each arm's raw numbers as soon as it ends: a run cut short (a time limit) keeps them.
            print(f"done: {name}: " + json.dumps(report["runs"][name]), flush=True)
            if args.json:
                write_json(args.json, {**report, **provenance(gpu)})
    report["finished"] = True
    baseline = min(statistics.fmean(r["round_seconds"]) for n, r in report["runs"].items() if n.startswith("plain"))
    peak = report["matmul_peak_gflops"][str(args.cores)]
    for r in report["runs"].values():
        per_round = statistics.fmean(r["round_seconds"])
        r["mean_round_seconds"] = per_round
        r["ratio_to_best_plain"] = per_round / baseline
        r["train_samples_per_second"] = samples_per_round / per_round
        r["achieved_gflops"] = samples_per_round * flops_per_sample / per_round / 1e9
        r["share_of_matmul_peak"] = r["achieved_gflops"] / peak
    report.update(provenance(gpu))
    print(render_markdown(report))
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
