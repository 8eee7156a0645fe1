"""Aggregation over clients at different exit levels: a client at level k < K sends only exits 1..k.

``ExitLevelAggregation`` wraps a strategy. While every reply carries the full model it only passes
through (any strategy works). When replies carry different subsets of the arrays, it averages
each array over the clients that sent it (weighted by their number of training examples), keeps
the previous global value of an array nobody sent, and hands the result to the wrapped strategy
as one combined reply (a strategy that says ``accepts_partial_uploads``, such as FedDyn, gets
the replies themselves) -- exact for strategies whose aggregate is a function of the weighted mean
of the replies: FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad. Order-statistic and
selection rules (FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan) and the DP wrappers (which
clip each reply) have no meaning on mixed uploads and are refused with a clear error.

It also sends each client only its part of the model once it knows the client's level (from
its first reply), so downlink bytes are counted from what was actually sent; and it returns every
aggregate in the model's own dtypes (Flower's FedAdam / FedYogi / FedAdagrad compute in float64,
which would double every later downlink of a float32 model).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from .. import metrics
from .strategies import MEAN_BASED
from .wrapping import WrappingStrategy, with_arrays


class PartialUploadError(RuntimeError):
    """The wrapped strategy cannot aggregate replies that carry different arrays."""


def average_per_array(
    uploads: Sequence[tuple[ArrayRecord, float]], previous: ArrayRecord
) -> tuple[ArrayRecord, set[str]]:
    """Each array averaged over the uploads that hold it, weighted; arrays no upload holds keep
    their previous value. Returns the result and the names that someone sent."""
    result, sent = {}, set()
    for name in previous.keys():
        holders = [(record[name].numpy(), w) for record, w in uploads if name in record and w > 0]
        old = previous[name].numpy()
        if holders:
            total = sum(w for _, w in holders)
            mean = sum(value.astype(np.float64) * (w / total) for value, w in holders)
            result[name] = Array(np.asarray(mean).astype(old.dtype))
            sent.add(name)
        else:
            result[name] = Array(old.copy())
    return ArrayRecord(result), sent


def in_dtypes_of(arrays: ArrayRecord, reference: ArrayRecord) -> ArrayRecord:
    """``arrays`` with each array cast to the dtype of the same-named array of ``reference``."""
    if all(arrays[name].dtype == reference[name].dtype for name in arrays.keys()):
        return arrays
    return ArrayRecord(
        {name: Array(arrays[name].numpy().astype(np.dtype(reference[name].dtype))) for name in arrays.keys()}
    )


class ExitLevelAggregation(WrappingStrategy):
    def __init__(self, inner: Strategy, level_keys: Mapping[int, Sequence[str]]) -> None:
        """``level_keys``: exit level -> names of the arrays a client at that level holds."""
        super().__init__(inner)
        self.level_keys = {level: list(names) for level, names in level_keys.items()}
        self.node_level: dict[int, int] = {}
        self.current: ArrayRecord | None = None

    # -- downlink: each client gets its part once its level is known -----------------------------
    def _trim(self, messages: Iterable[Message], arrays: ArrayRecord) -> list[Message]:
        trimmed = []
        for message in messages:
            level = self.node_level.get(message.metadata.dst_node_id)
            names = self.level_keys.get(level)
            if names is None or len(names) == len(arrays):
                trimmed.append(message)
                continue
            trimmed.append(with_arrays(message, ArrayRecord({n: arrays[n] for n in names})))
        return trimmed

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current = arrays
        return self._trim(self.inner.configure_train(server_round, arrays, config, grid), arrays)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._trim(self.inner.configure_evaluate(server_round, arrays, config, grid), arrays)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        self._learn_levels(replies)
        return self.inner.aggregate_evaluate(server_round, replies)

    def know_levels(self, node_levels: Mapping[int, int]) -> None:
        """Take every node's level from the census, so that round 1 already sends each client only
        the part of the model its level holds (replies keep the levels up to date)."""
        self.node_level.update(node_levels)

    def _learn_levels(self, replies: list[Message]) -> None:
        for message in replies:
            if not message.has_error():
                self.node_level[message.metadata.src_node_id] = int(
                    metrics.metric_record_of(message.content)[metrics.EXIT_LEVEL]
                )

    # -- uplink ------------------------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self._learn_levels(replies)
        ok = [m for m in replies if not m.has_error()]
        full = set(self.current.keys())
        uploads = [(next(iter(m.content.array_records.values()), ArrayRecord()), m) for m in ok]
        if getattr(self.inner, "accepts_partial_uploads", False) or all(
            set(record.keys()) == full for record, _ in uploads
        ):
            arrays, aggregate = self.inner.aggregate_train(server_round, replies)
            return (None if arrays is None else in_dtypes_of(arrays, self.current)), aggregate
        if type(self.inner) not in MEAN_BASED:
            raise PartialUploadError(
                f"strategy {type(self.inner).__name__} cannot aggregate partial uploads (clients at different exit "
                f"levels); use one of {', '.join(c.__name__ for c in MEAN_BASED)}, or give every client the "
                "deepest level"
            )
        weighted = [(record, float(metrics.metric_record_of(m.content)[metrics.NUM_EXAMPLES])) for record, m in uploads]
        averaged, sent = average_per_array(weighted, self.current)
        records = [metrics.metric_record_of(m.content) for m in ok]
        pooled = metrics.pool(metrics.scores_from_record(r) for r in records)
        trained = sum(w for _, w in weighted)
        combined = metrics.scores_record(
            -1, int(trained), pooled, **{metrics.TRAIN_LOSS: metrics.weighted_train_loss(records)}
        )
        synthetic = Message(
            RecordDict({"arrays": averaged, "metrics": combined}), dst_node_id=0, message_type=MessageType.TRAIN
        )
        arrays, aggregate = self.inner.aggregate_train(server_round, [synthetic])
        if arrays is not None:  # a server optimizer's momentum must not move arrays nobody sent
            arrays = ArrayRecord(
                {name: arrays[name] if name in sent else self.current[name] for name in self.current.keys()}
            )
            arrays = in_dtypes_of(arrays, self.current)
        if (
            aggregate is not None and metrics.AGGREGATED_PARTITIONS in aggregate
        ):  # the real clients, not the combined reply
            aggregate[metrics.AGGREGATED_PARTITIONS] = sorted(
                int(r[metrics.PARTITION_ID])
                for (record, _), r in zip(weighted, records)
                if len(record) and float(r[metrics.NUM_EXAMPLES]) > 0
            )
        return arrays, aggregate
