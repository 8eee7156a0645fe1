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
and the record. Each round is closed here too (recorded, checkpointed, logged) right after its
last step, the central evaluation of ``start``'s ``evaluate_fn``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from .. import metrics
from ..health import NonFiniteError, all_finite, non_finite_arrays
from .run_folder import RunRecorder
from .server_state import server_state
from .wrapping import WrappingStrategy


def array_bytes(content: RecordDict) -> int:
    """Payload size of every array in a message's content."""
    return sum(len(array.data) for record in content.array_records.values() for array in record.values())


def in_partition_order(replies: list[Message]) -> list[Message]:
    """Successful replies by partition id, then the failed ones (in arrival order)."""

    def key(message: Message) -> tuple[int, int]:
        if message.has_error():
            return (1, 0)
        return (0, int(metrics.metric_record_of(message.content)[metrics.PARTITION_ID]))

    return sorted(replies, key=key)


class TooFewReplies(RuntimeError):
    """Fewer clients than ``min-train-replies`` (or ``min-train-fraction`` of those sampled)
    answered a round: the run stops instead of going on with (or repeating) a model that too few
    clients shaped."""


class DeadWorker(RuntimeError):
    """A simulation worker (Ray actor) died. Flower 1.42's Ray backend puts a dead actor back into
    its pool and keeps sending it messages (``flwr.simulation.ray_transport.ray_actor``), and the
    actors' Ray options cannot be set from a run (no ``max_restarts``): the run stops."""


DEAD_WORKER_ERRORS = ("ActorDiedError", "RayActorError", "ActorUnavailableError")


