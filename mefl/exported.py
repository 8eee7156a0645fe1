"""An exported model (``mefl export``) as a device program uses it: TorchScript
(``torch.jit.load``) or ONNX Runtime, the metadata's normalisation, and for early exit the
segments run one after the other until an exit is confident enough."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mefl_app.data.tensors import DataError

METADATA_FILE = "model.json"
ENGINES = ("torchscript", "onnx")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class ExportedModel:
    """The files of one export, loaded for one engine."""

    def __init__(self, folder: Path, engine: str = "onnx", threads: int = 1) -> None:
        if engine not in ENGINES:
            raise DataError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        folder = Path(folder)
        if not (folder / METADATA_FILE).is_file():
            raise DataError(f"{folder} holds no exported model (no {METADATA_FILE}; write one with mefl export)")
        self.folder, self.engine = folder, engine
        self.metadata: dict[str, Any] = json.loads((folder / METADATA_FILE).read_text())
        self.num_exits = len(self.metadata["exits"])
        files = self.metadata["files"][engine]
        if engine == "torchscript":
            torch.set_num_threads(threads)
            with warnings.catch_warnings():  # torch.jit is deprecated for torch.export (see export.py)
                warnings.simplefilter("ignore", FutureWarning)
                self._levels = [torch.jit.load(str(folder / f)) for f in files["levels"]]
                self._early = torch.jit.load(str(folder / files["early_exit"]))
        else:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = threads
            session = lambda f: onnxruntime.InferenceSession(  # noqa: E731
                str(folder / f), options, providers=["CPUExecutionProvider"]
            )
            self._levels = [session(f) for f in files["levels"]]
            self._segments = [session(f) for f in files["segments"]]

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Raw inputs (pixels 0-255, accelerometer readings) as the model takes them."""
        norm = self.metadata["normalization"]
        shape = [1] * (len(self.metadata["input_shape"]) + 1)
        axis = norm["axis"] % len(self.metadata["input_shape"]) + 1
        shape[axis] = -1
        mean = np.asarray(norm["mean"], np.float32).reshape(shape)
        std = np.asarray(norm["std"], np.float32).reshape(shape)
        return ((raw.astype(np.float32) * norm["scale"] - mean) / std).astype(np.float32)

    def logits(self, x: np.ndarray, level: int) -> np.ndarray:
        """Exit ``level``'s logits for a batch of model inputs; nothing past that exit runs."""
        if not 1 <= level <= self.num_exits:
            raise DataError(f"exit level must lie in 1..{self.num_exits}, got {level}")
        if self.engine == "torchscript":
            with torch.no_grad():
                return self._levels[level - 1](torch.from_numpy(x)).numpy()
        return self._levels[level - 1].run(None, {"input": x})[0]

    def early_exit(self, x: np.ndarray, threshold: float | None = None) -> tuple[int, np.ndarray]:
        """(exit used, its logits) for ONE model input (batch 1): the first exit whose top
        softmax probability reaches ``threshold`` (default: the exported one)."""
        threshold = self.metadata["threshold"] if threshold is None else threshold
        if self.engine == "torchscript":
            with torch.no_grad():
                logits, chosen = self._early(torch.from_numpy(x), float(threshold))
            return int(chosen), logits.numpy()
        features = x
        for k, segment in enumerate(self._segments, start=1):
            features, logits = segment.run(None, {"input": features})
            if k == self.num_exits or softmax(logits).max() >= threshold:
                return k, logits
        raise AssertionError("unreachable: the deepest exit always answers")
