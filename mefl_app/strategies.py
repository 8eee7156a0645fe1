"""The aggregation strategy of a run, built from the run config (Flower's own classes)."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg, Strategy

from .metrics import pooled_metric_record
from .settings import RunSettings


def build_strategy(settings: RunSettings) -> Strategy:
    """FedAvg over the full multi-exit parameters (every exit head included)."""
    return FedAvg(
        fraction_train=settings.fraction_train,
        fraction_evaluate=settings.fraction_evaluate,
        min_train_nodes=min(2, settings.min_available_nodes),
        min_evaluate_nodes=min(2, settings.min_available_nodes),
        min_available_nodes=settings.min_available_nodes,
        train_metrics_aggr_fn=pooled_metric_record,
        evaluate_metrics_aggr_fn=pooled_metric_record,
    )