class TrackingStrategy(WrappingStrategy):
    def __init__(
        self,
        inner: Strategy,
        recorder: RunRecorder,
        min_train_replies: int = 1,
        round_offset: int = 0,
        min_train_fraction: float = 0.0,
    ) -> None:
        super().__init__(inner)
        self.round_offset = round_offset
        self.recorder = recorder
        self.min_train_replies = min_train_replies
        self.min_train_fraction = min_train_fraction
        self._sent = 0  # messages sent in the current phase

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Flower's round loop over the wrapped strategy. ``evaluate_fn`` (central evaluation)
        returns a client-style scores record (``metrics.scores_record``); after it, the round is
        closed and the global model checkpointed."""
        last_round = num_rounds + self.round_offset

        def evaluate_and_close(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if self.round_offset and server_round == 0:
                return None  # the stopped run evaluated this model already
            server_round += self.round_offset
            scores = evaluate_fn(server_round, arrays) if evaluate_fn is not None else None
            if scores is not None:
                central = metrics.scores_from_record(scores)
                if not all_finite(central.loss):
                    raise NonFiniteError(
                        f"round {server_round}: the global model's central loss is non-finite ({central.loss})"
                    )
                self.recorder.record_central(server_round, central)
            if server_round > 0:
                self.recorder.finish_round(server_round, last_round, arrays, server_state(self.inner))
            return scores

        return super().start(
            grid=grid,
            initial_arrays=initial_arrays,
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_and_close,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        self.recorder.round_started(server_round)
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self._sent = len(messages)
        self.recorder.add_bytes(server_round, down=sum(array_bytes(m.content) for m in messages))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        replies, rejected = self._screen(server_round, "train", replies)
        ok = self._observe(server_round, "train", replies, "personalized", rejected)
        needed = max(self.min_train_replies, math.ceil(self.min_train_fraction * self._sent - 1e-9))
        trained = [m for m in ok if float(metrics.metric_record_of(m.content)[metrics.NUM_EXAMPLES]) > 0]
        if len(ok) < needed or not trained:
            errors = [m.error.reason for m in replies if m.has_error()] + list(rejected.values())
            what = (
                f"{len(ok)} of {self._sent} training replies succeeded, at least {needed} needed "
                f"(min-train-replies {self.min_train_replies}, min-train-fraction {self.min_train_fraction})"
                if len(ok) < needed
                else f"none of the {len(ok)} successful training replies trained (exclusive: no deepest-level client)"
            )
            raise TooFewReplies(
                f"round {server_round}: {what}"
                + (
                    f"; first error: {errors[0]}"
                    if errors
                    else f"; {self._sent - len(replies)} timed out or never came"
                )
            )
        self.recorder.add_bytes(server_round, up=sum(array_bytes(m.content) for m in ok))
        records = [metrics.metric_record_of(m.content) for m in ok]
        for record in records:
            self.recorder.record_partition(
                int(record[metrics.PARTITION_ID]),
                {
                    "num_train": int(record[metrics.NUM_EXAMPLES]),
                    "num_test": int(max(record[metrics.EXAMPLES])),
                    "label_counts_train": list(record[metrics.LABEL_COUNTS]),
                },
            )
        self.recorder.record_value(server_round, "train_loss", metrics.weighted_train_loss(records))
        by_client = lambda key: {str(int(r[metrics.PARTITION_ID])): float(r[key]) for r in records}  # noqa: E731
        self.recorder.record_value(server_round, "client_train_seconds", by_client(metrics.TRAIN_SECONDS))
        self.recorder.record_value(server_round, "client_train_mflops", by_client(metrics.TRAIN_MFLOPS))
        self.recorder.record_value(
            server_round, "client_exit_levels", {k: int(v) for k, v in by_client(metrics.EXIT_LEVEL).items()}
        )
        arrays, aggregate = self.inner.aggregate_train(server_round, replies)
        if arrays is not None and (bad := non_finite_arrays(arrays)):
            raise NonFiniteError(
                f"round {server_round}: the aggregated model has non-finite arrays ({', '.join(bad[:3])})"
            )
        # Which replies the strategy aggregated, as its train_metrics_aggr_fn reports it (None: unknown).
        aggregated = aggregate.get(metrics.AGGREGATED_PARTITIONS) if aggregate is not None else None
        self.recorder.record_value(
            server_round, "aggregated_partitions", None if aggregated is None else list(aggregated)
        )
        return arrays, aggregate

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        messages = list(self.inner.configure_evaluate(server_round, arrays, config, grid))
        self._sent = len(messages)
        self.recorder.add_bytes(server_round, down=sum(array_bytes(m.content) for m in messages))
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.round_offset
        replies, rejected = self._screen(server_round, "evaluate", replies)
        self._observe(server_round, "evaluate", replies, "global_local", rejected)
        return self.inner.aggregate_evaluate(server_round, replies)

    def _screen(
        self, server_round: int, phase: str, replies: Iterable[Message]
    ) -> tuple[list[Message], dict[int, str]]:
        """The replies in partition order (float sums in one order: a seed repeats to the bit),
        without uploads holding non-finite arrays, which are returned as node id -> reason; stops
        the run when a simulation worker died."""
        replies = in_partition_order(list(replies))
        for message in replies:
            if message.has_error() and any(name in message.error.reason for name in DEAD_WORKER_ERRORS):
                raise DeadWorker(
                    f"round {server_round} {phase}: the simulation worker serving node {message.metadata.src_node_id} "
                    f"died ({' '.join(message.error.reason.split())[:300]}); Flower's Ray backend cannot restart it "
                    "and would keep sending to it"
                )
        rejected = {}
        for message in replies:
            if not message.has_error():
                bad = [name for record in message.content.array_records.values() for name in non_finite_arrays(record)]
                if bad:
                    rejected[message.metadata.src_node_id] = f"non-finite arrays in the upload ({', '.join(bad[:3])})"
        return [m for m in replies if m.has_error() or m.metadata.src_node_id not in rejected], rejected

    def _observe(
        self, server_round: int, phase: str, replies: list[Message], kind: str, rejected: dict[int, str]
    ) -> list[Message]:
        ok = [m for m in replies if not m.has_error()]
        per_client = {}
        for message in ok:
            record = metrics.metric_record_of(message.content)
            per_client[int(record[metrics.PARTITION_ID])] = metrics.scores_from_record(record)
        self.recorder.record_replies(
            server_round,
            phase,
            self._sent,
            ok={m.metadata.src_node_id: int(metrics.metric_record_of(m.content)[metrics.PARTITION_ID]) for m in ok},
            failed={**{m.metadata.src_node_id: m.error.reason for m in replies if m.has_error()}, **rejected},
        )
        self.recorder.record_scores(server_round, kind, per_client)
        if kind == "global_local" and per_client:
            pooled = metrics.pool(per_client.values())
            if not all_finite(pooled.loss):
                raise NonFiniteError(
                    f"round {server_round}: the global model's loss on the clients' data is non-finite ({pooled.loss})"
                )
        return ok
