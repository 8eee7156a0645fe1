"""Before round 1: every connected node says who it is, and a federation that cannot work stops.

The ServerApp sends each node a ``query`` message; its ClientApp loads (and so checks) its shard
and answers with its partition id, the number of partitions it was told of, its exit level and
its shard's size. A node that cannot load its shard, two nodes with the same partition, a
partition id outside ``num-partitions`` or an ``exit-profile`` that does not cover exactly the
federation's partitions fail the run here, with one line, before any training.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from logging import INFO
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from .. import metrics
from ..settings import RunSettings

NUM_PARTITIONS = "num-partitions"
LEVEL_FROM_NODE = "level-from-node"  # 1: the node's own ``exit-level`` node config set the level
NUM_TRAIN = "num-train"
NUM_TEST = "num-test"
LEVEL_CHOICE = "exit-level-choice"  # the measurement and reason of a client that chose its level (budget.py)


class FederationError(RuntimeError):
    """The connected nodes do not fit the run's settings, or one cannot load its data."""


def short_reason(reason: str) -> str:
    """The line that matters in a Flower error reason, which may wrap a remote traceback."""
    found = re.search(r"Message: (.+)", reason) or re.search(r"<class '(?:[\w]+\.)*(\w+)'>:<'(.+?)'>?$", reason, re.S)
    if found is None:
        text = reason
    elif found.re.pattern.startswith("Message"):
        text = found.group(1)
    else:
        text = f"{found.group(1)}: {found.group(2).splitlines()[0] if found.group(2).strip() else ''}"
    return " ".join(text.split())[:400]


def census_record(
    partition_id: int, num_partitions: int, level: int, level_from_node: bool, num_train: int, num_test: int
) -> MetricRecord:
    """What a node answers to the census (``level`` 0: its ``exit-profile`` entry is missing)."""
    return MetricRecord(
        {
            metrics.PARTITION_ID: partition_id,
            NUM_PARTITIONS: num_partitions,
            metrics.EXIT_LEVEL: level,
            LEVEL_FROM_NODE: int(level_from_node),
            NUM_TRAIN: num_train,
            NUM_TEST: num_test,
        }
    )


def wait_for_nodes(grid: Grid, count: int, timeout: float, poll: float = 1.0) -> list[int]:
    """The connected nodes' ids once at least ``count`` are connected (or all there are after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count or time.monotonic() >= deadline:
            return nodes
        time.sleep(poll)


def take_census(grid: Grid, settings: RunSettings, announced: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """Node id -> its census answer, checked against ``settings``; ``FederationError`` otherwise."""
    nodes = wait_for_nodes(grid, settings.min_available_nodes, settings.round_timeout)
    if len(nodes) < settings.min_available_nodes:
        raise FederationError(
            f"{len(nodes)} node(s) connected within round-timeout, "
            f"min-available-nodes is {settings.min_available_nodes}"
        )
    messages = [
        Message(RecordDict({"config": ConfigRecord(dict(announced))}), dst_node_id=node, message_type=MessageType.QUERY)
        for node in nodes
    ]
    replies = list(grid.send_and_receive(messages, timeout=settings.round_timeout))
    failed = [m for m in replies if m.has_error()]
    if failed:
        first = failed[0]
        raise FederationError(
            f"before round 1, {len(failed)} of {len(nodes)} node(s) could not start; node "
            f"{first.metadata.src_node_id}: {short_reason(first.error.reason)}"
        )
    if len(replies) < len(nodes):
        raise FederationError(f"before round 1, {len(nodes) - len(replies)} of {len(nodes)} node(s) did not answer")
    census = {m.metadata.src_node_id: {key: int(value) for key, value in m.content["census"].items()} for m in replies}
    check_federation(settings, census)
    levels = sorted((c[metrics.PARTITION_ID], c[metrics.EXIT_LEVEL]) for c in census.values())
    log(INFO, "[mefl] %d nodes ready; exit level per partition: %s", len(census), dict(levels))
    for message in replies:  # a client that chose its own level: what it measured and why
        if LEVEL_CHOICE in message.content:
            choice = dict(message.content[LEVEL_CHOICE].items())
            census[message.metadata.src_node_id][LEVEL_CHOICE] = choice
            pid = census[message.metadata.src_node_id][metrics.PARTITION_ID]
            log(INFO, "[mefl] partition %d chose its exit level: %s", pid, choice["reason"])
    return census


def check_federation(settings: RunSettings, census: Mapping[int, Mapping[str, int]]) -> None:
    """Partition ids unique and inside ``num-partitions``, and ``exit-profile`` covering exactly
    the federation's partitions (unless every node sets its own ``exit-level``)."""
    holders: dict[int, list[int]] = {}
    for node, answer in census.items():
        holders.setdefault(answer[metrics.PARTITION_ID], []).append(node)
    shared = {pid: nodes for pid, nodes in holders.items() if len(nodes) > 1}
    if shared:
        pid, nodes = min(shared.items())
        raise FederationError(f"partition {pid} is held by {len(nodes)} nodes ({', '.join(map(str, sorted(nodes)))})")
    counts = sorted({answer[NUM_PARTITIONS] for answer in census.values()})
    if len(counts) > 1:
        raise FederationError(f"the nodes disagree on num-partitions: {', '.join(map(str, counts))}")
    outside = sorted(pid for pid in holders if not 0 <= pid < counts[0])
    if outside:
        raise FederationError(f"partition id(s) {outside} outside 0..{counts[0] - 1} (num-partitions {counts[0]})")
    profiled = [a for a in census.values() if not a[LEVEL_FROM_NODE]]
    if settings.profile_levels and profiled and len(settings.profile_levels) != counts[0]:
        raise FederationError(
            f"exit-profile {settings.exit_profile!r} covers {len(settings.profile_levels)} clients, "
            f"the federation has {counts[0]} partitions: give one level per partition"
        )
