"""A strategy wrapper that measures a run and leaves every decision to the strategy it wraps.

``TrackingStrategy`` delegates every decision to the strategy it wraps (FedAvg by default, any
Flower ``Strategy`` in general) and only observes: bytes of the arrays in every message sent
and received, which clients replied, and every client's per-exit metrics -- read from ALL
replies before the inner strategy sees them, so strategies that aggregate a subset (Krum) still
leave every client's personalized accuracy on record. The one thing it changes is the order of
the replies: the inner strategy gets them sorted by partition id, because floating-point sums
depend on their order and replies arrive in whatever order clients finish -- sorted, FedAvg sums
the same arrays in the same order every time, and a seed gives the same model. A continued run
(``resume-from``) numbers its rounds from where the stopped run ended: ``round_offset`` is added
to the round that Flower's loop counts, for the inner strategy (so clients see the true round)
and the record.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from . import metrics as keys
from .results import RunRecorder
from .strategies import PooledTrainMetrics


def array_bytes(content: RecordDict) -> int:
    """Payload size of every array in a message's content."""
    return sum(len(array.data) for record in content.array_records.values() for array in record.values())


def in_partition_order(replies: list[Message]) -> list[Message]:
    """Successful replies by partition id, then the failed ones (in arrival order)."""
    def key(message: Message) -> tuple[int, int]:
        if message.has_error():
            return (1, 0)
        return (0, int(keys.metric_record_of(message.content)[keys.PARTITION_ID]))
    return sorted(replies, key=key)


class TooFewReplies(RuntimeError):
    """Fewer clients than ``min-train-replies`` answered a round: the run stops instead of
    going on with (or repeating) a model that too few clients shaped."""


class TrackingStrategy(Strategy):
    def __init__(
        self,
        inner: Strategy,
        recorder: RunRecorder,
        train_metrics: PooledTrainMetrics | None = None,
        min_train_replies: int = 1,
        round_offset: int = 0,
    ) -> None:
        self.inner = inner
        self.round_offset = round_offset
        self.recorder = recorder
        self.min_train_replies = min_train_replies
        self.train_metrics = train_metrics  # tells which replies the inner strategy aggregated
        self._sent = 0  # messages sent in the current phase

    def __getattr__(self, name: str) -> Any:  # the inner strategy's settings stay reachable
        return getattr(self.inner, name)

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        self.recorder.round_started(server_round)
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self._sent = len(messages)
        self.recorder.add_bytes(server_round, down=sum(array_bytes(m.content) for m in messages))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        replies = list(replies)
        ok = self._observe(server_round, "train", replies, "personalized")
        if len(ok) < self.min_train_replies:
            errors = [m.error.reason for m in replies if m.has_error()]
            raise TooFewReplies(
                f"round {server_round}: {len(ok)} of {self._sent} training replies succeeded, "
                f"min-train-replies is {self.min_train_replies}"
                + (f"; first error: {errors[0]}" if errors else f"; {self._sent - len(replies)} timed out or never came")
            )
        self.recorder.add_bytes(server_round, up=sum(array_bytes(m.content) for m in ok))
        records = [keys.metric_record_of(m.content) for m in ok]
        for record in records:
            self.recorder.record_partition(int(record[keys.PARTITION_ID]), {
                "num_train": int(record[keys.NUM_EXAMPLES]),
                "num_test": int(max(record[keys.EXAMPLES])),
                "label_counts_train": list(record[keys.LABEL_COUNTS]),
            })
        total = sum(float(r[keys.NUM_EXAMPLES]) for r in records)
        self.recorder.record_value(server_round, "train_loss", sum(float(r[keys.TRAIN_LOSS]) * float(r[keys.NUM_EXAMPLES]) for r in records) / total)
        by_client = lambda key: {str(int(r[keys.PARTITION_ID])): float(r[key]) for r in records}  # noqa: E731
        self.recorder.record_value(server_round, "client_train_seconds", by_client(keys.TRAIN_SECONDS))
        self.recorder.record_value(server_round, "client_train_mflops", by_client(keys.TRAIN_MFLOPS))
        self.recorder.record_value(server_round, "client_exit_levels", {k: int(v) for k, v in by_client(keys.EXIT_LEVEL).items()})
        if self.train_metrics is not None:
            self.train_metrics.last_partitions = None
        aggregated = self.inner.aggregate_train(server_round, in_partition_order(replies))
        self.recorder.record_value(
            server_round, "aggregated_partitions",
            self.train_metrics.last_partitions if self.train_metrics is not None else None)
        return aggregated

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        messages = list(self.inner.configure_evaluate(server_round, arrays, config, grid))
        self._sent = len(messages)
        self.recorder.add_bytes(server_round, down=sum(array_bytes(m.content) for m in messages))
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.round_offset
        replies = list(replies)
        self._observe(server_round, "evaluate", replies, "global_local")
        return self.inner.aggregate_evaluate(server_round, in_partition_order(replies))

    def _observe(self, server_round: int, phase: str, replies: list[Message], kind: str) -> list[Message]:
        ok = [m for m in replies if not m.has_error()]
        per_client = {}
        for message in ok:
            record = keys.metric_record_of(message.content)
            per_client[int(record[keys.PARTITION_ID])] = keys.scores_from_record(record)
        self.recorder.record_replies(
            server_round, phase, self._sent,
            ok={m.metadata.src_node_id: int(keys.metric_record_of(m.content)[keys.PARTITION_ID]) for m in ok},
            failed={m.metadata.src_node_id: m.error.reason for m in replies if m.has_error()},
        )
        self.recorder.record_scores(server_round, kind, per_client)
        return ok
