"""Data sets as normalized tensors in memory, loaded once per process.

Clients index these tensors directly instead of going through per-sample PIL transforms and a
DataLoader: the data sets are small enough to hold whole, and at 2,000 samples per client the
per-batch overhead of a DataLoader would cost more than the model's own forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


class DataError(RuntimeError):
    """A data file is missing, unreadable, corrupt or holds values it must not (non-finite
    inputs, labels out of range); the message names the file and what was expected."""


def check_tensor_data(data: TensorData, source: str, num_classes: int) -> None:
    """Finite float inputs, integer labels in 0..num_classes-1, one label per input; else a
    ``DataError`` naming ``source`` and the first bad sample."""
    if len(data.x) != len(data.y):
        raise DataError(f"{source}: {len(data.x)} inputs but {len(data.y)} labels")
    if not data.x.is_floating_point() or data.y.dtype != torch.int64:
        raise DataError(f"{source}: expected float inputs and int64 labels, got {data.x.dtype} and {data.y.dtype}")
    finite = torch.isfinite(data.x.reshape(len(data.x), -1)).all(dim=1)
    if not finite.all():
        first = int(torch.nonzero(~finite)[0])
        raise DataError(
            f"{source}: {int((~finite).sum())} sample(s) hold NaN or Inf values, the first is sample {first}"
        )
    outside = (data.y < 0) | (data.y >= num_classes)
    if outside.any():
        first = int(torch.nonzero(outside)[0])
        raise DataError(
            f"{source}: labels must lie in 0..{num_classes - 1}, sample {first} has label {int(data.y[first])}"
        )


@dataclass(frozen=True)
class TensorData:
    """Inputs and 0-based integer labels; ``groups`` (e.g. HAR subject ids) is optional."""

    x: Tensor
    y: Tensor
    groups: Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index) -> TensorData:
        index = torch.as_tensor(index, dtype=torch.long)
        return TensorData(self.x[index], self.y[index], None if self.groups is None else self.groups[index])


@dataclass(frozen=True)
class TaskData:
    """A task's data: the pool that is split into client shards and the central test set."""

    name: str
    train: TensorData
    test: TensorData
    class_names: tuple[str, ...]
    # raw input -> model input: (x * scale - mean) / std, mean and std along ``axis`` of one sample
    normalization: dict | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])
