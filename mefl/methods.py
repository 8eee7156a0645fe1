"""The field's methods side by side under the study's premise: devices at different exit levels.

    mefl methods --task har --seeds 0 1 2 --run-config conf/methods/har.toml --out results/methods/har

For every seed: the reference ``all-deep`` (the study's method, every client at the deepest exit
level) and each method of ``--methods`` with a third of the clients at each exit level (partition
ids in thirds, ``exit-profile``), all on the same shards and initial model (``seed`` and
``partition-seed`` are the seed). Completed runs are skipped, stopped ones continued (campaigns.py);
``report.md`` and plots are rewritten from the results files.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flwr.common.config import parse_config_args

from mefl_app.server.run_folder import ACCURACY_KINDS
from mefl_app.settings import METHODS, SettingsError

from .campaigns import add_campaign_options, add_task_and_seeds, collect, run_name
from .exits import profile
from .plots import method_plots
from .report_text import KIND_TITLES, tuning_note
from .stats import LAST_ROUNDS, mean_accuracy, mean_std, rounds_mean

REFERENCE = "all-deep"
# Variants of a method that a published claim compares against: name -> (method, its overrides).
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "depthfl-no-kd": ("depthfl", {"distill-weight": 0.0}),  # DepthFL without self-distillation (its Table 3)
}


def configs_for(task: str, seeds: Sequence[int], methods: Sequence[str], clients: int, run_config: str) -> dict:
    """Every run of the campaign. A run-config file may hold a table per method (``[study]``,
    ``[depthfl]``, ...; ``[study]`` also reaches the reference) for settings tuned per method."""
    overrides = parse_config_args([run_config]) if run_config else {}
    common = {k: v for k, v in overrides.items() if "." not in k}
    own = {m: {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith(f"{m}.")} for m in METHODS}
    tables = {k.split(".", 1)[0] for k in overrides if "." in k}
    if tables - set(METHODS):
        raise SettingsError(
            f"run-config tables {sorted(tables - set(METHODS))} name no method; mefl has {', '.join(METHODS)}"
        )
    configs = {}
    for seed in seeds:
        base = {**common, "task": task, "seed": seed, "partition-seed": seed}
        configs[run_name(REFERENCE, seed)] = {**base, **own["study"], "method": "study", "exit-profile": ""}
        for name in methods:
            method, extra = ABLATIONS.get(name, (name, {}))
            configs[run_name(name, seed)] = {
                **base,
                **own[method],
                **extra,
                "method": method,
                "exit-profile": profile(clients, 3),
            }
    return configs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mefl methods``."""
    add_task_and_seeds(parser)
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=[*METHODS, *ABLATIONS],
        default=list(METHODS),
        help=f"presets, or the ablations {', '.join(ABLATIONS)} (default: every preset)",
    )
    add_campaign_options(parser)
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from existing results")


def runs_asked_for(out: Path) -> list[str]:
    """Every run that the campaign's recorded commands (``campaign.json``) ask for, in their order."""
    parser = argparse.ArgumentParser(prog="mefl methods")
    add_arguments(parser)
    path = out / "campaign.json"
    names: dict[str, None] = {}
    for invocation in json.loads(path.read_text()) if path.exists() else []:
        words = shlex.split(invocation["command"])  # "mefl methods ..."
        args = parser.parse_args(words[words.index("methods") + 1 :])
        for seed in args.seeds:
            for name in (REFERENCE, *args.methods):
                names[run_name(name, seed)] = None
    return list(names)


def progress_line(runs: dict[str, dict[int, dict]], asked: list[str]) -> list[str]:
    """Whether the campaign is complete, first thing in the report: partial tables look final."""
    if not asked:
        return []
    done = {run_name(name, seed) for name, seeds in runs.items() for seed in seeds}
    missing = [name for name in asked if name not in done]
    if not missing:
        return [f"**Complete**: all {len(asked)} runs that the campaign's commands (`campaign.json`) ask for.", ""]
    return [
        f"**In progress: {len(asked) - len(missing)} of {len(asked)} runs complete**; not yet: {', '.join(missing)}."
        " The tables below are not yet the campaign's result.",
        "",
    ]


def scores_central(results: dict[str, Any]) -> bool:
    """Whether a run scored the central test set (tuning runs score validation parts instead)."""
    return "central" in results["rounds"][-1]


