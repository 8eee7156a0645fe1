"""Client shards: a Dirichlet label-skew split, each shard cut into local train / test.

Variant (the one of Hsu et al., 2019, and of flwr-datasets' ``DirichletPartitioner`` with
``self_balancing=False``): for every class, draw the clients' shares from Dirichlet(alpha, ...,
alpha) and cut that class's shuffled samples at the cumulative shares; if a shard ends up with
fewer than ``min_size`` samples, draw the whole split again (up to ``max_retries`` times, then
fail). Shard sizes are therefore unbalanced, as in the study; smaller alpha, stronger skew.

Run as a module (``python -m mefl_app.partitions --help``) it writes one file per client plus a
manifest, so a real device can be handed just its own shard.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .datasets import TaskData, TensorData
from .settings import RunSettings, SettingsError

SHARD_FORMAT = "mefl-shard/1"


def dirichlet_partition(
    labels: np.ndarray,
    num_partitions: int,
    alpha: float,
    seed: int,
    min_size: int = 10,
    max_retries: int = 100,
) -> list[np.ndarray]:
    """Split sample indices into ``num_partitions`` label-skewed shards (sorted index arrays).

    Deterministic for a given (labels, num_partitions, alpha, seed, min_size). The shards are
    disjoint and together hold every index.
    """
    labels = np.asarray(labels)
    if num_partitions < 1:
        raise SettingsError(f"num-partitions must be >= 1, got {num_partitions}")
    if alpha <= 0:
        raise SettingsError(f"dirichlet-alpha must be > 0, got {alpha}")
    if num_partitions * min_size > len(labels):
        raise SettingsError(
            f"num-partitions ({num_partitions}) x min-partition-size ({min_size}) exceeds the "
            f"{len(labels)} samples to split"
        )
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(max_retries):
        shards: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for members in by_class:
            members = rng.permutation(members)
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for shard, part in zip(shards, np.split(members, cuts)):
                shard.append(part)
        result = [np.sort(np.concatenate(parts)) for parts in shards]
        if min(len(r) for r in result) >= min_size:
            return result
    raise SettingsError(
        f"no Dirichlet(alpha={alpha}) split into {num_partitions} shards gave every shard "
        f">= {min_size} samples in {max_retries} draws; lower min-partition-size or raise dirichlet-alpha"
    )


def group_partition(groups: np.ndarray) -> list[np.ndarray]:
    """One shard per distinct group id (e.g. one client per HAR subject), in id order."""
    groups = np.asarray(groups)
    return [np.flatnonzero(groups == g) for g in np.unique(groups)]


def split_train_test(indices: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random cut of one shard into local train and test (at least one of each)."""
    if len(indices) < 2:
        raise SettingsError(f"a shard of {len(indices)} sample(s) cannot be split into train and test")
    shuffled = np.random.default_rng(seed).permutation(indices)
    n_test = min(max(1, round(test_fraction * len(indices))), len(indices) - 1)
    return np.sort(shuffled[n_test:]), np.sort(shuffled[:n_test])


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
        return ClientShard(self.train.subset(train_idx), self.train.subset(val_idx), {**self.meta, "validation_fraction": fraction})


def shard_indices(data: TaskData, settings: RunSettings, num_partitions: int) -> list[np.ndarray]:
    """The run's split of the data pool, as configured (Dirichlet or one shard per subject)."""
    if settings.partition_by == "subject":
        if data.train.groups is None:
            raise SettingsError(f"partition-by='subject' needs subject ids, which task {data.name!r} has none of")
        shards = group_partition(data.train.groups.numpy())
        if len(shards) != num_partitions:
            raise SettingsError(
                f"partition-by='subject' gives {len(shards)} shards (one per subject) but the "
                f"federation has {num_partitions} partitions"
            )
        return shards
    return _dirichlet_cached(data.train.y.numpy().tobytes(), num_partitions, settings.dirichlet_alpha,
                             settings.partition_seed, settings.min_partition_size)


