"""A trained run, made ready for devices: per exit level a model that computes nothing past its
exit, in TorchScript and in ONNX, and an early-exit model that stops at the first exit whose top
softmax probability reaches a threshold, with the metadata a device needs beside them.

The multi-exit model is cut into segments: segment k runs the layers between exit k-1 and exit k
(the ResNet's stem goes with segment 1) and returns those features together with exit k's logits.
The level-k model chains segments 1..k and returns exit k's logits. The early-exit model chains
them one at a time and returns after the first confident exit; in TorchScript it is one scripted
module (data-dependent control flow), in ONNX the segments are separate files that the host
program chains (``mefl predict`` does), since an ONNX graph with an ``If`` per exit would still
hold every later layer's weights and is not what a device's runtime wants to load.

Every file is loaded back after it is written and must give the PyTorch model's logits to
``TOLERANCE``; the measured differences are in ``model.json``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mefl_app.data.tensors import DataError
from mefl_app.model.flops import forward_mflops_per_exit
from mefl_app.model.lstm import MultiExitLSTM
from mefl_app.model.resnet import MultiExitResNet
from mefl_app.server.run_folder import RESULTS_FILE
from mefl_app.settings import RunSettings
from mefl_app.task import build_model, exit_names, load_task_data

from .exported import ENGINES, METADATA_FILE, ExportedModel

TOLERANCE = 1e-4  # max |logit difference| of an exported file against the PyTorch model, per unit of the
# largest |logit| where that exceeds 1 (float32 rounding grows with the logits' size)
DEFAULT_THRESHOLD = 0.9


class ResNetSegment(nn.Module):
    """The ResNet's blocks between exit k-1 and exit k (and the stem, for k = 1), then exit k."""

    def __init__(self, model: MultiExitResNet, k: int) -> None:
        super().__init__()
        first = model.exit_after[k - 2] if k > 1 else 0
        units = ([model.stem] if k == 1 else []) + list(model.blocks[first : model.exit_after[k - 1]])
        self.body = nn.Sequential(*units)
        self.head = model.exits[k - 1]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(x)
        return features, self.head(features)


class LSTMSegment(nn.Module):
    """The LSTM's layers between exit k-1 and exit k, then exit k on the last time step."""

    def __init__(self, model: MultiExitLSTM, k: int) -> None:
        super().__init__()
        first = model.exit_after[k - 2] if k > 1 else 0
        self.layers = nn.ModuleList(model.layers[first : model.exit_after[k - 1]])
        self.head = model.exits[k - 1]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = x
        for layer in self.layers:
            out, _ = layer(out)
        return out, self.head(out[:, -1])


def segments_of(model: nn.Module) -> list[nn.Module]:
    """The model cut at its exits, shallowest first (eval mode)."""
    kind = {MultiExitResNet: ResNetSegment, MultiExitLSTM: LSTMSegment}[type(model)]
    return [kind(model, k).eval() for k in range(1, model.num_exits + 1)]


class UpToExit(nn.Module):
    """Exit k's logits, computing segments 1..k only."""

    def __init__(self, segments: list[nn.Module]) -> None:
        super().__init__()
        self.segments = nn.ModuleList(segments)

    def forward(self, x: Tensor) -> Tensor:
        features, logits = x, x
        for segment in self.segments:
            features, logits = segment(features)
        return logits


class EarlyExit(nn.Module):
    """One input at a time: the logits of the first exit whose top softmax probability reaches
    the threshold (the deepest exit otherwise) and that exit's number (1-based); later segments
    do not run. ``threshold`` < 0 in a call: the one it was exported with."""

    def __init__(self, segments: list[nn.Module], threshold: float) -> None:
        super().__init__()
        self.segments = nn.ModuleList(segments)
        self.threshold = float(threshold)
        self.num_exits = len(segments)

    def forward(self, x: Tensor, threshold: float = -1.0) -> tuple[Tensor, Tensor]:
        if x.size(0) != 1:
            raise ValueError("the early-exit model takes one input at a time (batch size 1)")
        if threshold < 0:
            threshold = self.threshold
        features, logits, chosen, position = x, x, 0, 0
        for segment in self.segments:
            position += 1
            if chosen == 0:
                features, logits = segment(features)
                if position == self.num_exits or bool(torch.softmax(logits, dim=1).max() >= threshold):
                    chosen = position
        return logits, torch.tensor(chosen)


