"""Data sets as normalized tensors in memory, loaded once per process.

Clients index these tensors directly instead of going through per-sample PIL transforms and a
DataLoader: the data sets are small enough to hold whole, and at 2,000 samples per client the
per-batch overhead of a DataLoader would cost more than the model's own forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


class DataUnavailableError(RuntimeError):
    """The data set is neither on disk nor downloadable, or its files are not what they should
    be; the message names the file and says how to get it."""


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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])
