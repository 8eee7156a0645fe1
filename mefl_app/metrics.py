"""The per-exit metrics a client sends back, and how the server pools them.

Replies carry raw per-exit counts (correct predictions, summed loss, number of examples), not
ratios, so that pooling over clients is exact: pooled accuracy = sum correct / sum examples.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flwr.app import MetricRecord, RecordDict


@dataclass(frozen=True)
class ExitScores:
    """Per-exit counts on one data part; sums pool exactly across clients.

    ``examples[e]`` is 0 for an exit the client's model does not have (a client at exit level
    k < K). ``early_correct`` / ``early_mflops`` hold, per confidence threshold, the correct
    predictions and the summed forward MFLOPs of the early-exit policy (empty when not asked);
    ``ensemble_correct`` the correct predictions of the average of the exits' softmax (the
    ensemble of a client's exits, as DepthFL reports it).
    """

    correct: list[int]
    loss_sum: list[float]
    examples: list[int]
    early_correct: list[int] = field(default_factory=list)
    early_mflops: list[float] = field(default_factory=list)
    ensemble_correct: int = 0

    @property
    def total(self) -> int:
        return max(self.examples, default=0)

    @property
    def accuracy(self) -> list[float | None]:
        return [c / n if n else None for c, n in zip(self.correct, self.examples)]

    @property
    def loss(self) -> list[float | None]:
        return [s / n if n else None for s, n in zip(self.loss_sum, self.examples)]

    @property
    def ensemble_accuracy(self) -> float | None:
        return self.ensemble_correct / self.total if self.total else None

    @property
    def early_accuracy(self) -> list[float]:
        return [c / self.total for c in self.early_correct] if self.total else []

    @property
    def early_average_mflops(self) -> list[float]:
        return [m / self.total for m in self.early_mflops] if self.total else []


NUM_EXAMPLES = "num-examples"  # the key Flower's strategies weight by (local train size)
PARTITION_ID = "partition-id"
CORRECT = "correct"  # list, one entry per exit of the client's model
LOSS_SUM = "loss-sum"  # list, one entry per exit
EXAMPLES = "examples"  # list, one entry per exit: examples scored at that exit
EARLY_CORRECT = "early-correct"  # list, one entry per early-exit threshold
EARLY_MFLOPS = "early-mflops"  # list, one entry per threshold: summed forward MFLOPs
ENSEMBLE_CORRECT = "ensemble-correct"  # correct predictions of the exits' averaged softmax
TRAIN_LOSS = "train-loss"
TRAIN_SECONDS = "train-seconds"
TRAIN_MFLOPS = "train-mflops"  # the round's local training compute (forward + backward)
EXIT_LEVEL = "exit-level"  # how many exits the client's model has
LABEL_COUNTS = "label-counts"
AGGREGATED_PARTITIONS = "aggregated-partitions"  # in a round's aggregate: whose updates it holds


def scores_record(partition_id: int, num_examples: int, scores: ExitScores, **extra: Any) -> MetricRecord:
    """One client's reply metrics: per-exit counts on its local test part plus ``extra``."""
    return MetricRecord(
        {
            NUM_EXAMPLES: num_examples,
            PARTITION_ID: partition_id,
            EXIT_LEVEL: len(scores.correct),
            CORRECT: list(scores.correct),
            LOSS_SUM: list(scores.loss_sum),
            EXAMPLES: list(scores.examples),
            EARLY_CORRECT: list(scores.early_correct),
            EARLY_MFLOPS: list(scores.early_mflops),
            ENSEMBLE_CORRECT: scores.ensemble_correct,
            **extra,
        }
    )


def scores_from_record(record: MetricRecord) -> ExitScores:
    return ExitScores(
        list(record[CORRECT]),
        list(record[LOSS_SUM]),
        list(record[EXAMPLES]),
        list(record[EARLY_CORRECT]),
        list(record[EARLY_MFLOPS]),
        int(record[ENSEMBLE_CORRECT]),
    )


def metric_record_of(content: RecordDict) -> MetricRecord:
    return next(iter(content.metric_records.values()))


def pool(scores: Iterable[ExitScores]) -> ExitScores:
    """Sum the counts of several clients; a client without exit e adds nothing to it."""
    scores = list(scores)
    exits = max(len(s.correct) for s in scores)

    def summed(values: Callable[[ExitScores], list], length: int) -> list:
        return [sum(v[i] for v in map(values, scores) if i < len(v)) for i in range(length)]

    thresholds = max(len(s.early_correct) for s in scores)
    return ExitScores(
        summed(lambda s: s.correct, exits),
        summed(lambda s: s.loss_sum, exits),
        summed(lambda s: s.examples, exits),
        summed(lambda s: s.early_correct, thresholds),
        summed(lambda s: s.early_mflops, thresholds),
        sum(s.ensemble_correct for s in scores),
    )


def summarize_exits(per_client: dict[int, ExitScores], exit_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per exit: pooled accuracy and loss, and the spread of the accuracies of the clients
    whose model has that exit. Exits no client has are left out."""
    pooled = pool(per_client.values())
    summary = {}
    for e, name in enumerate(exit_names):
        accuracies = {
            pid: s.accuracy[e] for pid, s in sorted(per_client.items()) if e < len(s.examples) and s.examples[e]
        }
        if not accuracies:
            continue
        values = list(accuracies.values())
        summary[name] = {
            "accuracy": pooled.accuracy[e],
            "loss": pooled.loss[e],
            "clients": len(values),
            "client_accuracy": {
                "mean": statistics.fmean(values),
                "std": statistics.pstdev(values),
                "min": min(values),
                "max": max(values),
            },
            "per_client": {str(pid): acc for pid, acc in accuracies.items()},
        }
    return summary


def weighted_train_loss(records: Sequence[MetricRecord], weight_key: str = NUM_EXAMPLES) -> float:
    """The clients' training losses averaged with their weights (training examples); 0 if none trained."""
    total = sum(float(r[weight_key]) for r in records)
    return sum(float(r[TRAIN_LOSS]) * float(r[weight_key]) for r in records) / total if total else 0.0


def pooled_metric_record(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """A ``*_metrics_aggr_fn`` for Flower strategies: exact pooled per-exit accuracy and loss
    (instead of Flower's default weighted mean of every key, partition ids included), the
    weighted training loss, and which partitions' replies the strategy aggregated (Krum and
    friends aggregate a subset)."""
    metrics = [metric_record_of(r) for r in records]
    pooled = pool(scores_from_record(m) for m in metrics)
    result = MetricRecord({"accuracy": [a or 0.0 for a in pooled.accuracy], "loss": [l or 0.0 for l in pooled.loss]})
    if all(TRAIN_LOSS in m for m in metrics):
        result[TRAIN_LOSS] = weighted_train_loss(metrics, weighted_by_key)
        result[AGGREGATED_PARTITIONS] = sorted(int(m[PARTITION_ID]) for m in metrics)
    return result