def load_run(source: Path, data_dir: str = "") -> tuple[RunSettings, nn.Module, dict[str, Any]]:
    """The settings, trained model (eval mode) and results of a run folder, or of a checkpoint
    file inside one (``model.pt`` of a completed run, ``checkpoint-round<N>.pt`` of a stopped one)."""
    source = Path(source)
    folder, weights = (source.parent, source) if source.is_file() else (source, source / "model.pt")
    if not (folder / RESULTS_FILE).is_file():
        raise DataError(f"{folder} is not a run folder (no {RESULTS_FILE})")
    results = json.loads((folder / RESULTS_FILE).read_text())
    if not source.is_file():
        if results.get("status") != "completed":
            checkpoint = results.get("checkpoint")
            example = f", e.g. {folder / checkpoint['file']}" if checkpoint else ""
            raise DataError(
                f"{folder} did not complete (status {results.get('status')!r}); name one of its checkpoints "
                f"to export it{example}"
            )
    if not weights.is_file():
        raise DataError(f"{weights}: no such model file (checkpoints and models stay on the machine that ran)")
    overrides = {"data-dir": data_dir} if data_dir else {}
    settings = RunSettings.from_run_config({**results["run_config"], **overrides})
    data_info = describe_data(settings, results)
    model = build_model(settings, data_info["num_classes"], tuple(data_info["input_shape"]))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    results["data"] = data_info
    return settings, model.to(memory_format=torch.contiguous_format).eval(), results


def describe_data(settings: RunSettings, results: dict[str, Any]) -> dict[str, Any]:
    """Classes, input shape and normalisation of the run's data: from results.json, or (runs
    recorded before these were) from the data itself."""
    data = dict(results.get("data", {}))
    if "input_shape" not in data or "normalization" not in data:
        task = load_task_data(settings)
        data.update(
            num_classes=task.num_classes,
            class_names=list(task.class_names),
            input_shape=list(task.input_shape),
            normalization=task.normalization,
        )
    return data


def _save_torchscript(module: nn.Module, path: Path) -> None:
    """``torch.jit.script`` + save. TorchScript is deprecated in favour of torch.export, but it is
    what PyTorch Mobile / LibTorch devices load today, so the warning is silenced here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(path))


def _example(shape: tuple[int, ...], batch: int, seed: int = 0) -> Tensor:
    return torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed))


def _export_onnx(module: nn.Module, example: Tensor, path: Path, outputs: list[str]) -> None:
    """torch.export-based ONNX export with a dynamic batch dimension (the example has batch 2,
    so that the exporter does not specialise it to 1)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["input"],
            output_names=outputs,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            verbose=False,
        )


def _max_difference(a: Tensor | np.ndarray, reference: np.ndarray) -> float:
    """max |a - reference| / max(1, max |reference|)."""
    reference = np.asarray(reference, dtype=np.float64)
    scale = max(1.0, float(np.abs(reference).max()))
    return float(np.abs(np.asarray(a, dtype=np.float64) - reference).max()) / scale


