import gzip
from pathlib import Path

import pytest
import torch
from helpers import write_idx_fashion_mnist
from torchvision.datasets import FashionMNIST

from mefl_app.data import fashion_mnist
from mefl_app.data.fashion_mnist import load_fashion_mnist
from mefl_app.data.tensors import DataError


@pytest.fixture(autouse=True)
def _fresh_cache():
    load_fashion_mnist.cache_clear()
    yield
    load_fashion_mnist.cache_clear()


def test_idx_files_under_data_dir_load_as_normalized_tensors(tmp_path):
    write_idx_fashion_mnist(tmp_path, n_train=50, n_test=20)
    data = load_fashion_mnist(tmp_path)
    assert data.train.x.shape == (50, 1, 28, 28) and data.train.x.dtype == torch.float32
    assert data.test.y.shape == (20,) and data.test.y.dtype == torch.int64
    assert data.num_classes == 10 and data.input_shape == (1, 28, 28)
    assert load_fashion_mnist(tmp_path) is data  # loaded once per process


@pytest.mark.skipif(
    not fashion_mnist.DEBIAN_FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist not installed"
)
def test_debian_package_files_are_used_without_download(tmp_path, monkeypatch):
    monkeypatch.setattr(FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])  # any download would fail
    data = load_fashion_mnist(tmp_path)
    assert (len(data.train), len(data.test)) == (60_000, 10_000)
    assert data.train.y.bincount().tolist() == [6000] * 10
    assert abs(data.train.x.mean().item()) < 0.01 and abs(data.train.x.std().item() - 1) < 0.01


def test_no_files_and_no_download_fails_with_both_remedies(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(DataError) as error:
        load_fashion_mnist(tmp_path / "data")
    message = str(error.value)
    assert "apt-get install -y dataset-fashion-mnist" in message and "internet" in message
    assert "\n" not in message


def test_file_names_and_classes_are_torchvisions():
    assert fashion_mnist.RAW_FOLDER.parts == ("FashionMNIST", "raw")  # FashionMNIST(root).raw_folder
    assert [f"{name}.gz" for name in fashion_mnist.IDX_NAMES] == [name for name, _ in FashionMNIST.resources]
    assert fashion_mnist.CLASSES == tuple(FashionMNIST.classes)


def test_a_download_lands_where_the_files_are_read(tmp_path, monkeypatch):
    """torchvision's download (stood in for here by writing the files it would) is read back."""
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(FashionMNIST, "download", lambda self: write_idx_fashion_mnist(Path(self.root), 30, 10))
    data = load_fashion_mnist(tmp_path / "data")
    assert (len(data.train), len(data.test)) == (30, 10)
    assert data.class_names == tuple(FashionMNIST.classes)


def test_debian_style_archives_are_decompressed_where_they_are_read(tmp_path, monkeypatch):
    raw = write_idx_fashion_mnist(tmp_path / "written", n_train=40, n_test=10) / "FashionMNIST" / "raw"
    debian = tmp_path / "debian"
    debian.mkdir()
    for path in raw.iterdir():
        (debian / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST_DIR", debian)
    data = load_fashion_mnist(tmp_path / "data")
    assert (len(data.train), len(data.test)) == (40, 10)
    assert sorted(p.name for p in (tmp_path / "data" / "FashionMNIST" / "raw").iterdir()) == sorted(
        p.name for p in raw.iterdir()
    )


def test_a_corrupt_debian_archive_is_named(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    debian.mkdir()
    (debian / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST_DIR", debian)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: corrupt archive"):
        load_fashion_mnist(tmp_path / "data")
