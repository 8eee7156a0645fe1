"""Fashion-MNIST with the real labels and random pixels, for timing runs only.

The GPU machine (benchmarks/gpu_run.sh) receives at most 64 MiB of files and has no internet;
the real images (26 MB compressed) do not fit beside the repository and Flower's wheels. Time per
round depends on the shard sizes (set by the labels through the Dirichlet split) and the tensor
shapes, not on the pixel values, so real labels plus seeded random pixels give the same work as
the real data set. Accuracies of runs on these files mean nothing.

    python benchmarks/synthetic_fmnist.py --labels /usr/share/datasets/fashion-mnist --out /tmp/fmnist

writes ``<out>/FashionMNIST/raw/`` as torchvision expects it (the four uncompressed IDX files).
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np

SPLITS = {"train": 60_000, "t10k": 10_000}


def read_labels(folder: Path, split: str) -> bytes:
    """The IDX label file of ``split``, from its .gz or uncompressed copy in ``folder``."""
    name = f"{split}-labels-idx1-ubyte"
    if (folder / name).exists():
        return (folder / name).read_bytes()
    return gzip.decompress((folder / f"{name}.gz").read_bytes())


def write(labels_dir: Path, out: Path, seed: int = 0) -> Path:
    raw = out / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, count in SPLITS.items():
        labels = read_labels(labels_dir, split)
        magic, n = struct.unpack(">II", labels[:8])
        if magic != 2049 or n != count:
            raise ValueError(f"{labels_dir}: {split} labels are not Fashion-MNIST's (magic {magic}, {n} items)")
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(labels)
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes())
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--labels", type=Path, required=True, help="folder with the real *-labels-idx1-ubyte[.gz] files"
    )
    parser.add_argument("--out", type=Path, required=True, help="data-dir to write (FashionMNIST/raw/ inside)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote {write(args.labels, args.out, args.seed)}")


if __name__ == "__main__":
    main()
