"""The study's comparison, multi-exit vs single-exit, as a command: run it, then report it.

    python -m mefl_app.experiments run --task fmnist --seeds 0 1 2 --out results/fmnist
    python -m mefl_app.experiments report --out results/fmnist
    python -m mefl_app.experiments report --out results/fmnist-c0 --se-from results/fmnist
    python -m mefl_app.experiments compare results/strategies/* --out results/strategies/comparison.md

``run`` drives the real app through Flower's simulation engine (a private SuperLink, as
``flwr run .`` would use) once per (variant, seed): multi-exit and single-exit share the seed and
the shards (``seed`` and ``partition-seed`` are both set to the seed). A configuration whose
folder already holds a completed ``results.json`` is skipped, and one whose last attempt stopped
after some finished rounds (or completed fewer rounds than now asked for) is continued from its
checkpoint (``resume-from``), so an interrupted campaign resumes where it stopped. ``report``
only reads results files -- it never trains -- and writes ``report.md`` and PNG plots next to them.
``--se-from`` takes the single-exit runs of the same seeds from another campaign folder, for a
campaign that varies only the multi-exit loss settings (the single-exit model has no
distillation term, so rerunning it would repeat the same computation). ``compare`` puts the
final-round accuracies of several ``run`` folders (e.g. one per strategy) side by side in one
Markdown table, again without training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flwr.common.config import parse_config_args
from scipy.stats import binomtest, ttest_1samp

from .processes import interrupt_on_termination
from .results import ACCURACY_KINDS
from .resume import checkpoint_of, keeps_server_state
from .settings import RunSettings
from .simulation import RayCluster, SimulationSuperLink

APP_DIR = Path(__file__).resolve().parents[1]
VARIANTS = {"me": True, "se": False}

# What the study (Shin & Ko) published and we were given; None where we have no number.
STUDY = {
    "fmnist": {"personalized_me": 0.8138, "rounds_to_target_me": 8, "target": 0.75},
    "har": {"personalized_me": None, "rounds_to_target_me": None, "target": 0.5},
}
# Settings a campaign varies per run, and the multi-exit loss settings, which a single-exit run
# ignores (``multi_exit_loss`` of one exit is plain cross-entropy).
PER_RUN_KEYS = ("multi-exit", "seed", "partition-seed", "output-dir", "resume-from")
LOSS_KEYS = ("distill-weight", "distill-temperature", "distill-teacher", "exit-loss-weights")
KIND_TITLES = {
    "personalized": "personalized (each client's model after local training, its local test part)",
    "global_local": "global model on the clients' local test parts",
    "central": "global model on the central test set",
}


# -- run ------------------------------------------------------------------------------------------
def gpu_share(text: str) -> float:
    """``--gpus-per-client``: Ray gives a client a fraction of one GPU or whole GPUs."""
    value = float(text)
    if value < 0 or (value > 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(f"{text}: give a share of one GPU (0 to 1, e.g. 0.25) or a whole number of GPUs")
    return value


def add_client_resources(run: argparse.ArgumentParser) -> None:
    """``--cpus-per-client`` / ``--gpus-per-client``: what Ray gives each simulated client (every
    command that runs campaigns takes both)."""
    run.add_argument("--cpus-per-client", type=int, default=1)
    run.add_argument("--gpus-per-client", type=gpu_share, default=0.0,
                     help="share of a GPU each client gets from Ray, e.g. 0.25: four clients share one (default 0)")


def completed_results(folder: Path) -> dict[str, Any] | None:
    """The newest completed results file under ``folder`` (a run folder per attempt)."""
    for path in sorted(folder.glob("*/results.json"), reverse=True):
        results = json.loads(path.read_text())
        if results.get("status") == "completed":
            results["_path"] = str(path)
            return results
    return None


def rounds_wanted(config: dict[str, Any]) -> int:
    return int(config.get("num-server-rounds", RunSettings.num_server_rounds))


def is_done(folder: Path, config: dict[str, Any]) -> bool:
    """A completed run with at least the configuration's rounds exists under ``folder``."""
    results = completed_results(folder)
    return results is not None and len(results["rounds"]) >= rounds_wanted(config)


