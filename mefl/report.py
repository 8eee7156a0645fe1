"""The study's report: multi-exit vs single-exit, Tables 1-3 of the study, targets, plots.

``mefl report`` only reads results files -- it never trains -- and writes ``report.md`` and PNG
plots next to them. ``--se-from`` takes the single-exit runs of the same seeds from another
campaign folder, for a campaign that varies only the multi-exit loss settings (the single-exit
model has no distillation term, so rerunning it would repeat the same computation).
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from mefl_app.server.run_folder import ACCURACY_KINDS

from .campaigns import LOSS_KEYS, PER_RUN_KEYS, collect
from .plots import accuracy_plots
from .report_text import KIND_TITLES, tuning_note
from .stats import LAST_ROUNDS, final_accuracy, mean_accuracy, mean_std, megabytes, paired_summary, rounds_mean, saving

# What the study (Shin & Ko) published and we were given; None where we have no number.
STUDY = {
    "fmnist": {"personalized_me": 0.8138, "rounds_to_target_me": 8, "target": 0.75},
    "har": {"personalized_me": None, "rounds_to_target_me": None, "target": 0.5},
}


SE_SOURCE = "se-from.txt"  # in a campaign folder: where its single-exit runs come from (``--se-from``)


def single_exit_runs_from(folder: Path, me: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The completed single-exit runs of another campaign folder for the seeds of the multi-exit
    runs ``me`` (a paired comparison: the other folder may hold more seeds), checked to share
    every setting of ``me`` except the per-run and multi-exit loss ones."""
    se = collect(folder).get("se", {})
    if me:
        se = {seed: results for seed, results in se.items() if seed in me}
    if not se:
        raise SystemExit(
            f"--se-from {folder}: no completed single-exit results under {folder / 'runs'}"
            + (f" for seed(s) {', '.join(map(str, sorted(me)))}" if me else "")
        )

    def shared(results: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in results["run_config"].items() if k not in PER_RUN_KEYS + LOSS_KEYS}

    se_shared = {seed: shared(results) for seed, results in se.items()}
    for me_seed, me_results in me.items():
        mine = shared(me_results)
        for se_seed, theirs in se_shared.items():
            differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            if differ:
                raise SystemExit(
                    f"--se-from {folder}: single-exit seed {se_seed} differs from multi-exit seed {me_seed}"
                    f" in {', '.join(differ)}; only the multi-exit loss settings may differ"
                )
    return se