def per_seed_section(runs: dict[str, dict[int, dict]], order: list[str], exits: list[str]) -> list[str]:
    """Central accuracy seed by seed: a seed gives every configuration the same shards and initial
    model, so a swing shared by all configurations shows here and not in a mean ± std."""
    seeds = sorted({seed for name in order for seed in runs[name]})

    def cell(name: str, seed: int) -> str:
        if seed not in runs[name]:
            return "—"
        if not scores_central(runs[name][seed]):
            return "n/a"
        return " / ".join(f"{100 * mean_accuracy(runs[name][seed], 'central', e, LAST_ROUNDS):.1f}" for e in exits)

    return [
        f"## {KIND_TITLES['central']}, seed by seed",
        "",
        f"Mean of the last {LAST_ROUNDS} rounds, {' / '.join(exits)} in %.",
        "",
        "| method | " + " | ".join(f"seed {seed}" for seed in seeds) + " |",
        "|---|" + "---|" * len(seeds),
        *(f"| {name} | " + " | ".join(cell(name, seed) for seed in seeds) + " |" for name in order),
        "",
    ]


def data_behind_exits(runs: dict[str, dict[int, dict]], exits: list[str]) -> list[str]:
    """Per seed, the share of the training examples held by the clients whose level reaches each
    exit, and the smallest such share of any one label: at most those clients train the exit's
    blocks, so a label the deeper clients barely hold is one the deeper exits barely learn."""
    mixed = {seed: run for name, seeds in runs.items() if name != REFERENCE for seed, run in seeds.items()}
    if not mixed:
        return []
    lines = [
        "## Training data behind each exit",
        "",
        "Share of the federation's training examples held by the clients whose exit level reaches the exit"
        " (every configuration of a seed has the same shards and levels; `all-deep`: 100 % everywhere), and in"
        " brackets the smallest share of any one label.",
        "",
        "| seed | " + " | ".join(exits) + " |",
        "|---|" + "---|" * len(exits),
    ]
    for seed, run in sorted(mixed.items()):
        level = {int(p): int(node["exit-level"]) for p, node in run["federation"].items()}
        counts = {int(p): part["label_counts_train"] for p, part in run["partitions"].items()}
        total = [sum(column) for column in zip(*counts.values())]
        cells = []
        for depth in range(1, len(exits) + 1):
            held = [sum(column) for column in zip(*(c for p, c in counts.items() if level[p] >= depth))]
            share = sum(held) / sum(total)
            smallest = min(h / t for h, t in zip(held, total) if t)
            cells.append(f"{100 * share:.0f} % ({100 * smallest:.0f} %)")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return lines + [""]


def ensemble(results: dict[str, Any], kind: str, last: int = 1) -> float | None:
    values = [r.get(f"{kind}_ensemble", {}).get("accuracy") for r in results["rounds"][-last:]]
    return None if not values or None in values else statistics.fmean(values)


def _gap(runs: dict, reference: dict, kind: str, exit_name: str) -> str:
    """Per seed the method minus the reference (mean of the last rounds), mean ± std, in points."""
    gaps = [
        mean_accuracy(runs[s], kind, exit_name, LAST_ROUNDS) - mean_accuracy(reference[s], kind, exit_name, LAST_ROUNDS)
        for s in sorted(runs.keys() & reference.keys())
        if mean_accuracy(runs[s], kind, exit_name, LAST_ROUNDS) is not None
        and mean_accuracy(reference[s], kind, exit_name, LAST_ROUNDS) is not None
    ]
    if not gaps:
        return "n/a"
    spread = f" ± {100 * statistics.stdev(gaps):.2f}" if len(gaps) > 1 else ""
    return f"{100 * statistics.fmean(gaps):+.2f}{spread} ({sum(g >= 0 for g in gaps)}/{len(gaps)} ≥ 0)"


def client_tflops(results: dict[str, Any]) -> float:
    """The clients' training TFLOPs over the whole run."""
    return sum(sum(entry.get("client_train_mflops", {}).values()) for entry in results["rounds"]) / 1e6


def _central(runs: dict[int, dict], exit_name: str) -> list[float]:
    """Per seed, central accuracy as the mean of the last rounds."""
    return [mean_accuracy(r, "central", exit_name, LAST_ROUNDS) for r in runs.values()]


