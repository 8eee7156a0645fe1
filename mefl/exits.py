"""Resource-aware exits compared: everyone at the deepest exit, a 1/3-1/3-1/3 mix of exit levels
with partial training and upload, and "exclusive" training where the weak clients are left out.

    mefl exits --task fmnist --rounds 10 --out results/ablations/exit-levels-fmnist
    mefl exits --report-only --out results/ablations/exit-levels-fmnist

The runs use the same machinery as the study campaign (one Ray cluster, resumable); the report
only reads the results files and writes ``report.md`` plus the early-exit plot.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from flwr.common.config import parse_config_args

from .campaigns import completed_results
from .plots import early_exit_plot

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
    lines = [
        f"# Resource-aware exits: {first['run_config']['task']}, {len(first['rounds'])} rounds, "
        f"{len(first['partitions'])} clients",
        "",
    ]
    lines += [
        "Forward cost per sample to each exit (FlopCounterMode on the real model): "
        + ", ".join(f"{e} {m:.2f} MFLOPs" for e, m in zip(exits, mflops))
        + ".",
        "",
    ]
    lines += [
        "| configuration | exit profile | "
        + " | ".join(f"central {e}" for e in exits)
        + " | personalized (mean over clients, each at its deepest exit) | total MB sent | client training "
        "TFLOPs | client training s | wall s |",
        "|---|---|" + "---|" * len(exits) + "---|---|---|---|---|",
    ]
    for name, results in runs.items():
        last = results["rounds"][-1]
        central = [last["central"].get(e, {}).get("accuracy") for e in exits]
        tflops = sum(sum(r.get("client_train_mflops", {}).values()) for r in results["rounds"]) / 1e6
        seconds = sum(sum(r.get("client_train_seconds", {}).values()) for r in results["rounds"])
        lines.append(
            f"| {name}: {CONFIGS[name][0]} | `{results['run_config']['exit-profile'] or 'all deepest'}` "
            f"({results['run_config']['exit-training']}) | "
            + " | ".join(f"{100 * a:.2f}" if a is not None else "n/a" for a in central)
            + f" | {100 * _deepest_personalized(last, exits):.2f} | {last['bytes_cumulative'] / 1e6:.1f} | "
            f"{tflops:.2f} | {seconds:.0f} | {results['wall_seconds']:.0f} |"
        )
    lines += [
        "",
        "Central accuracy uses the full global model on the server's central test set, so it compares the"
        " configurations on equal terms. Personalized accuracy: each client's locally trained model at the"
        " client's own deepest exit (a level-1 client is scored at exit 1), averaged over clients.",
        "",
    ]
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
    lines = [
        "## Early-exit inference (global model of the last round, clients' local test parts)",
        "",
        "Stop at the first exit whose top softmax probability reaches tau; clients use the exits their level"
        " allows. Accuracy / average MFLOPs per sample, pooled over clients:",
        "",
    ]
    for name, results in runs.items():
        curve = results["rounds"][-1].get("global_local_early_exit")
        if curve:
            lines.append(
                f"- **{name}**: "
                + "; ".join(
                    f"tau {t:g}: {100 * a:.2f} % at {m:.2f} MFLOPs"
                    for t, a, m in zip(results["early_exit_thresholds"], curve["accuracy"], curve["mflops_per_sample"])
                )
            )
    name = early_exit_plot(out, runs, exits, mflops)
    return lines + ["", f"![early exit]({name})", ""]