def write_report(out: Path, se_from: Path | None = None) -> Path:
    """``report.md`` and the plots of the runs under ``out`` (single-exit runs from ``se_from``
    instead, where given). The folder remembers ``se_from`` (``se-from.txt``), so a later ``run``
    or ``report`` without it does not rewrite the report without its single-exit runs."""
    runs = collect(out)
    source = out / SE_SOURCE
    if se_from is None and "se" not in runs and source.exists():
        se_from = out / source.read_text().strip()
    if se_from is not None:
        if "se" in runs:
            raise SystemExit(
                f"--se-from {se_from}: {out / 'runs'} holds single-exit runs of its own; use one or the other"
            )
        runs["se"] = single_exit_runs_from(se_from, runs.get("me", {}))
        source.write_text(os.path.relpath(se_from, out) + "\n")
    if not runs:
        raise SystemExit(f"no completed results under {out / 'runs'}")
    any_results = next(iter(next(iter(runs.values())).values()))
    task = any_results["run_config"]["task"]
    target = any_results["target_accuracy"]
    deepest = {v: next(iter(r.values()))["exit_names"][-1] for v, r in runs.items()}
    me, se = runs.get("me", {}), runs.get("se", {})
    study = STUDY.get(task, {})
    lines = [f"# Multi-exit vs single-exit federated learning: {task}", ""]
    lines += _provenance(out, runs, se_from)
    lines += tuning_note(any_results["run_config"])

    # Table 1
    lines += [
        "## Table 1: accuracy after the last round (%, mean ± std over seeds)",
        "",
        "Deepest exit of each model (the only exit of the single-exit model). **Personalized** is"
        " the study's personalized accuracy as we read it: every client's model after its local"
        " training, scored on that client's own local test part, pooled over clients.",
        "",
        f"| accuracy | multi-exit | single-exit | study (multi-exit) | multi-exit, last {LAST_ROUNDS} rounds |"
        f" single-exit, last {LAST_ROUNDS} rounds |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ACCURACY_KINDS:
        study_value = study.get("personalized_me") if kind == "personalized" else None

        def over_seeds(runs: dict, variant: str, last: int = 1, kind: str = kind) -> str:
            return mean_std([mean_accuracy(r, kind, deepest[variant], last) for r in runs.values()]) if runs else "n/a"

        lines.append(
            f"| {KIND_TITLES[kind]} | {over_seeds(me, 'me')} | {over_seeds(se, 'se')} | "
            f"{f'{100 * study_value:.2f}' if study_value else 'n/a'} | "
            f"{over_seeds(me, 'me', LAST_ROUNDS)} | {over_seeds(se, 'se', LAST_ROUNDS)} |"
        )
    lines.append("")
    lines += _per_seed(me, se, deepest)

    # Table 2
    lines += [
        f"## Table 2: rounds to {100 * target:.0f} % accuracy and communication",
        "",
        "Rounds: mean over the seeds that reached the target. Bytes: arrays actually sent down to"
        " and up from clients until that round (the multi-exit model also ships its exit heads)."
        " Saving = 1 - multi-exit / single-exit, from rounds (as the study computes it) and from bytes.",
        "",
        "| accuracy (deepest exit) | rounds ME | rounds SE | saving (rounds) | MB ME | MB SE | saving (bytes) "
        "| study rounds ME |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in ACCURACY_KINDS:
        r_me = [r["rounds_to_target"].get(kind, {}).get(deepest["me"]) for r in me.values()]
        r_se = [r["rounds_to_target"].get(kind, {}).get(deepest["se"]) for r in se.values()]
        b_me = [r["bytes_to_target"].get(kind, {}).get(deepest["me"]) for r in me.values()]
        b_se = [r["bytes_to_target"].get(kind, {}).get(deepest["se"]) for r in se.values()]
        study_rounds = study.get("rounds_to_target_me") if kind == "personalized" else None
        lines.append(
            f"| {kind} | {rounds_mean(r_me)} | {rounds_mean(r_se)} | {saving(r_me, r_se)} | "
            f"{megabytes(b_me)} | {megabytes(b_se)} | {saving(b_me, b_se)} | {study_rounds or 'n/a'} |"
        )
    lines.append("")

    # Table 3
    if me:
        exits = next(iter(me.values()))["exit_names"]
        lines += ["## Table 3: multi-exit model, accuracy per exit after the last round (%, mean ± std)"]
        for last, title in ((1, ""), (LAST_ROUNDS, f"The same, mean of the last {LAST_ROUNDS} rounds:")):
            lines += ["", *([title, ""] if title else []), "| accuracy | " + " | ".join(exits) + " |"]
            lines.append("|---|" + "---|" * len(exits))
            for kind in ACCURACY_KINDS:
                cells = [mean_std([mean_accuracy(r, kind, e, last) for r in me.values()]) for e in exits]
                lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        lines.append("")

    lines += _targets(task, me, se, deepest)
    lines += _setup(task)
    notes = out / "notes.md"
    if notes.exists():  # the analysis a person wrote for this campaign
        lines += [notes.read_text().strip(), ""]

    plots = accuracy_plots(out, runs, target)
    lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def _per_seed(me: dict, se: dict, deepest: dict) -> list[str]:
    """Table 1 seed by seed: a seed gives both variants the same shards and initial backbone, so
    the gap within a seed is a paired comparison that the mean ± std of Table 1 hides."""
    if not me or not se:
        return []

    def cell(runs: dict, variant: str, seed: int, kind: str) -> float | None:
        return final_accuracy(runs[seed], kind, deepest[variant]) if seed in runs else None

    def pct(value: float | None, sign: str = "") -> str:
        return "n/a" if value is None else f"{100 * value:{sign}.2f}"

    kinds = ("personalized", "central")
    lines = [
        "Per seed (deepest exit, %; a seed gives both models the same shards and initial backbone):",
        "",
        "| seed | " + " | ".join(f"{kind} ME | {kind} SE | ME − SE" for kind in kinds) + " |",
        "|---|" + "---|" * 3 * len(kinds),
    ]
    gaps: dict[str, list[float]] = {kind: [] for kind in kinds}
    for seed in sorted(me.keys() | se.keys()):
        cells = []
        for kind in kinds:
            a, b = cell(me, "me", seed, kind), cell(se, "se", seed, kind)
            gap = None if a is None or b is None else a - b
            cells += [pct(a), pct(b), pct(gap, "+")]
            if gap is not None:
                gaps[kind].append(gap)
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    summaries = [f"{kind} {paired_summary(values)}" for kind, values in gaps.items() if values]
    if summaries:
        lines += ["", "Paired over the seeds both models completed (ME − SE, points): " + "; ".join(summaries) + "."]
    return lines + [""]


def _targets(task: str, me: dict, se: dict, deepest: dict) -> list[str]:
    """The project's own targets, checked against the results: met, missed, or not measured yet
    (a comparison without single-exit runs)."""
    if not me:
        return []
    pers_me = [final_accuracy(r, "personalized", deepest["me"]) for r in me.values()]
    checks: list[tuple[str, bool | None]] = []
    if task == "fmnist":
        checks.append(
            (
                "personalized accuracy of the multi-exit model >= 90 % "
                f"(study 81.38 %; ours {100 * statistics.fmean(pers_me):.2f} %)",
                statistics.fmean(pers_me) >= 0.90,
            )
        )
    comparison = "multi-exit ahead of single-exit in personalized accuracy by more than the seed-to-seed spread"
    if se:
        pers_se = [final_accuracy(r, "personalized", deepest["se"]) for r in se.values()]
        spread = (statistics.stdev(pers_me) if len(pers_me) > 1 else 0.0) + (
            statistics.stdev(pers_se) if len(pers_se) > 1 else 0.0
        )
        gap = statistics.fmean(pers_me) - statistics.fmean(pers_se)
        checks.append(
            (
                f"{comparison} (gap {100 * gap:+.2f} points, spread = sum of the two std {100 * spread:.2f})",
                gap > spread,
            )
        )
    else:
        checks.append((comparison, None))
    if task == "fmnist":
        rounds = [r["rounds_to_target"]["personalized"][deepest["me"]] for r in me.values()]
        target = next(iter(me.values()))["target_accuracy"]
        checks.append(
            (
                f"fewer rounds to {100 * target:.0f} % personalized accuracy than the study's 8 to 75 % "
                f"(ours: {rounds})",
                all(r is not None and r < 8 for r in rounds),
            )
        )
    verdict = {True: "met", False: "**missed**", None: "not measured yet: no completed single-exit run"}
    lines = [
        "## Our targets",
        "",
        f"Over {len(me)} multi-exit and {len(se)} single-exit seed(s).",
        "",
        "| target | result |",
        "|---|---|",
    ]
    lines += [f"| {text} | {verdict[ok]} |" for text, ok in checks]
    return lines + [""]


def _setup(task: str) -> list[str]:
    common = (
        "Where our setup differs from the study's: the model widths are ours (a ResNet of five BasicBlocks"
        " with 16-64 channels, about 9 MFLOPs per image, and a 3-layer LSTM of 64 units), chosen so that the"
        " full study runs on a laptop CPU; FedAvg averages every parameter, exit heads included; the"
        " Dirichlet(alpha) label-skew split is our implementation of the unbalanced variant (see README),"
        " each shard cut 80/20 into the client's local train and test parts."
    )
    specific = {
        "fmnist": (
            " The central test set is Fashion-MNIST's official 10,000 test images;"
            " the 60,000 training images are sharded."
        ),
        "har": (
            " The HAR data are NOT UniMiB-SHAR: they are real smartphone accelerometer windows of UCI HAPT"
            " (30 subjects, 12 activities, waist-mounted phone) packed in UniMiB-SHAR's file layout, because"
            " UniMiB-SHAR cannot be downloaded on the build machines; numbers are therefore not comparable"
            " one-to-one with the study's."
            " A stratified 20 % of the windows is the central test set."
        ),
    }
    return ["## Setup and differences from the study", "", common + specific.get(task, ""), ""]


def _provenance(out: Path, runs: dict[str, dict[int, dict[str, Any]]], se_from: Path | None = None) -> list[str]:
    lines = [
        "## Provenance",
        "",
        "| run | seeds | rounds | clients | wall time (h, per seed) | started (UTC) | files |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, by_seed in sorted(runs.items()):
        first = next(iter(by_seed.values()))
        walls = ", ".join(
            f"{r['wall_seconds'] / 3600:.2f}" + ("*" if r.get("resumed") else "") for r in by_seed.values()
        )
        clients = len(first["partitions"])
        files = ", ".join(f"`{os.path.relpath(r['_path'], out)}`" for r in by_seed.values())
        lines.append(
            f"| {variant} | {', '.join(map(str, sorted(by_seed)))} | {len(first['rounds'])} | {clients} | {walls} | "
            f"{min(r['started_at'] for r in by_seed.values())} | {files} |"
        )
    continued = [
        f"{variant} seed {seed} after round {', '.join(str(c['after_round']) for c in r['resumed'])}"
        for variant, by_seed in sorted(runs.items())
        for seed, r in sorted(by_seed.items())
        if r.get("resumed")
    ]
    if continued:
        lines += [
            "",
            "\\* continued from its checkpoint after a stop (`resume-from`); the wall time includes the stopped "
            "attempt: " + "; ".join(continued) + ".",
        ]
    if se_from is not None:
        lines += [
            "",
            f"The single-exit runs are those of `{os.path.relpath(se_from, out)}` (`--se-from`; its commands are in"
            " its `campaign.json`): this campaign differs from that one only in the distillation settings, which a"
            " single-exit model does not use, so its runs are the same computation.",
        ]
    campaign = out / "campaign.json"
    if campaign.exists():
        lines += ["", "Commands (from `campaign.json`):", ""]
        lines += [f"- `{c['command']}` — {c['started_at']} on {c['machine']}" for c in json.loads(campaign.read_text())]
    config = next(iter(next(iter(runs.values())).values()))["run_config"]
    varies = "`multi-exit`, `seed` and `partition-seed` vary" + (
        "; the single-exit runs' distillation settings are those of their own folder" if se_from is not None else ""
    )
    lines += [
        "",
        f"Run config (shared; {varies}): "
        + ", ".join(f"`{k}={v}`" for k, v in config.items() if k not in PER_RUN_KEYS),
        "",
    ]
    return lines