def stopped_attempt(folder: Path, config: dict[str, Any]) -> Path | None:
    """The newest attempt under ``folder`` with a checkpoint short of the configuration's rounds
    -- stopped, or completed with fewer rounds -- to continue instead of starting over (not for
    strategies whose server state a checkpoint lacks)."""
    if keeps_server_state(config.get("strategy", RunSettings.strategy), config.get("dp", RunSettings.dp)):
        return None
    for path in sorted(folder.glob("*/results.json"), reverse=True):
        checkpoint = checkpoint_of(path.parent, json.loads(path.read_text()))
        if checkpoint and checkpoint["round"] < rounds_wanted(config):
            return path.parent
    return None


def run_campaign(task: str, seeds: Sequence[int], variants: Sequence[str], out: Path, clients: int,
                 run_config: str, cpus_per_client: int, log=print, gpus_per_client: float = 0.0) -> None:
    """ME and SE for every seed; a seed sets both ``seed`` and ``partition-seed``, so the two
    variants of a seed see identical shards and initial backbones."""
    overrides = parse_config_args([run_config]) if run_config else {}
    configs = {f"{v}-seed{s}": {**overrides, "task": task, "multi-exit": VARIANTS[v], "seed": s, "partition-seed": s}
               for s in seeds for v in variants}
    run_configs(configs, out, clients, cpus_per_client, log, gpus_per_client)


def run_configs(configs: dict[str, dict[str, Any]], out: Path, clients: int, cpus_per_client: int, log=print,
                gpus_per_client: float = 0.0) -> None:
    """Run every named configuration whose folder ``out/runs/<name>`` has no completed results
    with its rounds; continue a stopped (or shorter) attempt where there is one. Each client gets
    ``cpus_per_client`` cores and ``gpus_per_client`` of a GPU from Ray (0.25: four share one)."""
    todo = {name: config for name, config in configs.items() if not is_done(out / "runs" / name, config)}
    log(f"[experiments] {len(todo)} run(s) to do, {len(configs) - len(todo)} already completed")
    if not todo:
        return
    out.mkdir(parents=True, exist_ok=True)
    _record_invocation(out)
    work = out / ".work"
    # One Ray cluster for the whole campaign: started once, not once per run.
    with RayCluster(work / "ray", num_cpus=os.cpu_count() or 1) as cluster, \
            SimulationSuperLink(work / "flwr-home", ray_address=cluster.address) as link:
        for name, config in todo.items():
            folder = out / "runs" / name
            folder.mkdir(parents=True, exist_ok=True)
            stopped = stopped_attempt(folder, config)
            if stopped is not None:
                config = {**config, "resume-from": str(stopped.resolve())}
            log(f"[experiments] {name}: started {datetime.now(timezone.utc):%H:%M:%S} UTC"
                + (f", continuing {stopped.name}" if stopped else ""))
            started = time.perf_counter()
            with open(folder / "flwr-run.log", "a") as stream:
                link.run(APP_DIR, {**config, "output-dir": folder.resolve()}, clients,
                         timeout=7 * 24 * 3600, num_cpus=cpus_per_client, num_gpus=gpus_per_client, stdout=stream)
            status = "completed" if completed_results(folder) else "FAILED (see flwr-run.log and results.json)"
            log(f"[experiments] {name}: {status} in {time.perf_counter() - started:.0f} s")


def _record_invocation(out: Path) -> None:
    """Append this command, the machine and the time to ``campaign.json`` (the report cites it)."""
    path = out / "campaign.json"
    history = json.loads(path.read_text()) if path.exists() else []
    history.append({
        "command": "python -m mefl_app.experiments " + shlex.join(sys.argv[1:]),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
                   f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
    })
    path.write_text(json.dumps(history, indent=1))


