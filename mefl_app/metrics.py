"""The per-exit metrics a client sends back, and how the server pools them.

Replies carry raw per-exit counts (correct predictions, summed loss, number of examples), not
ratios, so that pooling over clients is exact: pooled accuracy = sum correct / sum examples.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from flwr.app import MetricRecord, RecordDict

from .training import ExitScores

NUM_EXAMPLES = "num-examples"  # the key Flower's strategies weight by (local train size)
PARTITION_ID = "partition-id"
CORRECT = "correct"  # list, one entry per exit
LOSS_SUM = "loss-sum"  # list, one entry per exit
TEST_EXAMPLES = "test-examples"
TRAIN_LOSS = "train-loss"
TRAIN_SECONDS = "train-seconds"
LABEL_COUNTS = "label-counts"


def scores_record(partition_id: int, num_examples: int, scores: ExitScores, **extra: Any) -> MetricRecord:
    """One client's reply metrics: per-exit counts on its local test part plus ``extra``."""
    return MetricRecord({
        NUM_EXAMPLES: num_examples,
        PARTITION_ID: partition_id,
        TEST_EXAMPLES: scores.total,
        CORRECT: list(scores.correct),
        LOSS_SUM: list(scores.loss_sum),
        **extra,
    })


def scores_from_record(record: MetricRecord) -> ExitScores:
    return ExitScores(list(record[CORRECT]), list(record[LOSS_SUM]), int(record[TEST_EXAMPLES]))


def metric_record_of(content: RecordDict) -> MetricRecord:
    return next(iter(content.metric_records.values()))


def pool(scores: Iterable[ExitScores]) -> ExitScores:
    scores = list(scores)
    exits = len(scores[0].correct)
    return ExitScores(
        [sum(s.correct[e] for s in scores) for e in range(exits)],
        [sum(s.loss_sum[e] for s in scores) for e in range(exits)],
        sum(s.total for s in scores),
    )


def summarize_exits(per_client: dict[int, ExitScores], exit_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per exit: pooled accuracy and loss, and the spread of the clients' own accuracies."""
    pooled = pool(per_client.values())
    summary = {}
    for e, name in enumerate(exit_names):
        accuracies = {pid: s.accuracy[e] for pid, s in sorted(per_client.items())}
        values = list(accuracies.values())
        summary[name] = {
            "accuracy": pooled.accuracy[e],
            "loss": pooled.loss[e],
            "client_accuracy": {
                "mean": statistics.fmean(values),
                "std": statistics.pstdev(values),
                "min": min(values),
                "max": max(values),
            },
            "per_client": {str(pid): acc for pid, acc in accuracies.items()},
        }
    return summary


def pooled_metric_record(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """A ``*_metrics_aggr_fn`` for Flower strategies: exact pooled per-exit accuracy and loss
    (instead of Flower's default weighted mean of every key, partition ids included)."""
    metrics = [metric_record_of(r) for r in records]
    pooled = pool(scores_from_record(m) for m in metrics)
    result = MetricRecord({"accuracy": pooled.accuracy, "loss": pooled.loss})
    if all(TRAIN_LOSS in m for m in metrics):
        weights = [float(m[weighted_by_key]) for m in metrics]
        result[TRAIN_LOSS] = sum(w * float(m[TRAIN_LOSS]) for w, m in zip(weights, metrics)) / sum(weights)
    return result
