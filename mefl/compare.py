"""Several campaign folders side by side: one Markdown table of their final accuracies."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mefl_app.server.run_folder import ACCURACY_KINDS, utc_now

from .campaigns import collect
from .report_text import tuning_note


def write_comparison(folders: Sequence[Path], out_file: Path) -> Path:
    """One row per completed run under ``folders``: strategy, last-round accuracy per exit (all
    three kinds), rounds to target (personalized and central, deepest exit), bytes and wall time."""
    rows, tuning = [], []
    for folder in folders:
        for variant, by_seed in sorted(collect(folder).items()):
            for seed, results in sorted(by_seed.items()):
                exits, last = results["exit_names"], results["rounds"][-1]
                tuning = tuning or tuning_note(results["run_config"])
                # A kind a run did not score (tuning runs skip the central test set): n/a.
                per_exit = [
                    " / ".join(f"{100 * last[kind][e]['accuracy']:.1f}" for e in exits) if kind in last else "n/a"
                    for kind in ACCURACY_KINDS
                ]
                reached = " / ".join(
                    str(results["rounds_to_target"].get(kind, {}).get(exits[-1]) or "not reached")
                    for kind in ("personalized", "central")
                )
                megabytes = sum(r["bytes_down"] + r["bytes_up"] for r in results["rounds"]) / 1e6
                minutes = sum(r["seconds"] for r in results["rounds"]) / 60
                rows.append(
                    f"| {folder.name} | {results['strategy']} | {variant}, {seed} | {len(results['rounds'])} | "
                    + " | ".join(per_exit)
                    + f" | {reached} | {megabytes:.0f} | {minutes:.1f} |"
                )
    if not rows:
        raise SystemExit(f"no completed results under {', '.join(str(f / 'runs') for f in folders)}")
    lines = [
        f"# Comparison of {len(folders)} run folders",
        "",
        f"Written by `mefl compare {' '.join(str(f) for f in folders)} --out {out_file}`"
        f" on {utc_now()} from these results files; accuracies"
        " in % after the last round, per exit (shallowest first).",
        "",
        *tuning,
        "| folder | strategy | variant, seed | rounds | personalized | global model, local test parts | "
        "central test set | rounds to target, deepest exit (personalized / central) | MB sent | wall minutes |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    out_file.write_text("\n".join(lines) + "\n")
    return out_file
