"""Client shards: what one client holds (its local train and test parts), and shard files.

A shard is computed from the whole data pool in simulation, or read from a shard file on a real
device that holds only its own data (``mefl shards`` writes one ``.npz`` per client plus a
manifest).
"""

from __future__ import annotations

import functools
import json
import shutil
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import write_atomically
from ..seeds import local_split_seed
from ..settings import RunSettings, SettingsError
from .partition import shard_indices, split_train_test
from .tensors import DataError, TaskData, TensorData, check_tensor_data

SHARD_FORMAT = "mefl-shard/1"


@dataclass(frozen=True)
class ClientShard:
    """What one client holds: its local train and test parts plus where they came from."""

    train: TensorData
    test: TensorData
    meta: dict[str, Any]

    @property
    def partition_id(self) -> int:
        return int(self.meta["partition_id"])

    def validation_view(self, fraction: float, seed: int) -> ClientShard:
        """For tuning: train on the rest of the local train part and score on ``fraction`` of
        it, so that neither the local test part nor the central test set informs a choice."""
        train_idx, val_idx = split_train_test(np.arange(len(self.train)), fraction, seed)
        return ClientShard(
            self.train.subset(train_idx), self.train.subset(val_idx), {**self.meta, "validation_fraction": fraction}
        )


def make_client_shard(data: TaskData, settings: RunSettings, partition_id: int, num_partitions: int) -> ClientShard:
    """Partition ``partition_id``'s shard, computed from the whole data pool."""
    if not 0 <= partition_id < num_partitions:
        raise SettingsError(f"partition-id must lie in 0..{num_partitions - 1}, got {partition_id}")
    indices = shard_indices(data, settings, num_partitions)[partition_id]
    train_idx, test_idx = split_train_test(
        indices, settings.test_fraction, seed=local_split_seed(settings.partition_seed, partition_id)
    )
    train, test = data.train.subset(train_idx), data.train.subset(test_idx)
    meta = {
        "format": SHARD_FORMAT,
        "task": data.name,
        "class_names": list(data.class_names),
        "input_shape": list(data.input_shape),
        "partition_id": partition_id,
        "num_partitions": num_partitions,
        "partition_by": settings.partition_by,
        "dirichlet_alpha": settings.dirichlet_alpha,
        "partition_seed": settings.partition_seed,
        "min_partition_size": settings.min_partition_size,
        "test_fraction": settings.test_fraction,
        "num_train": len(train),
        "num_test": len(test),
        "label_counts_train": label_counts(train.y, data.num_classes),
        "label_counts_test": label_counts(test.y, data.num_classes),
    }
    return ClientShard(train, test, meta)


def label_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(labels, minlength=num_classes).tolist()


def save_shard(shard: ClientShard, path: Path) -> None:
    """One client's shard as a plain ``.npz`` (arrays plus a JSON metadata string)."""
    arrays = {
        "x_train": shard.train.x.numpy(),
        "y_train": shard.train.y.numpy(),
        "x_test": shard.test.x.numpy(),
        "y_test": shard.test.y.numpy(),
        "meta": np.array(json.dumps(shard.meta)),
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    write_atomically(path, write)


@functools.lru_cache(maxsize=2)
def load_shard(path: str | Path) -> ClientShard:
    """Read a shard file written by :func:`save_shard` (no pickles are loaded), and check that
    it holds what its metadata says: shapes, finite inputs, labels in range."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SettingsError(f"shard-file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            arrays = {k: torch.from_numpy(npz[k].copy()) for k in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as error:
        raise DataError(f"shard-file {path} is not a mefl shard file (no {error} inside)") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"shard-file {path} is corrupt or truncated ({' '.join(str(error).split())})") from None
    if meta.get("format") != SHARD_FORMAT:
        raise DataError(f"shard-file {path} has format {meta.get('format')!r}, expected {SHARD_FORMAT!r}")
    shard = ClientShard(
        TensorData(arrays["x_train"], arrays["y_train"]), TensorData(arrays["x_test"], arrays["y_test"]), meta
    )
    for part, data in (("train", shard.train), ("test", shard.test)):
        if tuple(data.x.shape[1:]) != tuple(meta["input_shape"]):
            raise DataError(
                f"shard-file {path}: {part} inputs have shape {tuple(data.x.shape[1:])}, "
                f"its metadata says {tuple(meta['input_shape'])}"
            )
        check_tensor_data(data, f"shard-file {path} ({part} part)", len(meta["class_names"]))
    return shard


def check_shard_matches(shard: ClientShard, settings: RunSettings, num_classes: int, input_shape) -> None:
    """Refuse a shard written for another data set than the one this run's model is built for."""
    problems = []
    if shard.meta["task"] != settings.task:
        problems.append(f"task {shard.meta['task']!r} (run: {settings.task!r})")
    if len(shard.meta["class_names"]) != num_classes:
        problems.append(f"{len(shard.meta['class_names'])} classes (run: {num_classes})")
    if tuple(shard.meta["input_shape"]) != tuple(input_shape):
        problems.append(f"input shape {tuple(shard.meta['input_shape'])} (run: {tuple(input_shape)})")
    if problems:
        raise SettingsError(
            f"shard file of partition {shard.partition_id} was written for another data set: " + "; ".join(problems)
        )


def write_shards(data: TaskData, settings: RunSettings, num_partitions: int, out_dir: Path) -> Path:
    """Write every client's shard file and ``manifest.json`` into a new folder ``out_dir``, whole
    or not at all (written beside it, then renamed); returns the manifest path."""
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SettingsError(f"{out_dir} exists and is not empty: remove it or choose another folder")
    shards = [make_client_shard(data, settings, pid, num_partitions) for pid in range(num_partitions)]
    work = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    clients = []
    for pid, shard in enumerate(shards):
        name = f"client_{pid:03d}.npz"
        save_shard(shard, work / name)
        clients.append(
            {
                "file": name,
                **{
                    k: shard.meta[k]
                    for k in ("partition_id", "num_train", "num_test", "label_counts_train", "label_counts_test")
                },
            }
        )
    manifest = {
        "format": SHARD_FORMAT,
        "task": data.name,
        "class_names": list(data.class_names),
        "settings": {
            k: settings.as_run_config()[k]
            for k in (
                "task",
                "partition-by",
                "dirichlet-alpha",
                "partition-seed",
                "min-partition-size",
                "test-fraction",
            )
        },
        "num_partitions": num_partitions,
        "clients": clients,
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if out_dir.exists():
        out_dir.rmdir()  # empty, checked above
    work.rename(out_dir)
    return out_dir / "manifest.json"
