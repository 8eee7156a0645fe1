"""benchmarks/synthetic_fmnist.py: the Fashion-MNIST stand-in of the GPU machine's timing runs
must give the app the same shards as the real data set, i.e. keep the real labels."""

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO

from mefl_app.data.fashion_mnist import load_fashion_mnist

sys.path.insert(0, str(REPO / "benchmarks"))
from synthetic_fmnist import write  # noqa: E402


def _label_file(folder: Path, split: str, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()
    (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(data))


def test_synthetic_fashion_mnist_keeps_the_real_labels_and_loads_like_the_real_one(tmp_path):
    rng = np.random.default_rng(1)
    train, test = rng.integers(0, 10, 60_000), rng.integers(0, 10, 10_000)
    _label_file(tmp_path / "labels", "train", train)
    _label_file(tmp_path / "labels", "t10k", test)
    write(tmp_path / "labels", tmp_path / "data")
    load_fashion_mnist.cache_clear()
    try:
        data = load_fashion_mnist(tmp_path / "data")
    finally:
        load_fashion_mnist.cache_clear()
    assert torch.equal(data.train.y, torch.from_numpy(train).long())
    assert torch.equal(data.test.y, torch.from_numpy(test).long())
    assert data.train.x.shape == (60_000, 1, 28, 28) and data.train.x.std() > 0.5  # random pixels


def test_refuses_label_files_of_another_size(tmp_path):
    _label_file(tmp_path / "labels", "train", np.zeros(100))
    with pytest.raises(ValueError, match="not Fashion-MNIST's"):
        write(tmp_path / "labels", tmp_path / "data")