def export_run(source: Path, out: Path, threshold: float = DEFAULT_THRESHOLD, data_dir: str = "") -> Path:
    """Write every exported file and ``model.json`` to ``out``, then load each back and compare
    its logits with the PyTorch model's; returns the metadata path."""
    if not 0 < threshold <= 1:
        raise DataError(f"the early-exit threshold must lie in (0, 1], got {threshold}")
    settings, model, results = load_run(source, data_dir)
    shape = tuple(results["data"]["input_shape"])
    out.mkdir(parents=True, exist_ok=True)
    segments = segments_of(model)
    levels = range(1, len(segments) + 1)
    features = _example(shape, 2)
    for k in levels:
        level = UpToExit(segments[:k]).eval()
        _save_torchscript(level, out / f"level{k}.pt")
        _export_onnx(level, _example(shape, 2), out / f"level{k}.onnx", ["logits"])
        _export_onnx(segments[k - 1], features, out / f"segment{k}.onnx", ["features", "logits"])
        with torch.no_grad():
            features = segments[k - 1](features)[0]
    _save_torchscript(EarlyExit(segments, threshold), out / "early-exit.pt")
    files = {
        "torchscript": {"levels": [f"level{k}.pt" for k in levels], "early_exit": "early-exit.pt"},
        "onnx": {"levels": [f"level{k}.onnx" for k in levels], "segments": [f"segment{k}.onnx" for k in levels]},
    }
    metadata = _metadata(settings, model, results, threshold, files)
    path = out / METADATA_FILE
    path.write_text(json.dumps(metadata, indent=2) + "\n")
    differences = logit_differences(out, model, shape)
    metadata["max_logit_difference"] = differences
    path.write_text(json.dumps(metadata, indent=2) + "\n")
    worst = max(differences, key=differences.get)
    if differences[worst] > TOLERANCE:
        raise RuntimeError(f"{out}: {worst} differs from the PyTorch model's logits by {differences[worst]:.2e}")
    return path


def logit_differences(out: Path, model: nn.Module, shape: tuple[int, ...]) -> dict[str, float]:
    """Max logit difference (``_max_difference``) from the PyTorch model, per engine and file: each level on
    a batch, and the early-exit chain at a threshold above any probability (every input runs to
    the deepest exit)."""
    check = _example(shape, 4, seed=1)
    with torch.no_grad():
        reference = [logits.numpy() for logits in model(check)]
    differences: dict[str, float] = {}
    for engine in ENGINES:
        exported = ExportedModel(out, engine)
        for k in range(1, len(reference) + 1):
            differences[f"{engine} level{k}"] = _max_difference(exported.logits(check.numpy(), k), reference[k - 1])
        early = []
        for i in range(len(check)):
            used, logits = exported.early_exit(check[i : i + 1].numpy(), threshold=2.0)
            if used != len(reference):
                raise RuntimeError(f"{out}: the {engine} early-exit model stopped at exit {used} at threshold 2")
            early.append(_max_difference(logits, reference[-1][i : i + 1]))
        differences[f"{engine} early-exit"] = max(early)
    return differences


def _metadata(
    settings: RunSettings,
    model: nn.Module,
    results: dict[str, Any],
    threshold: float,
    files: dict[str, Any],
) -> dict[str, Any]:
    data = results["data"]
    return {
        "task": settings.task,
        "model": type(model).__name__,
        "class_names": list(data["class_names"]),
        "input_shape": list(data["input_shape"]),
        "normalization": data["normalization"],
        "exits": exit_names(settings),
        "forward_mflops_per_exit": forward_mflops_per_exit(model, torch.zeros(tuple(data["input_shape"]))),
        "threshold": threshold,
        "files": files,
        "tolerance": TOLERANCE,
        "source": {"run_id": results.get("run_id"), "rounds": len(results.get("rounds", []))},
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="a run folder (its model.pt) or a checkpoint file inside one")
    parser.add_argument("--out", type=Path, required=True, help="the folder for the exported files")
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"the early-exit model's confidence threshold (default {DEFAULT_THRESHOLD})",
    )
    parser.add_argument("--data-dir", default="", help="where the run's data is, if not where the run had it")


def main(args: argparse.Namespace) -> int:
    """Export a trained run: per exit level TorchScript and ONNX files, and an early-exit model."""
    path = export_run(args.run, args.out, args.threshold, args.data_dir)
    metadata = json.loads(path.read_text())
    worst = max(metadata["max_logit_difference"].values())
    print(f"exported {len(metadata['exits'])} exit levels and the early-exit model to {args.out}")
    print(f"metadata: {path}; every file's logits within {worst:.1e} of the PyTorch model's")
    return 0
