"""A Grid that trains and evaluates clients in cohorts (``cohort-size`` > 1, ``mefl_app/cohort.py``).

The strategy, exit-level aggregation and tracking go on sending one train or evaluate message per
client and getting one reply per client. ``CohortGrid`` sits between them and Flower's grid: it
groups the round's train (evaluate) messages by the clients' exit levels (from the census), sends
each group of up to ``cohort_size`` as ONE ``train.cohort`` (``evaluate.cohort``) message to the
group's first node, whose ClientApp trains every partition of the group at once (scores each one's
model in turn), and splits the combined reply back into one reply per client, addressed from that
client's node. So a round sends about as many messages at 500 clients as at 24, and bytes, metrics
and aggregation read exactly as with per-client messages (the simulation's accounting is per
client, as a real deployment would send it); query messages pass through unchanged.

The host node loads the other partitions' shards from ``partition-id`` (the simulation's shards);
a deployment, where each device holds only its own data, keeps ``cohort-size`` at 0.

``cohort-size = -1`` lets the device decide (``auto_cohort_size``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import ConfigRecord, Error, Message, MessageType, Metadata, RecordDict
from flwr.serverapp import Grid

from .. import metrics
from .census import NUM_TRAIN
from .wrapping import WrappingGrid

AUTO_COHORT_SIZE = -1  # cohort-size = -1: picked from the device
GPU_MEMORY_SHARE = 0.5  # of the GPU's free memory, what one cohort's training may take
# On a CPU (benchmarks/RESULTS.md): 24 clients are fastest in cohorts of 4 (app_vs_plain.py), and
# a large federation in cohorts that keep a round at about 24 messages (federation_size.py).
CPU_COHORT = 4
CPU_MESSAGES = 24  # a round's train (and evaluate) messages in cohorts on a CPU
COHORT_ACTION = "cohort"  # the ClientApp's ``@app.train("cohort")`` and ``@app.evaluate("cohort")``
BATCHED = (MessageType.TRAIN, MessageType.EVALUATE)
PARTITIONS_KEY = "cohort-partitions"


def arrays_key(index: int) -> str:
    return f"arrays.{index}"


def metrics_key(index: int) -> str:
    return f"metrics.{index}"


def auto_cohort_size(
    device: str, per_client_mb: float, free_mb: float, largest_group: int, clients: int
) -> tuple[int, str]:
    """(cohort size, why) for ``cohort-size = -1``, as measured on this project's machines
    (benchmarks/RESULTS.md). On a CPU, cohorts of ``CPU_COHORT`` clients, or more in a large
    federation so that a round sends about ``CPU_MESSAGES`` messages (Flower's per-message cost
    grows with the clients), never more than the biggest exit-level group. On a GPU, whose small
    steps wait on kernel launches, the largest cohort -- up to the biggest exit-level group --
    whose clients' training steps and shards (``per_client_mb`` each) fit in ``GPU_MEMORY_SHARE``
    of the ``free_mb`` free."""
    if device != "cuda":
        size = min(largest_group, max(CPU_COHORT, math.ceil(clients / CPU_MESSAGES)))
        if size < 2:
            return 0, f"one client at a time on the {device}: no two clients share an exit level"
        return (
            size,
            f"cohorts of up to {size} clients on the {device} "
            f"({clients} clients, largest exit-level group {largest_group})",
        )
    size = min(largest_group, int(GPU_MEMORY_SHARE * free_mb // per_client_mb)) if per_client_mb > 0 else largest_group
    memory = f"{per_client_mb:.0f} MB a client's step and shard, {free_mb:.0f} MB free"
    if size < 2:
        return 0, f"one client at a time: {memory}"
    return size, f"cohorts of up to {size} clients ({memory}, largest exit-level group {largest_group})"


class CohortGrid(WrappingGrid):
    """``census``: node id -> its census answer (partition id, exit level)."""

    def __init__(self, grid: Grid, cohort_size: int, census: Mapping[int, Mapping[str, Any]]) -> None:
        super().__init__(grid)
        self.cohort_size = cohort_size
        self.partition_of = {node: int(answer[metrics.PARTITION_ID]) for node, answer in census.items()}
        self.level_of = {node: int(answer[metrics.EXIT_LEVEL]) for node, answer in census.items()}
        self.size_of = {node: int(answer.get(NUM_TRAIN, 0)) for node, answer in census.items()}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        batched = [m for m in messages if m.metadata.message_type in BATCHED]
        if self.cohort_size <= 1 or not batched:
            return self.grid.send_and_receive(messages, timeout=timeout)
        others = [m for m in messages if m.metadata.message_type not in BATCHED]
        groups: dict[tuple[str, int, tuple[str, ...]], list[Message]] = {}
        for message in batched:  # one kind and exit level per cohort, the same arrays sent to each member
            level = self.level_of[message.metadata.dst_node_id]
            key = (message.metadata.message_type, level, tuple(message.content["arrays"].keys()))
            groups.setdefault(key, []).append(message)
        cohorts: dict[tuple[int, str], list[Message]] = {}  # (host node, kind) -> the messages it stands for
        outgoing = []
        for (kind, _, _), group in groups.items():
            # Clients of similar shard sizes together, so that a cohort stays full for most of its
            # steps; ties by partition: the same cohorts, and so dropout streams, in every run.
            group.sort(key=lambda m: (self.size_of[m.metadata.dst_node_id], self.partition_of[m.metadata.dst_node_id]))
            for start in range(0, len(group), self.cohort_size):
                members = group[start : start + self.cohort_size]
                host = members[0]
                config = dict(host.content["config"].items())
                config[PARTITIONS_KEY] = [self.partition_of[m.metadata.dst_node_id] for m in members]
                content = RecordDict({"arrays": host.content["arrays"], "config": ConfigRecord(config)})
                outgoing.append(
                    Message(
                        content,
                        dst_node_id=host.metadata.dst_node_id,
                        message_type=f"{kind}.{COHORT_ACTION}",
                        group_id=host.metadata.group_id,
                    )
                )
                cohorts[(host.metadata.dst_node_id, kind)] = members
        replies = []
        for reply in self.grid.send_and_receive(outgoing + others, timeout=timeout):
            kind, _, action = reply.metadata.message_type.partition(".")
            members = cohorts.get((reply.metadata.src_node_id, kind)) if action == COHORT_ACTION else None
            if members is None:
                replies.append(reply)
                continue
            replies += [self._reply_of(reply, i, m) for i, m in enumerate(members)]
        return replies

    @staticmethod
    def _reply_of(reply: Message, index: int, member: Message) -> Message:
        """The cohort reply's part for one client, as if that client's node had answered."""
        metadata = Metadata(
            run_id=reply.metadata.run_id,
            message_id=f"{reply.metadata.message_id}.{index}",
            src_node_id=member.metadata.dst_node_id,
            dst_node_id=reply.metadata.dst_node_id,
            reply_to_message_id=reply.metadata.reply_to_message_id,
            group_id=reply.metadata.group_id,
            created_at=reply.metadata.created_at or time.time(),
            ttl=reply.metadata.ttl,
            message_type=member.metadata.message_type,
        )
        if reply.has_error():
            host = reply.metadata.src_node_id
            error = Error(reply.error.code, f"in the cohort hosted by node {host}: {reply.error.reason}")
            return Message(error=error, metadata=metadata)
        content = RecordDict({"metrics": reply.content[metrics_key(index)]})
        if arrays_key(index) in reply.content:  # a train reply
            content["arrays"] = reply.content[arrays_key(index)]
        return Message(content=content, metadata=metadata)