@functools.lru_cache(maxsize=8)
def _dirichlet_cached(label_bytes: bytes, num_partitions, alpha, seed, min_size) -> list[np.ndarray]:
    return dirichlet_partition(np.frombuffer(label_bytes, dtype=np.int64), num_partitions, alpha, seed, min_size)


def make_client_shard(data: TaskData, settings: RunSettings, partition_id: int, num_partitions: int) -> ClientShard:
    """Partition ``partition_id``'s shard, computed from the whole data pool."""
    if not 0 <= partition_id < num_partitions:
        raise SettingsError(f"partition-id must lie in 0..{num_partitions - 1}, got {partition_id}")
    indices = shard_indices(data, settings, num_partitions)[partition_id]
    train_idx, test_idx = split_train_test(indices, settings.test_fraction, seed=settings.partition_seed * 100_003 + partition_id)
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
    arrays = {"x_train": shard.train.x.numpy(), "y_train": shard.train.y.numpy(),
              "x_test": shard.test.x.numpy(), "y_test": shard.test.y.numpy(),
              "meta": np.array(json.dumps(shard.meta))}
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, path)


@functools.lru_cache(maxsize=2)
def load_shard(path: str | Path) -> ClientShard:
    """Read a shard file written by :func:`save_shard` (no pickles are loaded)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SettingsError(f"shard-file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            arrays = {k: torch.from_numpy(npz[k].copy()) for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, KeyError) as error:
        raise SettingsError(f"shard-file {path} is not a mefl shard file ({error})") from error
    if meta.get("format") != SHARD_FORMAT:
        raise SettingsError(f"shard-file {path} has format {meta.get('format')!r}, expected {SHARD_FORMAT!r}")
    return ClientShard(TensorData(arrays["x_train"], arrays["y_train"]),
                       TensorData(arrays["x_test"], arrays["y_test"]), meta)


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
        raise SettingsError(f"shard file of partition {shard.partition_id} was written for another data set: " + "; ".join(problems))


def write_shards(data: TaskData, settings: RunSettings, num_partitions: int, out_dir: Path) -> Path:
    """Write every client's shard file and ``manifest.json``; returns the manifest path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    clients = []
    for pid in range(num_partitions):
        shard = make_client_shard(data, settings, pid, num_partitions)
        name = f"client_{pid:03d}.npz"
        save_shard(shard, out_dir / name)
        clients.append({"file": name, **{k: shard.meta[k] for k in
                        ("partition_id", "num_train", "num_test", "label_counts_train", "label_counts_test")}})
    manifest = {
        "format": SHARD_FORMAT,
        "task": data.name,
        "class_names": list(data.class_names),
        "settings": {k: settings.as_run_config()[k] for k in
                     ("task", "partition-by", "dirichlet-alpha", "partition-seed", "min-partition-size", "test-fraction")},
        "num_partitions": num_partitions,
        "clients": clients,
    }
    manifest_path = out_dir / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return manifest_path


def main(argv: list[str] | None = None) -> None:
    """CLI: write the shards of a run config so that each device can be given its own file."""
    from .tasks import load_task_data  # the data loaders are only needed by the CLI

    parser = argparse.ArgumentParser(prog="python -m mefl_app.partitions", description=main.__doc__)
    parser.add_argument("--num-partitions", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for client_NNN.npz and manifest.json")
    parser.add_argument("--run-config", default="", help='overrides as for flwr run, e.g. "task=\'har\' dirichlet-alpha=0.5"')
    parser.add_argument("--app-dir", default=".", help="the app's folder, whose pyproject.toml holds the defaults")
    args = parser.parse_args(argv)
    settings = RunSettings.from_app_dir(args.app_dir, args.run_config)
    data = load_task_data(settings)
    manifest = write_shards(data, settings, args.num_partitions, args.out)
    print(f"wrote {args.num_partitions} shards and {manifest}")


if __name__ == "__main__":
    main()
