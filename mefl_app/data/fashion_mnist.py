"""Fashion-MNIST (Xiao et al., 2017): 60,000 training images to shard, 10,000 central test images."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

from torchvision.datasets import FashionMNIST
from torchvision.datasets.utils import extract_archive

from .tensors import DataUnavailableError, TaskData, TensorData

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
    try:
        _stage_debian_fashion_mnist(root)
        splits = [FashionMNIST(root, train=train, download=True) for train in (True, False)]
    except Exception as error:  # torchvision raises RuntimeError/URLError/OSError variously
        raise DataUnavailableError(
            f"Fashion-MNIST is not under {root / 'FashionMNIST' / 'raw'} and could not be downloaded "
            f"({' '.join(str(error).split())}). Either install Debian's package (`apt-get install -y "
            "dataset-fashion-mnist`, "
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