def _paired(runs: dict[int, dict], other: dict[int, dict], exit_name: str) -> list[float]:
    """Per shared seed, the central last-rounds accuracy of ``runs`` minus that of ``other``."""
    return [
        mean_accuracy(runs[s], "central", exit_name, LAST_ROUNDS)
        - mean_accuracy(other[s], "central", exit_name, LAST_ROUNDS)
        for s in sorted(runs.keys() & other.keys())
    ]


def goals_section(runs: dict[str, dict[int, dict]], exits: list[str]) -> list[str]:
    """Whether the campaign meets the issue's goals, each said in numbers: central test set, mean
    of the last rounds, every comparison paired on the seeds both sides have."""
    lines = ["## Goals", ""]
    reference = runs.get(REFERENCE)
    candidates = {n: r for n, r in runs.items() if n not in (REFERENCE, "exclusive") and n not in ABLATIONS}
    if not reference or not candidates:
        return lines + ["Not yet measurable: the reference or the methods have no completed run.", ""]
    if not all(scores_central(r) for seeds in runs.values() for r in seeds.values()):
        return lines + ["Not measurable: these runs did not score the central test set (tuning runs).", ""]

    def gaps(a: str, b: str) -> tuple[list[float], list[int]]:
        """Per exit the mean paired gap a - b, and the shared seeds."""
        shared = sorted(runs[a].keys() & runs[b].keys())
        return [statistics.fmean(_paired(runs[a], runs[b], e)) if shared else math.nan for e in exits], shared

    def listed(values: list[float]) -> str:
        return ", ".join(f"{100 * v:+.2f} at {e}" for v, e in zip(values, exits))

    best = max(candidates, key=lambda n: statistics.fmean(statistics.fmean(_central(runs[n], e)) for e in exits))
    to_reference, shared = gaps(best, REFERENCE)
    share = statistics.fmean(client_tflops(runs[best][s]) for s in shared) / statistics.fmean(
        client_tflops(reference[s]) for s in shared
    )
    met = share <= 0.6 and all(g >= 0 for g in to_reference)
    lines += [
        f"The best method here is **{best}** (highest central accuracy averaged over the exits, seeds"
        f" {sorted(runs[best])}). Every gap below is the mean over the seeds both sides have of the per-seed gap.",
        "",
        f"1. *Heterogeneity for free* (at no more than 60 % of `{REFERENCE}`'s client compute, at or above it at"
        f" every exit): **{'met' if met else 'not met'}**. {best} uses {100 * share:.0f} % of the compute;"
        f" against `{REFERENCE}` (seeds {shared}): {listed(to_reference)}. This report covers one task; the goal"
        " asks for both.",
    ]
    if "exclusive" in runs:
        ahead, shared = gaps(best, "exclusive")
        verdict = "met" if all(a > 0 for a in ahead) else "not met"
        lines.append(f"2. *Ahead of `exclusive` at every exit*: **{verdict}** (seeds {shared}: {listed(ahead)}).")
    if best != "study" and "study" in runs:
        paired = [_paired(runs[best], runs["study"], e) for e in exits]
        beyond = [len(p) > 1 and statistics.fmean(p) > statistics.stdev(p) for p in paired]
        lines.append(
            f"   *Ahead of the study's method beyond the seed-to-seed spread* (the paired per-seed gap's mean above"
            f" its standard deviation, at every exit): **{'met' if all(beyond) else 'not met'}** ("
            + ", ".join(
                f"{100 * statistics.fmean(p):+.2f} ± {100 * statistics.stdev(p) if len(p) > 1 else 0:.2f} at {e}"
                for p, e in zip(paired, exits)
            )
            + ")."
        )
    elif best == "study":
        lines.append("   The study's own method is the best here, so no method is ahead of it.")
    rivals = [n for n in ("depthfl-no-kd", "inclusivefl") if n in runs]
    if not ("depthfl" in runs and rivals):
        lines.append(
            "3. *DepthFL's published ordering*: not checked here; it needs `depthfl` and at least one of"
            " `depthfl-no-kd`, `inclusivefl` in the campaign."
        )
    else:
        rows = []
        for rival in rivals:
            diff, shared = gaps("depthfl", rival)
            verdict = "ahead at every exit" if all(d > 0 for d in diff) else "not ahead at every exit"
            rows.append(f"{verdict} of `{rival}` (seeds {shared}: {listed(diff)})")
        same = all(r.startswith("ahead") for r in rows) and len(rivals) == 2
        missing = sorted({"depthfl-no-kd", "inclusivefl"} - set(rivals))
        lines.append(
            "3. *DepthFL's published ordering* (mutual KD ahead of its no-KD variant and of InclusiveFL at every exit,"
            f" its Tables 3-4 on CIFAR-100): **{'the same here' if same else 'not the same here'}**: `depthfl` is "
            + "; ".join(rows)
            + (f"; {', '.join(missing)} not yet run" if missing else "")
            + "."
        )
    return lines + [""]


