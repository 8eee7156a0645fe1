"""Data sets as normalized tensors in memory, loaded once per process.

Clients index these tensors directly instead of going through per-sample PIL transforms and a
DataLoader: the data sets are small enough to hold whole, and at 2,000 samples per client the
per-batch overhead of a DataLoader would cost more than the model's own forward pass.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision.datasets import FashionMNIST
from torchvision.datasets.utils import extract_archive

# Where Debian's ``dataset-fashion-mnist`` package puts the four original IDX files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


class DataUnavailableError(RuntimeError):
    """The data set is neither on disk nor downloadable; the message says how to get it."""


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


@functools.lru_cache(maxsize=4)
def load_fashion_mnist(data_dir: str | Path) -> TaskData:
    """The 60,000 training images (to be sharded) and the official 10,000 test images.

    Uses, in order: files already under ``data_dir/FashionMNIST/raw``, Debian's package
    files (no download), torchvision's download.
    """
    root = Path(data_dir).expanduser()
    try:
        _stage_debian_fashion_mnist(root)
        splits = [FashionMNIST(root, train=train, download=True) for train in (True, False)]
    except Exception as error:  # torchvision raises RuntimeError/URLError/OSError variously
        raise DataUnavailableError(
            f"Fashion-MNIST is not under {root / 'FashionMNIST' / 'raw'} and could not be downloaded "
            f"({' '.join(str(error).split())}). Either install Debian's package (`apt-get install -y dataset-fashion-mnist`, "
            f"files in {DEBIAN_FASHION_MNIST_DIR}) or run once with internet access so torchvision "
            "downloads it into data-dir."
        ) from error
    train, test = (_normalized_images(split) for split in splits)
    return TaskData("fmnist", train, test, tuple(splits[0].classes))


def _stage_debian_fashion_mnist(root: Path) -> None:
    """Extract Debian's IDX files where torchvision looks, so that it need not download.

    Debian re-compressed the files, so the .gz checksums torchvision knows do not apply; the
    IDX reader's header checks (magic number, sizes) guard the content.
    """
    raw = root / FashionMNIST.__name__ / "raw"  # FashionMNIST.raw_folder, without instantiating
    for filename, _ in FashionMNIST.resources:
        source = DEBIAN_FASHION_MNIST_DIR / filename
        target = raw / filename.removesuffix(".gz")
        if source.is_file() and not target.exists():
            raw.mkdir(parents=True, exist_ok=True)
            # Extract beside, then rename: clients in other processes may be reading `raw`.
            with tempfile.TemporaryDirectory(dir=raw) as scratch:
                os.replace(extract_archive(str(source), scratch), target)


def _normalized_images(split: FashionMNIST) -> TensorData:
    x = split.data.unsqueeze(1).float().div_(255.0).sub_(FASHION_MNIST_MEAN).div_(FASHION_MNIST_STD)
    return TensorData(x.contiguous(), split.targets.long())