# -- report ---------------------------------------------------------------------------------------
def collect(out: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """variant -> seed -> completed results, from the files under ``out/runs``."""
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for folder in sorted((out / "runs").glob("*-seed*")):
        variant, _, seed = folder.name.partition("-seed")
        results = completed_results(folder)
        if results is not None:
            found.setdefault(variant, {})[int(seed)] = results
    return found


def single_exit_runs_from(folder: Path, me: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The completed single-exit runs of another campaign folder for the seeds of the multi-exit
    runs ``me`` (a paired comparison: the other folder may hold more seeds), checked to share
    every setting of ``me`` except the per-run and multi-exit loss ones."""
    se = collect(folder).get("se", {})
    if me:
        se = {seed: results for seed, results in se.items() if seed in me}
    if not se:
        raise SystemExit(f"--se-from {folder}: no completed single-exit results under {folder / 'runs'}"
                         + (f" for seed(s) {', '.join(map(str, sorted(me)))}" if me else ""))

    def shared(results: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in results["run_config"].items() if k not in PER_RUN_KEYS + LOSS_KEYS}

    se_shared = {seed: shared(results) for seed, results in se.items()}
    for me_seed, me_results in me.items():
        mine = shared(me_results)
        for se_seed, theirs in se_shared.items():
            differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            if differ:
                raise SystemExit(f"--se-from {folder}: single-exit seed {se_seed} differs from multi-exit seed {me_seed}"
                                 f" in {', '.join(differ)}; only the multi-exit loss settings may differ")
    return se


def final_accuracy(results: dict[str, Any], kind: str, exit_name: str) -> float | None:
    metrics = results["rounds"][-1].get(kind, {}).get(exit_name)
    return None if metrics is None else metrics["accuracy"]


def mean_std(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def rounds_mean(values: list[int | None]) -> str:
    if not values:
        return "n/a"  # no completed runs of this variant
    reached = [v for v in values if v is not None]
    text = f"{statistics.fmean(reached):.1f}" if reached else "not reached"
    if reached and len(reached) < len(values):
        text += f" ({len(values) - len(reached)} of {len(values)} seeds never reached it)"
    return text


def _tuning_note(run_config: dict) -> list[str]:
    """Runs in tuning mode score validation parts, not test parts: the report must say so."""
    if float(run_config.get("validation-fraction", 0.0)) <= 0:
        return []
    return ["**Tuning runs** (`validation-fraction` > 0): wherever the tables below say *local test part*, read"
            " the client's *validation part*, cut from its local training data; the central test set is not"
            " scored. These numbers choose settings; they are not results on test data.", ""]


SE_SOURCE = "se-from.txt"  # in a campaign folder: where its single-exit runs come from (``--se-from``)


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
            raise SystemExit(f"--se-from {se_from}: {out / 'runs'} holds single-exit runs of its own; use one or the other")
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
    lines += _tuning_note(any_results["run_config"])

    # Table 1
    lines += ["## Table 1: accuracy after the last round (%, mean ± std over seeds)", "",
              "Deepest exit of each model (the only exit of the single-exit model). **Personalized** is"
              " the study's personalized accuracy as we read it: every client's model after its local"
              " training, scored on that client's own local test part, pooled over clients.", "",
              "| accuracy | multi-exit | single-exit | study (multi-exit) |", "|---|---|---|---|"]
    for kind in ACCURACY_KINDS:
        study_value = study.get("personalized_me") if kind == "personalized" else None
        lines.append(f"| {KIND_TITLES[kind]} | "
                     f"{mean_std([final_accuracy(r, kind, deepest['me']) for r in me.values()]) if me else 'n/a'} | "
                     f"{mean_std([final_accuracy(r, kind, deepest['se']) for r in se.values()]) if se else 'n/a'} | "
                     f"{f'{100 * study_value:.2f}' if study_value else 'n/a'} |")
    lines.append("")
    lines += _per_seed(me, se, deepest)

    # Table 2
    lines += [f"## Table 2: rounds to {100 * target:.0f} % accuracy and communication", "",
              "Rounds: mean over the seeds that reached the target. Bytes: arrays actually sent down to"
              " and up from clients until that round (the multi-exit model also ships its exit heads)."
              " Saving = 1 - multi-exit / single-exit, from rounds (as the study computes it) and from bytes.", "",
              "| accuracy (deepest exit) | rounds ME | rounds SE | saving (rounds) | MB ME | MB SE | saving (bytes) | study rounds ME |",
              "|---|---|---|---|---|---|---|---|"]
    for kind in ACCURACY_KINDS:
        r_me = [r["rounds_to_target"].get(kind, {}).get(deepest["me"]) for r in me.values()]
        r_se = [r["rounds_to_target"].get(kind, {}).get(deepest["se"]) for r in se.values()]
        b_me = [r["bytes_to_target"].get(kind, {}).get(deepest["me"]) for r in me.values()]
        b_se = [r["bytes_to_target"].get(kind, {}).get(deepest["se"]) for r in se.values()]
        study_rounds = study.get("rounds_to_target_me") if kind == "personalized" else None
        lines.append(f"| {kind} | {rounds_mean(r_me)} | {rounds_mean(r_se)} | {_saving(r_me, r_se)} | "
                     f"{_mb(b_me)} | {_mb(b_se)} | {_saving(b_me, b_se)} | {study_rounds or 'n/a'} |")
    lines.append("")

    # Table 3
    if me:
        exits = next(iter(me.values()))["exit_names"]
        lines += ["## Table 3: multi-exit model, accuracy per exit after the last round (%, mean ± std)", "",
                  "| accuracy | " + " | ".join(exits) + " |", "|---|" + "---|" * len(exits)]
        for kind in ACCURACY_KINDS:
            lines.append(f"| {kind} | " + " | ".join(mean_std([final_accuracy(r, kind, e) for r in me.values()]) for e in exits) + " |")
        lines.append("")

    lines += _targets(task, me, se, deepest)
    lines += _setup(task)
    notes = out / "notes.md"
    if notes.exists():  # the analysis a person wrote for this campaign
        lines += [notes.read_text().strip(), ""]

    plots = _plots(out, runs, target)
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
    lines = ["Per seed (deepest exit, %; a seed gives both models the same shards and initial backbone):", "",
             "| seed | " + " | ".join(f"{kind} ME | {kind} SE | ME − SE" for kind in kinds) + " |",
             "|---|" + "---|" * 3 * len(kinds)]
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


def paired_summary(gaps: Sequence[float]) -> str:
    """Mean ± std of the per-seed gaps ME − SE, how many favour ME, and two one-sided p-values
    for "ME ahead": the sign test (no assumption on the gaps' distribution; ties dropped) and the
    paired t-test (assumes roughly normal gaps). The gaps' own spread, not the two models' spreads
    added, is what a paired comparison is judged against."""
    n = len(gaps)
    std = statistics.stdev(gaps) if n > 1 else None
    text = f"{100 * statistics.fmean(gaps):+.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")
    ahead, untied = sum(g > 0 for g in gaps), sum(g != 0 for g in gaps)
    text += f", ME ahead in {ahead} of {n}"
    tests = []
    if untied:
        tests.append(f"sign test p = {binomtest(ahead, untied, 0.5, alternative='greater').pvalue:.3g}")
    if std:  # a t-test needs two gaps that differ
        tests.append(f"paired t-test p = {ttest_1samp(gaps, 0.0, alternative='greater').pvalue:.3g}")
    return text + (f" (one-sided {', '.join(tests)})" if tests else "")


def _targets(task: str, me: dict, se: dict, deepest: dict) -> list[str]:
    """The project's own targets (issue 7), checked against the results: met, missed, or not
    measured yet (a comparison without single-exit runs)."""
    if not me:
        return []
    pers_me = [final_accuracy(r, "personalized", deepest["me"]) for r in me.values()]
    checks: list[tuple[str, bool | None]] = []
    if task == "fmnist":
        checks.append((f"personalized accuracy of the multi-exit model >= 90 % (study 81.38 %; ours {100 * statistics.fmean(pers_me):.2f} %)",
                       statistics.fmean(pers_me) >= 0.90))
    comparison = "multi-exit ahead of single-exit in personalized accuracy by more than the seed-to-seed spread"
    if se:
        pers_se = [final_accuracy(r, "personalized", deepest["se"]) for r in se.values()]
        spread = (statistics.stdev(pers_me) if len(pers_me) > 1 else 0.0) + (statistics.stdev(pers_se) if len(pers_se) > 1 else 0.0)
        gap = statistics.fmean(pers_me) - statistics.fmean(pers_se)
        checks.append((f"{comparison} (gap {100 * gap:+.2f} points, spread = sum of the two std {100 * spread:.2f})", gap > spread))
    else:
        checks.append((comparison, None))
    if task == "fmnist":
        rounds = [r["rounds_to_target"]["personalized"][deepest["me"]] for r in me.values()]
        target = next(iter(me.values()))["target_accuracy"]
        checks.append((f"fewer rounds to {100 * target:.0f} % personalized accuracy than the study's 8 to 75 % (ours: {rounds})",
                       all(r is not None and r < 8 for r in rounds)))
    verdict = {True: "met", False: "**missed**", None: "not measured yet: no completed single-exit run"}
    lines = ["## Our targets", "", f"Over {len(me)} multi-exit and {len(se)} single-exit seed(s).", "",
             "| target | result |", "|---|---|"]
    lines += [f"| {text} | {verdict[ok]} |" for text, ok in checks]
    return lines + [""]


def _setup(task: str) -> list[str]:
    common = ("Where our setup differs from the study's: the model widths are ours (a ResNet of five BasicBlocks"
              " with 16-64 channels, about 9 MFLOPs per image, and a 3-layer LSTM of 64 units), chosen so that the"
              " full study runs on a laptop CPU; FedAvg averages every parameter, exit heads included; the"
              " Dirichlet(alpha) label-skew split is our implementation of the unbalanced variant (see README),"
              " each shard cut 80/20 into the client's local train and test parts.")
    specific = {
        "fmnist": " The central test set is Fashion-MNIST's official 10,000 test images; the 60,000 training images are sharded.",
        "har": (" The HAR data are NOT UniMiB-SHAR: they are real smartphone accelerometer windows of UCI HAPT (30 subjects,"
                " 12 activities, waist-mounted phone) packed in UniMiB-SHAR's file layout, because UniMiB-SHAR cannot be"
                " downloaded on the build machines; numbers are therefore not comparable one-to-one with the study's."
                " A stratified 20 % of the windows is the central test set."),
    }
    return ["## Setup and differences from the study", "", common + specific.get(task, ""), ""]


def _saving(me: list, se: list) -> str:
    me, se = [v for v in me if v is not None], [v for v in se if v is not None]
    if not me or not se:
        return "n/a"
    return f"{100 * (1 - statistics.fmean(me) / statistics.fmean(se)):.1f} %"


def _mb(values: list) -> str:
    reached = [v for v in values if v is not None]
    return f"{statistics.fmean(reached) / 1e6:.1f}" if reached else "n/a"


def _provenance(out: Path, runs: dict[str, dict[int, dict[str, Any]]], se_from: Path | None = None) -> list[str]:
    lines = ["## Provenance", "", "| run | seeds | rounds | clients | wall time (h, per seed) | started (UTC) | files |", "|---|---|---|---|---|---|---|"]
    for variant, by_seed in sorted(runs.items()):
        first = next(iter(by_seed.values()))
        walls = ", ".join(f"{r['wall_seconds'] / 3600:.2f}" + ("*" if r.get("resumed") else "") for r in by_seed.values())
        clients = len(first["partitions"])
        files = ", ".join(f"`{os.path.relpath(r['_path'], out)}`" for r in by_seed.values())
        lines.append(f"| {variant} | {', '.join(map(str, sorted(by_seed)))} | {len(first['rounds'])} | {clients} | {walls} | "
                     f"{min(r['started_at'] for r in by_seed.values())} | {files} |")
    continued = [f"{variant} seed {seed} after round {', '.join(str(c['after_round']) for c in r['resumed'])}"
                 for variant, by_seed in sorted(runs.items()) for seed, r in sorted(by_seed.items()) if r.get("resumed")]
    if continued:
        lines += ["", "\\* continued from its checkpoint after a stop (`resume-from`); the wall time includes the stopped "
                  "attempt: " + "; ".join(continued) + "."]
    if se_from is not None:
        lines += ["", f"The single-exit runs are those of `{os.path.relpath(se_from, out)}` (`--se-from`; its commands are in"
                  " its `campaign.json`): this campaign differs from that one only in the distillation settings, which a"
                  " single-exit model does not use, so its runs are the same computation."]
    campaign = out / "campaign.json"
    if campaign.exists():
        lines += ["", "Commands (from `campaign.json`):", ""]
        lines += [f"- `{c['command']}` — {c['started_at']} on {c['machine']}" for c in json.loads(campaign.read_text())]
    config = next(iter(next(iter(runs.values())).values()))["run_config"]
    varies = "`multi-exit`, `seed` and `partition-seed` vary" + ("; the single-exit runs' distillation settings are"
                                                                " those of their own folder" if se_from is not None else "")
    lines += ["", f"Run config (shared; {varies}): "
              + ", ".join(f"`{k}={v}`" for k, v in config.items() if k not in PER_RUN_KEYS), ""]
    return lines


def _plots(out: Path, runs: dict[str, dict[int, dict[str, Any]]], target: float) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    styles = {"me": "-", "se": "--"}
    for kind in ACCURACY_KINDS:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for variant, by_seed in sorted(runs.items()):
            exits = next(iter(by_seed.values()))["exit_names"]
            for e, exit_name in enumerate(exits):
                curves = [[r[kind][exit_name]["accuracy"] for r in res["rounds"] if kind in r] for res in by_seed.values()]
                length = min(len(c) for c in curves)
                mean = [statistics.fmean(c[i] for c in curves) for i in range(length)]
                ax.plot(range(1, length + 1), mean, styles.get(variant, ":"), color=f"C{e if variant == 'me' else 3}",
                        label=f"{'multi-exit' if variant == 'me' else 'single-exit'} {exit_name}")
        ax.axhline(target, color="grey", linewidth=0.8, linestyle=":", label=f"target {target:.2f}")
        ax.set(xlabel="round", ylabel="accuracy", title=KIND_TITLES[kind], ylim=(0, 1))
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, loc="lower right")
        name = f"accuracy_{kind}.png"
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        names.append(name)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels, data = [], []
    for variant, by_seed in sorted(runs.items()):
        for exit_name in next(iter(by_seed.values()))["exit_names"]:
            values = [acc for res in by_seed.values() for acc in res["rounds"][-1]["personalized"][exit_name]["per_client"].values()]
            labels.append(f"{variant}\n{exit_name}")
            data.append(values)
    ax.boxplot(data)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
    ax.set(ylabel="personalized accuracy of one client", title="final per-client personalized accuracy (all seeds)")
    fig.tight_layout()
    fig.savefig(out / "per_client_spread.png", dpi=120)
    plt.close(fig)
    names.append("per_client_spread.png")
    return names


def write_comparison(folders: Sequence[Path], out_file: Path) -> Path:
    """One row per completed run under ``folders``: strategy, last-round accuracy per exit (all
    three kinds), rounds to target (personalized and central, deepest exit), bytes and wall time."""
    rows, tuning = [], []
    for folder in folders:
        for variant, by_seed in sorted(collect(folder).items()):
            for seed, results in sorted(by_seed.items()):
                exits, last = results["exit_names"], results["rounds"][-1]
                tuning = tuning or _tuning_note(results["run_config"])
                # A kind a run did not score (tuning runs skip the central test set): n/a.
                per_exit = [" / ".join(f"{100 * last[kind][e]['accuracy']:.1f}" for e in exits) if kind in last else "n/a"
                            for kind in ACCURACY_KINDS]
                reached = " / ".join(str(results["rounds_to_target"].get(kind, {}).get(exits[-1]) or "not reached")
                                     for kind in ("personalized", "central"))
                megabytes = sum(r["bytes_down"] + r["bytes_up"] for r in results["rounds"]) / 1e6
                minutes = sum(r["seconds"] for r in results["rounds"]) / 60
                rows.append(f"| {folder.name} | {results['strategy']} | {variant}, {seed} | {len(results['rounds'])} | "
                            + " | ".join(per_exit) + f" | {reached} | {megabytes:.0f} | {minutes:.1f} |")
    if not rows:
        raise SystemExit(f"no completed results under {', '.join(str(f / 'runs') for f in folders)}")
    lines = [f"# Comparison of {len(folders)} run folders", "",
             f"Written by `python -m mefl_app.experiments compare {' '.join(str(f) for f in folders)} --out {out_file}`"
             f" on {datetime.now(timezone.utc).isoformat(timespec='seconds')} from these results files; accuracies"
             " in % after the last round, per exit (shallowest first).", "", *tuning,
             "| folder | strategy | variant, seed | rounds | personalized | global model, local test parts | "
             "central test set | rounds to target, deepest exit (personalized / central) | MB sent | wall minutes |",
             "|---|---|---|---|---|---|---|---|---|---|", *rows]
    out_file.write_text("\n".join(lines) + "\n")
    return out_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mefl_app.experiments", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run ME and SE for every seed (skips completed runs), then report")
    run.add_argument("--task", choices=["fmnist", "har"], required=True)
    run.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    run.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    run.add_argument("--clients", type=int, default=24, help="simulated SuperNodes (num-supernodes)")
    add_client_resources(run)
    run.add_argument("--run-config", default="", help="overrides for every run, flwr run syntax")
    run.add_argument("--out", type=Path, required=True)
    report = commands.add_parser("report", help="write report.md and plots from existing results (no training)")
    report.add_argument("--out", type=Path, required=True)
    for command in (run, report):
        command.add_argument("--se-from", type=Path, default=None, metavar="FOLDER",
                             help="report the single-exit runs of this campaign folder (one that differs only in the"
                                  " distillation settings, which the single-exit model does not use)")
    compare = commands.add_parser("compare", help="one Markdown table of the final accuracies of several run folders")
    compare.add_argument("folders", type=Path, nargs="+", help="folders written by run")
    compare.add_argument("--out", type=Path, required=True, help="the Markdown file to write")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "compare":
        print(f"comparison: {write_comparison(args.folders, args.out)}")
        return
    if args.command == "run":
        if args.se_from is not None and "se" in args.variants:
            raise SystemExit("--se-from takes the single-exit runs from another folder: run with --variants me")
        interrupt_on_termination()  # `kill` stops the campaign's Ray cluster and SuperLink too
        run_campaign(args.task, args.seeds, args.variants, args.out, args.clients, args.run_config, args.cpus_per_client,
                     gpus_per_client=args.gpus_per_client)
    print(f"report: {write_report(args.out, args.se_from)}")


if __name__ == "__main__":
    main()
