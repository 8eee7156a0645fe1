"""The split of a data pool into client shards: Dirichlet label skew, or one shard per group.

Variant (the one of Hsu et al., 2019, and of flwr-datasets' ``DirichletPartitioner`` with
``self_balancing=False``): for every class, draw the clients' shares from Dirichlet(alpha, ...,
alpha) and cut that class's shuffled samples at the cumulative shares; if a shard ends up with
fewer than ``min_size`` samples, draw the whole split again (up to ``max_retries`` times, then
fail). Shard sizes are therefore unbalanced, as in the study; smaller alpha, stronger skew.
"""

from __future__ import annotations

import functools

import numpy as np

from ..settings import RunSettings, SettingsError
from .tensors import TaskData


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
    return _dirichlet_cached(
        data.train.y.numpy().tobytes(),
        num_partitions,
        settings.dirichlet_alpha,
        settings.partition_seed,
        settings.min_partition_size,
    )


@functools.lru_cache(maxsize=8)
def _dirichlet_cached(label_bytes: bytes, num_partitions, alpha, seed, min_size) -> list[np.ndarray]:
    return dirichlet_partition(np.frombuffer(label_bytes, dtype=np.int64), num_partitions, alpha, seed, min_size)
