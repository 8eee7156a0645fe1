"""Every data source is checked where it enters: a corrupt, truncated or inconsistent file (or an
unusable data-dir) fails at load with one line naming the file and what was expected."""

import shutil
import struct

import numpy as np
import pytest
import torch
from helpers import synthetic_task, write_idx_fashion_mnist, write_unimib_shar
from torchvision.datasets import FashionMNIST

from mefl_app.data import fashion_mnist
from mefl_app.data.fashion_mnist import load_fashion_mnist
from mefl_app.data.shards import load_shard, make_client_shard, save_shard
from mefl_app.data.tensors import DataError
from mefl_app.data.unimib_shar import load_unimib_shar
from mefl_app.settings import RunSettings


@pytest.fixture(autouse=True)
def no_debian_files(monkeypatch, tmp_path):
    """Only the files a test writes: neither Debian's package nor a download may stand in."""
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])
    load_fashion_mnist.cache_clear()
    load_shard.cache_clear()


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_one_non_finite_har_value_names_the_file_and_row(tmp_path, value):
    root = write_unimib_shar(tmp_path, n=40)
    import scipy.io

    data = scipy.io.loadmat(root / "acc_data.mat")["acc_data"]
    data[17, 200] = value
    scipy.io.savemat(root / "acc_data.mat", {"acc_data": data})
    with pytest.raises(
        DataError, match=r"acc_data.mat: 1 non-finite value\(s\) \(NaN or Inf\) in 1 window\(s\), the first in row 18"
    ):
        load_unimib_shar(root)


def _raw(root):
    return root / "FashionMNIST" / "raw"


def test_a_truncated_idx_file_is_named_as_corrupt_not_missing(tmp_path):
    root = write_idx_fashion_mnist(tmp_path / "data", n_train=50, n_test=20)
    images = _raw(root) / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: corrupt or truncated IDX file: its header promises"):
        load_fashion_mnist(root)


def test_an_idx_file_with_a_foreign_header_is_named_as_corrupt(tmp_path):
    root = write_idx_fashion_mnist(tmp_path / "data", n_train=50, n_test=20)
    labels = _raw(root) / "t10k-labels-idx1-ubyte"
    labels.write_bytes(struct.pack(">II", 1234, 20) + bytes(20))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: corrupt IDX file: expected magic number 2049"):
        load_fashion_mnist(root)


def test_idx_labels_out_of_range_name_the_file_and_sample(tmp_path):
    root = write_idx_fashion_mnist(tmp_path / "data", n_train=50, n_test=20)
    labels = _raw(root) / "train-labels-idx1-ubyte"
    content = bytearray(labels.read_bytes())
    content[8 + 3] = 200  # sample 3
    labels.write_bytes(bytes(content))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: labels must lie in 0..9, sample 3 has label 200"):
        load_fashion_mnist(root)


@pytest.mark.parametrize("where", ["under-a-file", "/proc"])
def test_a_data_dir_that_cannot_be_created_is_named(tmp_path, where):
    if where == "under-a-file":
        (tmp_path / "a-file").write_text("x")
        data_dir = tmp_path / "a-file" / "data"
    else:
        data_dir = "/proc/mefl-data"
    with pytest.raises(DataError, match=r"data-dir .* cannot be created"):
        load_fashion_mnist(data_dir)


@pytest.fixture
def shard_file(tmp_path):
    shard = make_client_shard(synthetic_task(n=120), RunSettings(min_partition_size=10), 0, 2)
    path = tmp_path / "client_000.npz"
    save_shard(shard, path)
    return shard, path


def test_a_truncated_shard_file_is_named_as_corrupt(shard_file):
    _, path = shard_file
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DataError, match=r"shard-file .*client_000.npz is corrupt or truncated"):
        load_shard(path)


@pytest.mark.parametrize(
    "fault, message",
    [
        (lambda s: s.train.y.__setitem__(0, 200), r"\(train part\): labels must lie in 0..9, sample 0 has label 200"),
        (
            lambda s: s.test.x.__setitem__((2, 0, 5, 5), float("nan")),
            r"\(test part\): 1 sample\(s\) hold NaN or Inf values, the first is sample 2",
        ),
    ],
)
def test_a_shard_with_bad_values_names_the_file_the_part_and_the_sample(shard_file, fault, message):
    shard, path = shard_file
    fault(shard)
    save_shard(shard, path)
    with pytest.raises(DataError, match=message):
        load_shard(path)


def test_a_shard_whose_inputs_do_not_match_its_metadata_is_refused(shard_file, tmp_path):
    shard, path = shard_file
    bad = type(shard)(type(shard.train)(shard.train.x[:, :, :14], shard.train.y), shard.test, shard.meta)
    save_shard(bad, path)
    with pytest.raises(DataError, match=r"train inputs have shape \(1, 14, 28\), its metadata says \(1, 28, 28\)"):
        load_shard(path)


def test_the_real_loaders_accept_good_files(tmp_path):
    root = write_idx_fashion_mnist(tmp_path / "data", n_train=50, n_test=20)
    assert len(load_fashion_mnist(root).train) == 50
    assert torch.isfinite(load_fashion_mnist(root).train.x).all()
    shutil.rmtree(_raw(root))
