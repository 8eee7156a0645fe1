"""Every seed a run derives, in one place: from the run config's ``seed`` and ``partition-seed``.

The shards depend only on ``partition-seed`` (so multi-exit and single-exit runs of a seed see the
same shards); what a client trains in a round depends on (``seed``, round, partition), so every
round repeats exactly, and a continued run (``resume-from``) trains what the stopped one would have.
"""

from __future__ import annotations


def client_round_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Batch order and dropout of one client's local training in one round."""
    return seed * 1_000_003 + server_round * 1_009 + partition_id


def local_split_seed(partition_seed: int, partition_id: int) -> int:
    """The cut of one shard into the client's local train and test parts."""
    return partition_seed * 100_003 + partition_id


def validation_split_seed(partition_seed: int, partition_id: int) -> int:
    """The cut of one client's local train part into train and validation (tuning mode)."""
    return partition_seed + partition_id


def central_holdout_seed(partition_seed: int) -> int:
    """The stratified central test set of a task without an official one (HAR)."""
    return partition_seed


def server_round_seed(seed: int, server_round: int) -> int:
    """What the server draws in a round (HypeMeFed's hypernetworks: initialisation, pair order)."""
    return seed * 1_000_003 + server_round
