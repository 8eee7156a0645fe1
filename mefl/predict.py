"""Run an exported model (``mefl export``) on inputs: a ``.npy`` / ``.npz`` file of raw inputs, or
the run's own central test set, at one exit level or with early exit; predictions with the exit
each one used (the runner itself: exported.py)."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mefl_app.data.tensors import DataError
from mefl_app.task import load_task_data

from .export import load_run
from .exported import ENGINES, ExportedModel, softmax


def load_inputs(args: argparse.Namespace, model: ExportedModel) -> tuple[np.ndarray, np.ndarray | None]:
    """Model inputs and labels (if known): from ``--input`` (raw, normalised here) or the run's
    central test set (already normalised)."""
    if args.input is None:
        settings, _, _ = load_run(args.run, args.data_dir)
        test = load_task_data(settings).test
        x, y = test.x.numpy(), test.y.numpy()
    else:
        path = Path(args.input)
        if not path.is_file():
            raise DataError(f"{path}: no such input file")
        loaded = np.load(path)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            if "x" not in loaded:
                raise DataError(f"{path}: an .npz input needs an array 'x' (and optionally labels 'y')")
            x, y = loaded["x"], (loaded["y"] if "y" in loaded else None)
        else:
            x, y = loaded, None
        shape = tuple(model.metadata["input_shape"])
        if x.shape == shape:
            x = x[None]
        if tuple(x.shape[1:]) != shape:
            raise DataError(f"{path}: inputs of shape {tuple(x.shape[1:])}, the model takes {shape} (one per row)")
        x = model.normalize(x)
    if args.limit:
        x, y = x[: args.limit], (None if y is None else y[: args.limit])
    return np.ascontiguousarray(x, dtype=np.float32), y


def predict(model: ExportedModel, x: np.ndarray, level: int | None, threshold: float | None) -> list[dict[str, Any]]:
    """One row per input: predicted class, its name, the exit that answered, its confidence."""
    rows = []
    names = model.metadata["class_names"]
    for i in range(len(x)):
        if level is None:
            used, logits = model.early_exit(x[i : i + 1], threshold)
        else:
            used, logits = level, model.logits(x[i : i + 1], level)
        probabilities = softmax(logits[0])
        label = int(probabilities.argmax())
        rows.append(
            {
                "index": i,
                "class": label,
                "name": names[label],
                "exit": used,
                "confidence": round(float(probabilities[label]), 6),
            }
        )
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("export", type=Path, help="a folder written by mefl export")
    parser.add_argument("--input", type=Path, default=None, help="raw inputs: .npy, or .npz with 'x' (and 'y')")
    parser.add_argument("--run", type=Path, default=None, help="without --input: this run's central test set")
    parser.add_argument("--data-dir", default="", help="where the run's data is, if not where the run had it")
    parser.add_argument("--engine", choices=ENGINES, default="onnx")
    parser.add_argument("--level", type=int, default=None, help="answer at this exit level (default: early exit)")
    parser.add_argument("--threshold", type=float, default=None, help="early-exit threshold (default: the exported)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N inputs")
    parser.add_argument("--out", type=Path, default=None, help="write the predictions as CSV here (default: stdout)")


def main(args: argparse.Namespace) -> int:
    """Predictions of an exported model, with the exit each one used."""
    model = ExportedModel(args.export, args.engine)
    if args.input is None and args.run is None:
        raise DataError("give --input FILE, or --run FOLDER for that run's central test set")
    x, y = load_inputs(args, model)
    rows = predict(model, x, args.level, args.threshold)
    handle = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["index"])
        writer.writeheader()
        writer.writerows(rows)
    finally:
        if args.out:
            handle.close()
    exits = np.bincount([r["exit"] for r in rows], minlength=model.num_exits + 1)[1:]
    counts = ", ".join(f"{name}: {count}" for name, count in zip(model.metadata["exits"], exits))
    summary = f"{len(rows)} inputs; answered at exits {counts}"
    if y is not None:
        summary += f"; accuracy {np.mean([r['class'] == int(t) for r, t in zip(rows, y)]):.4f}"
    sys.stdout.flush()
    print(summary, file=sys.stderr)
    return 0
