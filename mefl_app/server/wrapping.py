"""Strategies that wrap a strategy (exit-level aggregation, the methods' server steps, tracking):
a base that hands every step to the wrapped one, and the message copies they pass on."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


class WrappingStrategy(Strategy):
    """Every step goes to ``inner``; a subclass overrides the steps it changes. The inner
    strategy's attributes stay reachable through the wrapper (``wrapper.fraction_train``)."""

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)


def with_arrays(message: Message, arrays: ArrayRecord) -> Message:
    """``message`` with its ArrayRecord replaced by ``arrays``; the other records, the type, the
    addressing (sender included, which a reply's aggregation reads) and the group are kept."""
    content = RecordDict(
        {key: arrays if isinstance(record, ArrayRecord) else record for key, record in message.content.items()}
    )
    copy = Message(
        content,
        dst_node_id=message.metadata.dst_node_id,
        message_type=message.metadata.message_type,
        group_id=message.metadata.group_id,
    )
    copy.metadata.__dict__["_src_node_id"] = message.metadata.src_node_id
    return copy
