"""Fashion-MNIST (Xiao et al., 2017): 60,000 training images to shard, 10,000 central test images.

The four original IDX files are read here with numpy; torchvision is imported only to download
them. Importing torchvision takes about 2 s (its ``ops`` import ``torch._dynamo``), and the
ServerApp and every ClientApp process load this module: a deployment starts a fresh ClientApp
process for every message.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

from .tensors import DataError, TaskData, TensorData, check_tensor_data

# Where Debian's ``dataset-fashion-mnist`` package puts the four original IDX files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Where torchvision's ``FashionMNIST(root)`` keeps them, the files' names and the classes (the
# dataset's release; a unit test checks them against torchvision's).
RAW_FOLDER = Path("FashionMNIST") / "raw"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_NAMES = tuple(name for names in IDX_FILES.values() for name in names)
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


@functools.lru_cache(maxsize=4)
def load_fashion_mnist(data_dir: str | Path) -> TaskData:
    """The 60,000 training images (to be sharded) and the official 10,000 test images.

    Uses, in order: files already under ``data_dir/FashionMNIST/raw``, Debian's package
    files (no download), torchvision's download.
    """
    root = Path(data_dir).expanduser()
    raw = root / RAW_FOLDER
    _check_writable(root, raw)
    _stage_debian_fashion_mnist(raw)
    _check_idx_files(raw)
    if not _complete(raw):
        _download(root, raw)
    train, test = (_normalized_images(raw, split) for split in IDX_FILES)
    for data, split in ((train, "train"), (test, "t10k")):
        check_tensor_data(data, str(raw / IDX_FILES[split][1]), len(CLASSES))
    normalization = {"scale": 1 / 255, "mean": [FASHION_MNIST_MEAN], "std": [FASHION_MNIST_STD], "axis": 0}
    return TaskData("fmnist", train, test, CLASSES, normalization)


def _complete(raw: Path) -> bool:
    return all((raw / name).is_file() for name in IDX_NAMES)


def _download(root: Path, raw: Path) -> None:
    """torchvision's download (its mirrors and checksums) into ``root/FashionMNIST/raw``."""
    from torchvision.datasets import FashionMNIST  # only here: see the module docstring

    try:
        for train in (True, False):
            FashionMNIST(root, train=train, download=True)
    except Exception as error:  # torchvision raises RuntimeError/URLError/OSError variously
        raise DataError(
            f"Fashion-MNIST is not under {raw} and could not be downloaded "
            f"({' '.join(str(error).split())}). Either install Debian's package (`apt-get install -y "
            f"dataset-fashion-mnist`, files in {DEBIAN_FASHION_MNIST_DIR}) or run once with internet access so "
            "torchvision downloads it into data-dir."
        ) from error


# IDX headers (LeCun et al.): magic number, then the sizes of the dimensions, big-endian int32.
IDX_MAGIC = {"images": (2051, 3), "labels": (2049, 1)}


def _check_idx_files(raw: Path) -> None:
    """The IDX files present hold what their headers say (a truncated or foreign file is named
    as corrupt here, not reported as missing by torchvision)."""
    for name in IDX_NAMES:
        if (raw / name).is_file():
            _idx_shape(raw / name)


def _idx_shape(path: Path) -> tuple[int, ...]:
    """The dimensions the IDX header of ``path`` gives, after checking its magic number and that
    the file holds exactly that many bytes."""
    magic, dims = IDX_MAGIC["images" if "images" in path.name else "labels"]
    with path.open("rb") as handle:
        header = handle.read(4 * (dims + 1))
    values = struct.unpack(f">{dims + 1}I", header) if len(header) == 4 * (dims + 1) else ()
    if not values or values[0] != magic:
        raise DataError(f"{path}: corrupt IDX file: expected magic number {magic}, the file starts with {header[:8]!r}")
    expected = len(header) + math.prod(values[1:])
    if path.stat().st_size != expected:
        raise DataError(
            f"{path}: corrupt or truncated IDX file: its header promises {expected} bytes "
            f"({' x '.join(map(str, values[1:]))}), the file has {path.stat().st_size}"
        )
    return values[1:]


def _read_idx(path: Path) -> torch.Tensor:
    """An IDX file of unsigned bytes as a tensor of the header's shape."""
    shape = _idx_shape(path)
    return torch.from_numpy(np.fromfile(path, dtype=np.uint8, offset=4 * (len(shape) + 1)).reshape(shape))


def _check_writable(root: Path, raw: Path) -> None:
    """data-dir must exist or be creatable, and writable unless the files are all there already."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"data-dir {root} cannot be created ({error.strerror or error})") from None
    if not _complete(raw) and not os.access(root, os.W_OK):
        raise DataError(f"data-dir {root} is not writable: Fashion-MNIST cannot be staged or downloaded there")


def _stage_debian_fashion_mnist(raw: Path) -> None:
    """Decompress Debian's IDX files where torchvision looks, so that nothing need be downloaded.

    Debian re-compressed the files, so the .gz checksums torchvision knows do not apply;
    ``_check_idx_files`` checks the content (magic numbers, sizes).
    """
    for name in IDX_NAMES:
        source, target = DEBIAN_FASHION_MNIST_DIR / f"{name}.gz", raw / name
        if source.is_file() and not target.exists():
            raw.mkdir(parents=True, exist_ok=True)
            # Decompress beside, then rename: clients in other processes may be reading `raw`.
            with tempfile.TemporaryDirectory(dir=raw) as scratch:
                extracted = Path(scratch) / name
                try:
                    with gzip.open(source) as compressed, extracted.open("wb") as out:
                        shutil.copyfileobj(compressed, out)
                except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
                    raise DataError(f"{source}: corrupt archive ({error})") from None
                os.replace(extracted, target)


def _normalized_images(raw: Path, split: str) -> TensorData:
    images, labels = (_read_idx(raw / name) for name in IDX_FILES[split])
    x = images.unsqueeze(1).float().div_(255.0).sub_(FASHION_MNIST_MEAN).div_(FASHION_MNIST_STD)
    return TensorData(x.contiguous(), labels.long())
