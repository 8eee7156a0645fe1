"""The aggregation strategy of a run, built from the run config.

Built-in names map to Flower's own classes (``flwr.serverapp.strategy``), never re-implemented;
``strategy = "package.module:Class"`` plugs in any ``Strategy`` subclass, with keyword arguments
from ``strategy-kwargs`` (a JSON object). Flower's server-side differential-privacy wrappers can
be layered on top (``dp``). The result is wrapped by ``TrackingStrategy`` in the ServerApp.
"""

from __future__ import annotations

import importlib
import inspect
import json
from typing import Any

from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
    Strategy,
)

from ..metrics import TRAIN_LOSS, pooled_metric_record
from ..settings import RunSettings, SettingsError
from .feddyn import FedDyn
from .server_state import class_keeps_state

FLOWER_STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
    "qfedavg": QFedAvg,
}
# Methods Flower 1.42 has no strategy for, written for mefl.
MEFL_STRATEGIES: dict[str, type[Strategy]] = {"feddyn": FedDyn}
BUILTIN_STRATEGIES = {**FLOWER_STRATEGIES, **MEFL_STRATEGIES}

# RunSettings field -> keyword of Flower's strategy constructors. A strategy receives the ones
# its constructor accepts. Settings whose Flower default differs between strategies (eta,
# eta_l) use 0 for "Flower's default of the chosen strategy".
STRATEGY_PARAMETERS = {
    "proximal_mu": "proximal_mu",
    "server_learning_rate": "server_learning_rate",
    "server_momentum": "server_momentum",
    "eta": "eta",
    "eta_l": "eta_l",
    "beta_1": "beta_1",
    "beta_2": "beta_2",
    "tau": "tau",
    "trim_beta": "beta",
    "num_malicious_nodes": "num_malicious_nodes",
    "num_nodes_to_select": "num_nodes_to_select",
    "feddyn_alpha": "alpha",
    "qfedavg_q": "q",
}
FLOWER_DEFAULT_IF_ZERO = {"eta", "eta_l"}

# Strategies whose aggregate is a function of the weighted mean of the replies: exact on partial
# uploads averaged per array (clients at different exit levels, see exit_levels.py).
MEAN_BASED = (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad)


def keeps_server_state(settings: RunSettings) -> bool:
    """Whether the server holds state between rounds beside the global model (saved with each
    checkpoint for ``resume-from``): a built-in strategy's (momentum, Adam moments, FedDyn's h),
    adaptive DP clipping's, or HypeMeFed's hypernetworks."""
    strategy = BUILTIN_STRATEGIES.get(settings.strategy)
    return (
        (strategy is not None and class_keeps_state(strategy))
        or settings.dp == "adaptive"
        or settings.hypernetwork_rank > 0
    )


def resolve_strategy_class(name: str) -> type[Strategy]:
    """A built-in name or ``module:Class``; anything else fails with a one-line error."""
    if name in BUILTIN_STRATEGIES:
        return BUILTIN_STRATEGIES[name]
    if ":" not in name:
        raise SettingsError(
            f"strategy must be one of {', '.join(BUILTIN_STRATEGIES)} or an import path 'package.module:Class', "
            f"got {name!r}"
        )
    module_name, _, attribute = name.partition(":")
    try:
        candidate = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise SettingsError(f"strategy {name!r} does not resolve: {error}") from None
    if not (inspect.isclass(candidate) and issubclass(candidate, Strategy)):
        raise SettingsError(f"strategy {name!r} is not a subclass of flwr.serverapp.strategy.Strategy")
    return candidate


def strategy_kwargs(settings: RunSettings) -> dict[str, Any]:
    try:
        kwargs = json.loads(settings.strategy_kwargs or "{}")
    except json.JSONDecodeError as error:
        raise SettingsError(
            f"strategy-kwargs must be a JSON object, got {settings.strategy_kwargs!r} ({error})"
        ) from None
    if not isinstance(kwargs, dict):
        raise SettingsError(f"strategy-kwargs must be a JSON object, got {settings.strategy_kwargs!r}")
    return kwargs


def build_strategy(settings: RunSettings) -> Strategy:
    """The configured strategy, with Flower's DP wrapper around it if ``dp`` asks for one."""
    cls = resolve_strategy_class(settings.strategy)
    accepted = inspect.signature(cls).parameters
    candidates: dict[str, Any] = {
        "fraction_train": settings.fraction_train,
        "fraction_evaluate": settings.fraction_evaluate,
        "min_train_nodes": settings.min_train_nodes,
        "min_evaluate_nodes": min(settings.min_train_nodes, settings.min_available_nodes),
        "min_available_nodes": settings.min_available_nodes,
        "train_metrics_aggr_fn": pooled_metric_record,
        "evaluate_metrics_aggr_fn": pooled_metric_record,
        "train_loss_key": TRAIN_LOSS,  # QFedAvg weighs each client's step by its training loss
        "client_learning_rate": settings.learning_rate,  # QFedAvg's Lipschitz estimate L = 1 / lr
    }
    for field, keyword in STRATEGY_PARAMETERS.items():
        value = getattr(settings, field)
        if not (field in FLOWER_DEFAULT_IF_ZERO and value == 0):
            candidates[keyword] = value
    kwargs = {k: v for k, v in candidates.items() if k in accepted}
    kwargs.update(strategy_kwargs(settings))
    try:
        strategy = cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise SettingsError(f"strategy {settings.strategy!r} rejected its arguments: {error}") from None
    try:
        return wrap_differential_privacy(strategy, settings)
    except ValueError as error:  # Flower checks the DP parameters against each other
        raise SettingsError(f"dp settings rejected by Flower: {error}") from None


def wrap_differential_privacy(strategy: Strategy, settings: RunSettings) -> Strategy:
    """Flower's server-side DP (clip each update, add Gaussian noise to the aggregate)."""
    if settings.dp == "none":
        return strategy
    if settings.dp_num_sampled_clients < 1:
        raise SettingsError("dp-num-sampled-clients must be set (clients per round) when dp is on, got 0")
    if settings.dp == "fixed":
        return DifferentialPrivacyServerSideFixedClipping(
            strategy,
            noise_multiplier=settings.dp_noise_multiplier,
            clipping_norm=settings.dp_clipping_norm,
            num_sampled_clients=settings.dp_num_sampled_clients,
        )
    return DifferentialPrivacyServerSideAdaptiveClipping(
        strategy,
        noise_multiplier=settings.dp_noise_multiplier,
        num_sampled_clients=settings.dp_num_sampled_clients,
        initial_clipping_norm=settings.dp_clipping_norm,
    )


def flower_default(strategy: str, keyword: str) -> Any:
    """Flower's default for one constructor argument (used by tests and the README table)."""
    return inspect.signature(FLOWER_STRATEGIES[strategy]).parameters[keyword].default
