"""Resource-aware exits compared: everyone at the deepest exit, a 1/3-1/3-1/3 mix of exit levels
with partial training and upload, and "exclusive" training where the weak clients are left out.

    python -m mefl_app.exit_experiments run --task fmnist --rounds 10 --out results/exits
    python -m mefl_app.exit_experiments report --out results/exits

``run`` uses the same machinery as the study campaign (one Ray cluster, resumable); ``report``
only reads the results files and writes ``report.md`` plus the early-exit plot.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from flwr.common.config import parse_config_args

from .experiments import add_client_resources, completed_results, run_configs
from .processes import interrupt_on_termination

CONFIGS = {
    "all-deep": ("all clients at the deepest exit", {"exit-profile": ""}),
    "mixed-partial": ("1/3 at each exit level; each trains and uploads exits 1..k", {"exit-training": "partial"}),
    "exclusive": ("1/3 at each exit level; only the deepest-level third trains", {"exit-training": "exclusive"}),
}


def profile(clients: int, levels: int) -> str:
    """Equal thirds (for 3 levels) by partition id: "1:8,2:8,3:8" for 24 clients."""
    counts = [clients // levels + (1 if i < clients % levels else 0) for i in range(levels)]
    return ",".join(f"{level + 1}:{count}" for level, count in enumerate(counts))


def configs_for(task: str, rounds: int, clients: int, run_config: str, levels: int = 3) -> dict[str, dict[str, Any]]:
    overrides = parse_config_args([run_config]) if run_config else {}
    base = {**overrides, "task": task, "num-server-rounds": rounds}
    return {name: {**base, "exit-profile": profile(clients, levels), **extra} for name, (_, extra) in CONFIGS.items()}


def write_report(out: Path) -> Path:
    runs = {name: completed_results(out / "runs" / name) for name in CONFIGS}
    runs = {name: r for name, r in runs.items() if r is not None}
    if not runs:
        raise SystemExit(f"no completed results under {out / 'runs'}")
    first = next(iter(runs.values()))
    exits = first["exit_names"]
    mflops = first["model"]["forward_mflops_per_exit"]
    lines = [f"# Resource-aware exits: {first['run_config']['task']}, {len(first['rounds'])} rounds, "
             f"{len(first['partitions'])} clients", ""]
    lines += ["Forward cost per sample to each exit (FlopCounterMode on the real model): "
              + ", ".join(f"{e} {m:.2f} MFLOPs" for e, m in zip(exits, mflops)) + ".", ""]
    lines += ["| configuration | exit profile | " + " | ".join(f"central {e}" for e in exits)
              + " | personalized (mean over clients, each at its deepest exit) | total MB sent | client training TFLOPs | client training s | wall s |",
              "|---|---|" + "---|" * len(exits) + "---|---|---|---|---|"]
    for name, results in runs.items():
        last = results["rounds"][-1]
        central = [last["central"].get(e, {}).get("accuracy") for e in exits]
        tflops = sum(sum(r.get("client_train_mflops", {}).values()) for r in results["rounds"]) / 1e6
        seconds = sum(sum(r.get("client_train_seconds", {}).values()) for r in results["rounds"])
        lines.append(f"| {name}: {CONFIGS[name][0]} | `{results['run_config']['exit-profile'] or 'all deepest'}` "
                     f"({results['run_config']['exit-training']}) | "
                     + " | ".join(f"{100 * a:.2f}" if a is not None else "n/a" for a in central)
                     + f" | {100 * _deepest_personalized(last, exits):.2f} | {last['bytes_cumulative'] / 1e6:.1f} | "
                     f"{tflops:.2f} | {seconds:.0f} | {results['wall_seconds']:.0f} |")
    lines += ["", "Central accuracy uses the full global model on the server's central test set, so it compares the"
              " configurations on equal terms. Personalized accuracy: each client's locally trained model at the"
              " client's own deepest exit (a level-1 client is scored at exit 1), averaged over clients.", ""]
    lines += _early_exit_section(out, runs, exits, mflops)
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def _deepest_personalized(entry: dict[str, Any], exits: list[str]) -> float:
    """Mean over clients of each client's personalized accuracy at its own deepest exit."""
    deepest: dict[str, float] = {}
    for name in exits:  # shallow to deep: a deeper exit overwrites
        deepest.update(entry["personalized"].get(name, {}).get("per_client", {}))
    return statistics.fmean(deepest.values())


def _early_exit_section(out: Path, runs: dict[str, dict[str, Any]], exits: list[str], mflops: list[float]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["## Early-exit inference (global model of the last round, clients' local test parts)", "",
             "Stop at the first exit whose top softmax probability reaches tau; clients use the exits their level"
             " allows. Accuracy / average MFLOPs per sample, pooled over clients:", ""]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, results) in enumerate(runs.items()):
        last = results["rounds"][-1]
        curve = last.get("global_local_early_exit")
        if not curve:
            continue
        thresholds = results["early_exit_thresholds"]
        ax.plot(curve["mflops_per_sample"], curve["accuracy"], "o-", color=f"C{i}", label=f"{name}: threshold sweep")
        fixed = [(mflops[e], last["global_local"][n]["accuracy"]) for e, n in enumerate(exits) if n in last["global_local"]]
        ax.plot(*zip(*fixed), "s", color=f"C{i}", markerfacecolor="none", label=f"{name}: fixed exits")
        lines.append(f"- **{name}**: " + "; ".join(
            f"tau {t:g}: {100 * a:.2f} % at {m:.2f} MFLOPs" for t, a, m in zip(thresholds, curve["accuracy"], curve["mflops_per_sample"])))
    ax.set(xlabel="average forward MFLOPs per sample", ylabel="accuracy", title="early-exit inference: accuracy vs compute")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "early_exit.png", dpi=120)
    plt.close(fig)
    return lines + ["", "![early exit](early_exit.png)", ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mefl_app.exit_experiments", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the three configurations (skips completed ones), then report")
    run.add_argument("--task", choices=["fmnist", "har"], default="fmnist")
    run.add_argument("--rounds", type=int, default=10)
    run.add_argument("--clients", type=int, default=24)
    add_client_resources(run)
    run.add_argument("--run-config", default="", help="overrides for every run, flwr run syntax")
    run.add_argument("--out", type=Path, required=True)
    report = commands.add_parser("report", help="write report.md and the plot from existing results")
    report.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "run":
        interrupt_on_termination()  # `kill` stops the Ray cluster and SuperLink too
        run_configs(configs_for(args.task, args.rounds, args.clients, args.run_config), args.out, args.clients, args.cpus_per_client,
                    gpus_per_client=args.gpus_per_client)
    print(f"report: {write_report(args.out)}")


if __name__ == "__main__":
    main()
