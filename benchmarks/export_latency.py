"""Measured inference cost of an exported model (``mefl export``): latency per exit level at batch
1 and 64 with TorchScript and ONNX Runtime (1 thread, the device case), and the early-exit model's
accuracy against its measured latency over a sweep of thresholds on the run's central test set,
beside the MFLOPs the simulation counts.

    python benchmarks/export_latency.py --export EXPORT_DIR --run RUN_FOLDER --json OUT.json --plot OUT.png
    python benchmarks/export_latency.py --render OUT.json      # the Markdown tables of benchmarks/RESULTS.md

Latencies are medians of repeated calls after a warm-up, the arms interleaved call by call so
that a noisy machine slows every arm alike. The early-exit sweep runs each test sample once per
threshold and engine (batch 1) and times that call.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import cited, provenance, write_json  # noqa: E402

from mefl.export import load_run  # noqa: E402
from mefl.exported import ENGINES, ExportedModel, softmax  # noqa: E402
from mefl_app.task import load_task_data  # noqa: E402

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)


def level_latencies(models: dict[str, ExportedModel], x: np.ndarray, batch: int, repeats: int) -> dict:
    """Median milliseconds of one call per engine and level, arms interleaved."""
    inputs = x[:batch]
    arms = [(engine, level) for engine in models for level in range(1, models[engine].num_exits + 1)]
    times = {arm: [] for arm in arms}
    for engine, level in arms:  # warm-up
        for _ in range(5):
            models[engine].logits(inputs, level)
    for _ in range(repeats):
        for engine, level in arms:
            start = time.perf_counter()
            models[engine].logits(inputs, level)
            times[(engine, level)].append(time.perf_counter() - start)
    return {f"{engine} level{level}": 1000 * float(np.median(times[(engine, level)])) for engine, level in arms}


def early_exit_sweep(models: dict[str, ExportedModel], x: np.ndarray, y: np.ndarray, thresholds) -> list[dict]:
    """Per engine and threshold: accuracy, mean and median milliseconds per sample, exit counts."""
    rows = []
    for threshold in thresholds:
        for engine, model in models.items():
            for i in range(min(20, len(x))):  # warm-up: TorchScript's executor specialises over its first calls
                model.early_exit(x[i : i + 1], threshold)
            seconds, correct, exits = [], 0, np.zeros(model.num_exits, dtype=int)
            for i in range(len(x)):
                start = time.perf_counter()
                used, logits = model.early_exit(x[i : i + 1], threshold)
                seconds.append(time.perf_counter() - start)
                correct += int(softmax(logits[0]).argmax() == y[i])
                exits[used - 1] += 1
            mflops = model.metadata["forward_mflops_per_exit"]
            rows.append(
                {
                    "engine": engine,
                    "threshold": threshold,
                    "accuracy": correct / len(x),
                    "mean_ms": 1000 * float(np.mean(seconds)),
                    "median_ms": 1000 * float(np.median(seconds)),
                    "exits": exits.tolist(),
                    "mean_mflops": float(np.dot(exits, mflops) / len(x)),
                }
            )
    return rows


def deepest_per_sample(models: dict[str, ExportedModel], x: np.ndarray) -> dict[str, float]:
    """Mean milliseconds a sample at the deepest exit, timed as the sweep times early exit."""
    result = {}
    for engine, model in models.items():
        seconds = []
        for i in range(len(x)):
            start = time.perf_counter()
            model.logits(x[i : i + 1], model.num_exits)
            seconds.append(time.perf_counter() - start)
        result[engine] = 1000 * float(np.mean(seconds))
    return result


def level_accuracies(model: ExportedModel, x: np.ndarray, y: np.ndarray) -> list[float]:
    return [float((model.logits(x, level).argmax(axis=1) == y).mean()) for level in range(1, model.num_exits + 1)]


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    models = {engine: ExportedModel(args.export, engine, threads=1) for engine in ENGINES}
    settings, _, _ = load_run(args.run, args.data_dir)
    test = load_task_data(settings).test
    order = np.random.default_rng(args.seed).permutation(len(test.y))[: args.samples]
    x = np.ascontiguousarray(test.x.numpy()[order], dtype=np.float32)
    y = test.y.numpy()[order]
    metadata = models["onnx"].metadata
    measured = {
        "task": metadata["task"],
        "exits": metadata["exits"],
        "forward_mflops_per_exit": metadata["forward_mflops_per_exit"],
        "samples": len(y),
        "batch1_ms": level_latencies(models, x, 1, args.repeats),
        "batch64_ms": level_latencies(models, x, 64, max(5, args.repeats // 10)),
        "level_accuracy": level_accuracies(models["onnx"], x, y),
        "early_exit": early_exit_sweep(models, x, y, args.thresholds),
        "deepest_per_sample_ms": deepest_per_sample(models, x),
    }
    return {**provenance(f", onnxruntime {__import__('onnxruntime').__version__}"), **measured}


def best_threshold(result: dict, engine: str) -> dict | None:
    """The lowest-latency threshold whose accuracy is within 1 point of the deepest exit's."""
    deepest = result["level_accuracy"][-1]
    within = [r for r in result["early_exit"] if r["engine"] == engine and r["accuracy"] >= deepest - 0.01]
    return min(within, key=lambda r: r["mean_ms"]) if within else None