def write_report(out: Path) -> Path:
    """report.md and plots from the completed runs under ``out/runs``."""
    runs = collect(out)
    if not runs:
        raise SystemExit(f"no completed results under {out / 'runs'}")
    first = next(iter(next(iter(runs.values())).values()))
    exits, task = first["exit_names"], first["run_config"]["task"]
    order = [REFERENCE] + sorted(name for name in runs if name != REFERENCE)
    order = [name for name in order if name in runs]
    lines = [f"# Multi-exit FL methods with clients at different exit levels: {task}", ""]
    lines += progress_line(runs, runs_asked_for(out))
    lines += tuning_note(first["run_config"])
    seeds = ", ".join(f"{n} {sorted(runs[n])}" for n in order)
    mixed = profile(len(first["partitions"]), 3)
    lines += [
        f"Seeds: {seeds}. `{REFERENCE}`: the study's method with every client at the deepest exit level;"
        f" every other row: a third of the clients at each exit level (`exit-profile` {mixed!r})."
        f" Accuracy in %, mean ± std over seeds, of the last round and of the mean of the last {LAST_ROUNDS}"
        " rounds; gap: per seed the method minus the reference (mean of the last rounds), in points.",
        "",
    ]
    for kind in ACCURACY_KINDS:
        lines += [
            f"## {KIND_TITLES[kind]}",
            "",
            "| method | "
            + " | ".join(f"{e} last | {e} last {LAST_ROUNDS} | {e} gap" for e in exits)
            + " | ensemble last | ensemble last 5 |",
            "|---|" + "---|" * (3 * len(exits) + 2),
        ]
        for name in order:
            cells = []
            for e in exits:
                cells += [
                    mean_std([mean_accuracy(r, kind, e) for r in runs[name].values()]),
                    mean_std([mean_accuracy(r, kind, e, LAST_ROUNDS) for r in runs[name].values()]),
                    "—" if name == REFERENCE else _gap(runs[name], runs.get(REFERENCE, {}), kind, e),
                ]
            cells += [
                mean_std([ensemble(r, kind) for r in runs[name].values()]),
                mean_std([ensemble(r, kind, LAST_ROUNDS) for r in runs[name].values()]),
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += per_seed_section(runs, order, exits)
    lines += data_behind_exits(runs, exits)
    lines += [
        "## Cost",
        "",
        f"| method | rounds to {100 * first['target_accuracy']:.0f} % (central, deepest exit) | MB sent |"
        " client training TFLOPs | client training s | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for name in order:
        results = list(runs[name].values())
        rounds = [r["rounds_to_target"].get("central", {}).get(exits[-1]) for r in results if scores_central(r)]
        mb = [r["rounds"][-1]["bytes_cumulative"] / 1e6 for r in results]
        tflops = [client_tflops(r) for r in results]
        seconds = [sum(sum(x.get("client_train_seconds", {}).values()) for x in r["rounds"]) for r in results]
        walls = [r["wall_seconds"] for r in results]
        lines.append(
            f"| {name} | {rounds_mean(rounds)} | {statistics.fmean(mb):.0f} | {statistics.fmean(tflops):.2f} |"
            f" {statistics.fmean(seconds):.0f} | {statistics.fmean(walls):.0f} |"
        )
    lines += [
        "",
        "Client training seconds and wall seconds are measured on a shared 2-core machine: compare them"
        " within one campaign only.",
        "",
    ]
    lines += goals_section(runs, exits)
    notes = out / "notes.md"
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    lines += ["## Plots", ""] + [f"![{name}]({name})" for name in method_plots(out, runs, order, exits)] + [""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
