"""Fashion-MNIST (Xiao et al., 2017): 60,000 training images to shard, 10,000 central test images."""

from __future__ import annotations

import functools
import math
import os
import struct
import tempfile
from pathlib import Path

from torchvision.datasets import FashionMNIST
from torchvision.datasets.utils import extract_archive

from .tensors import DataError, TaskData, TensorData, check_tensor_data

# Where Debian's ``dataset-fashion-mnist`` package puts the four original IDX files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


@functools.lru_cache(maxsize=4)
def load_fashion_mnist(data_dir: str | Path) -> TaskData:
    """The 60,000 training images (to be sharded) and the official 10,000 test images.

    Uses, in order: files already under ``data_dir/FashionMNIST/raw``, Debian's package
    files (no download), torchvision's download.
    """
    root = Path(data_dir).expanduser()
    raw = root / FashionMNIST.__name__ / "raw"  # FashionMNIST.raw_folder, without instantiating
    _check_writable(root, raw)
    _stage_debian_fashion_mnist(raw)
    _check_idx_files(raw)
    try:
        splits = [FashionMNIST(root, train=train, download=True) for train in (True, False)]
    except Exception as error:  # torchvision raises RuntimeError/URLError/OSError variously
        raise DataError(
            f"Fashion-MNIST is not under {raw} and could not be downloaded "
            f"({' '.join(str(error).split())}). Either install Debian's package (`apt-get install -y "
            f"dataset-fashion-mnist`, files in {DEBIAN_FASHION_MNIST_DIR}) or run once with internet access so "
            "torchvision downloads it into data-dir."
        ) from error
    train, test = (_normalized_images(split) for split in splits)
    for data, split in ((train, "train"), (test, "t10k")):
        check_tensor_data(data, str(raw / f"{split}-labels-idx1-ubyte"), len(FashionMNIST.classes))
    normalization = {"scale": 1 / 255, "mean": [FASHION_MNIST_MEAN], "std": [FASHION_MNIST_STD], "axis": 0}
    return TaskData("fmnist", train, test, tuple(splits[0].classes), normalization)


# IDX headers (LeCun et al.): magic number, then the sizes of the dimensions, big-endian int32.
IDX_MAGIC = {"images": (2051, 3), "labels": (2049, 1)}


def _check_idx_files(raw: Path) -> None:
    """The IDX files present hold what their headers say (a truncated or foreign file is named
    as corrupt here, not reported as missing by torchvision)."""
    for filename, _ in FashionMNIST.resources:
        path = raw / filename.removesuffix(".gz")
        if not path.is_file():
            continue
        magic, dims = IDX_MAGIC["images" if "images" in filename else "labels"]
        header = path.read_bytes()[: 4 * (dims + 1)]
        values = struct.unpack(f">{dims + 1}I", header) if len(header) == 4 * (dims + 1) else ()
        if not values or values[0] != magic:
            raise DataError(
                f"{path}: corrupt IDX file: expected magic number {magic}, the file starts with {header[:8]!r}"
            )
        expected = len(header) + math.prod(values[1:])
        if path.stat().st_size != expected:
            raise DataError(
                f"{path}: corrupt or truncated IDX file: its header promises {expected} bytes "
                f"({' x '.join(map(str, values[1:]))}), the file has {path.stat().st_size}"
            )


def _check_writable(root: Path, raw: Path) -> None:
    """data-dir must exist or be creatable, and writable unless the files are all there already."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"data-dir {root} cannot be created ({error.strerror or error})") from None
    complete = all((raw / name.removesuffix(".gz")).is_file() for name, _ in FashionMNIST.resources)
    if not complete and not os.access(root, os.W_OK):
        raise DataError(f"data-dir {root} is not writable: Fashion-MNIST cannot be staged or downloaded there")


def _stage_debian_fashion_mnist(raw: Path) -> None:
    """Extract Debian's IDX files where torchvision looks, so that it need not download.

    Debian re-compressed the files, so the .gz checksums torchvision knows do not apply;
    ``_check_idx_files`` checks the content (magic numbers, sizes).
    """
    for filename, _ in FashionMNIST.resources:
        source = DEBIAN_FASHION_MNIST_DIR / filename
        target = raw / filename.removesuffix(".gz")
        if source.is_file() and not target.exists():
            raw.mkdir(parents=True, exist_ok=True)
            # Extract beside, then rename: clients in other processes may be reading `raw`.
            with tempfile.TemporaryDirectory(dir=raw) as scratch:
                try:
                    extracted = extract_archive(str(source), scratch)
                except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
                    raise DataError(f"{source}: corrupt archive ({error})") from None
                os.replace(extracted, target)


def _normalized_images(split: FashionMNIST) -> TensorData:
    x = split.data.unsqueeze(1).float().div_(255.0).sub_(FASHION_MNIST_MEAN).div_(FASHION_MNIST_STD)
    return TensorData(x.contiguous(), split.targets.long())