def render(result: dict) -> str:
    exits = result["exits"]
    lines = [
        f"{cited(result)}; {result['samples']} central test samples",
        "",
        "| exit | MFLOPs | accuracy | "
        + " | ".join(f"{e} batch 1 (ms)" for e in ENGINES)
        + " | "
        + " | ".join(f"{e} batch 64 (ms)" for e in ENGINES)
        + " |",
        "|---|---|---|" + "---|" * (2 * len(ENGINES)),
    ]
    for k, name in enumerate(exits, start=1):
        cells = [f"{result['batch1_ms'][f'{e} level{k}']:.3f}" for e in ENGINES]
        cells += [f"{result['batch64_ms'][f'{e} level{k}']:.2f}" for e in ENGINES]
        mflops, accuracy = result["forward_mflops_per_exit"][k - 1], result["level_accuracy"][k - 1]
        lines.append(f"| {name} | {mflops:.2f} | {100 * accuracy:.2f} % | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| engine | threshold | accuracy | mean ms / sample | mean MFLOPs | answered at " + ", ".join(exits) + " |",
    ]
    lines.append("|---|---|---|---|---|---|")
    for r in result["early_exit"]:
        lines.append(
            f"| {r['engine']} | {r['threshold']} | {100 * r['accuracy']:.2f} % | {r['mean_ms']:.3f} | "
            f"{r['mean_mflops']:.2f} | {' / '.join(str(c) for c in r['exits'])} |"
        )
    lines.append("")
    for engine in ENGINES:
        best = best_threshold(result, engine)
        deepest_ms = result["deepest_per_sample_ms"][engine]
        if best is None:
            lines.append(f"- {engine}: no threshold keeps accuracy within 1 point of the deepest exit.")
        else:
            lines.append(
                f"- {engine}: threshold {best['threshold']} keeps accuracy at {100 * best['accuracy']:.2f} % (deepest "
                f"exit {100 * result['level_accuracy'][-1]:.2f} %) at {best['mean_ms']:.3f} ms a sample against "
                f"{deepest_ms:.3f} ms at the deepest exit (both: mean over the same samples, batch 1): "
                f"{deepest_ms / best['mean_ms']:.2f}x faster"
            )
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for engine, marker in zip(ENGINES, "os"):
        rows = [r for r in result["early_exit"] if r["engine"] == engine]
        ax.plot(
            [r["mean_ms"] for r in rows],
            [100 * r["accuracy"] for r in rows],
            marker=marker,
            label=f"{engine} early exit",
        )
        levels = [result["batch1_ms"][f"{engine} level{k}"] for k in range(1, len(result["exits"]) + 1)]
        ax.scatter(levels, [100 * a for a in result["level_accuracy"]], marker="x", label=f"{engine} fixed exit")
    ax.set_xlabel("measured latency per sample, batch 1 (ms)")
    ax.set_ylabel("central test accuracy (%)")
    ax.set_title(
        f"{result['task']}: early exit, thresholds {result['early_exit'][0]['threshold']}-"
        f"{result['early_exit'][-1]['threshold']}"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, help="a folder written by mefl export")
    parser.add_argument("--run", type=Path, help="the run it was exported from (its central test set)")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--samples", type=int, default=2000, help="central test samples of the early-exit sweep")
    parser.add_argument("--repeats", type=int, default=300, help="timed calls per arm at batch 1 (a tenth at 64)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    parser.add_argument("--seed", type=int, default=0, help="which test samples")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument("--plot", type=Path, help="accuracy against measured latency")
    parser.add_argument("--render", type=Path, help="print the tables of a measurement JSON and exit")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return 0
    result = run(args)
    if args.json:
        write_json(args.json, result)
    if args.plot:
        plot(result, args.plot)
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
