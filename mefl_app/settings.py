"""Typed, validated view of the run config (``[tool.flwr.app.config]`` plus overrides).

Flower hands the run config over as a plain dict and does not coerce values, so every setting
is cast and checked here, once, with a one-line error that names the setting. The ServerApp
validates before round 1, so a bad value never costs a training round.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .model.exits import check_exit_positions

TASKS = ("fmnist", "har")
NORMS = ("batch", "group")
TEACHERS = ("last", "next", "mutual", "last-additive")
DEVICES = ("auto", "cpu", "cuda")
PARTITION_BY = ("dirichlet", "subject")
HAR_SUBSETS = ("acc", "adl", "fall")
DP_MODES = ("none", "fixed", "adaptive")
EXIT_TRAINING = ("partial", "exclusive", "own-exit")
DEFAULT_EXITS = {"fmnist": "1,3,5", "har": "1,2,3"}
DEPTH = {"fmnist": 5, "har": 3}  # residual blocks / LSTM layers
DEFAULT_TARGET = {"fmnist": 0.75, "har": 0.5}  # the study's rounds-to-target thresholds
AUTO_LEVEL = 0  # an exit level the client picks from its budget (exit-level = "auto", budget.py)


# A method is a preset of settings (docs/methods.md): it fills every key a run leaves at its default.
METHODS: dict[str, dict[str, Any]] = {
    "study": {},  # Shin & Ko: CE at every exit + distillation from the deepest exit, FedAvg
    "exclusive": {"exit-training": "exclusive"},  # only the clients that hold the whole model train
    # DepthFL (Kim et al., ICLR 2023): mutual self-distillation at temperature 1 with its ramp, FedDyn
    "depthfl": {
        "distill-teacher": "mutual",
        "distill-weight": 1.0,
        "distill-temperature": 1.0,
        "distill-ramp": 0.3,
        "strategy": "feddyn",
    },
    # HypeMeFed (Shin et al., 2024): hypernetworks fill the deeper layers of the clients that could
    # not train them, before aggregation; the plain sum of cross-entropies (C = 0)
    "hypemefed": {"distill-weight": 0.0, "hypernetwork-rank": 100},
    # InclusiveFL (Liu et al., KDD 2022): each client trains only its own last exit, and the server
    # blends a shallower level's top-layer update with the deeper level's (momentum distillation)
    "inclusivefl": {"exit-training": "own-exit", "distill-weight": 0.0, "momentum-distillation": 0.2},
    # ScaleFL's depth part (Ilhan et al., CVPR 2023): exits weighted by depth, distillation from the
    # local deepest exit added to the labels' loss after a warm-up of a quarter of the rounds
    "scalefl": {
        "distill-teacher": "last-additive",
        "distill-weight": 0.05,
        "distill-temperature": 3.0,
        "distill-warmup": 0.25,
        "exit-loss-weights": "depth",
    },
}
# Strategies whose aggregate is no function of the weighted mean of the replies (order statistics,
# selection, QFedAvg's loss-dependent steps): meaningless on the partial uploads of clients at
# different exit levels (and so are the DP wrappers).
NOT_MEAN_BASED_STRATEGIES = ("fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan", "qfedavg")


class SettingsError(ValueError):
    """A run-config value that cannot work; the message names the setting."""


@dataclass(frozen=True)
class RunSettings:
    """Every knob of a run. Field ``foo_bar`` is run-config key ``foo-bar``."""

    task: str = "fmnist"
    data_dir: str = "~/.cache/mefl/data"
    output_dir: str = "outputs"
    resume_from: str = ""
    client_state_dir: str = ""
    har_subset: str = "acc"
    # federation
    num_server_rounds: int = 50
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_train_nodes: int = 2
    min_available_nodes: int = 2
    min_train_replies: int = 1
    min_train_fraction: float = 0.5
    round_timeout: float = 3600.0
    reply_poll_seconds: float = 0.2
    target_accuracy: float = 0.0
    # strategy (see strategies.py): Flower's defaults; 0 for eta / eta-l = the strategy's own
    strategy: str = "fedavg"
    strategy_kwargs: str = "{}"
    proximal_mu: float = 0.0
    server_learning_rate: float = 1.0
    server_momentum: float = 0.0
    eta: float = 0.0
    eta_l: float = 0.0
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 0.001
    trim_beta: float = 0.2
    num_malicious_nodes: int = 0
    num_nodes_to_select: int = 1
    feddyn_alpha: float = 0.1
    qfedavg_q: float = 0.1
    dp: str = "none"
    dp_noise_multiplier: float = 1.0
    dp_clipping_norm: float = 10.0
    dp_num_sampled_clients: int = 0
    # shards
    partition_by: str = "dirichlet"
    dirichlet_alpha: float = 0.2
    partition_seed: int = 42
    min_partition_size: int = 20
    test_fraction: float = 0.2
    central_test_fraction: float = 0.2
    validation_fraction: float = 0.0
    # model
    multi_exit: bool = True
    exit_after: str = ""
    norm: str = "group"
    hidden_size: int = 64
    exit_dropout: float = 0.5
    # resource-aware exits
    exit_profile: str = ""
    exit_training: str = "partial"
    exit_budget_seconds: float = 0.0
    exit_budget_memory_mb: float = 0.0
    slowdown_profile: str = ""
    early_exit_thresholds: str = "0.5,0.6,0.7,0.8,0.9,0.95,0.99"
    # loss
    distill_weight: float = 0.5
    distill_temperature: float = 3.0
    distill_teacher: str = "last"
    exit_loss_weights: str = ""
    distill_ramp: float = 0.0
    distill_warmup: float = 0.0
    method: str = "study"
    hypernetwork_rank: int = 0
    hypernetwork_epochs: int = 25
    momentum_distillation: float = 0.0
    # local training
    local_epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_grad_norm: float = 0.0
    seed: int = 0
    # execution
    device: str = "auto"
    torch_threads: int = 1
    channels_last: bool = True
    eval_batch_size: int = 1000
    cohort_size: int = 0

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunSettings:
        """Cast and validate; unknown keys are left to Flower, which already rejects them."""
        values = {}
        for field in dataclasses.fields(cls):
            key = field.name.replace("_", "-")
            if key in run_config:
                values[field.name] = _cast(key, run_config[key], type(field.default))
        method = values.get("method", cls.method)
        if method not in METHODS:
            raise SettingsError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        for key, value in METHODS[method].items():  # the preset fills the keys left at their default
            name = key.replace("-", "_")
            if values.get(name, getattr(cls, name)) == getattr(cls, name):
                values[name] = value
        settings = cls(**values)
        settings.validate()
        return settings

    @classmethod
    def from_app_dir(cls, app_dir: str | Path = ".", overrides: str | Mapping[str, Any] = "") -> RunSettings:
        """Defaults from the app's pyproject.toml plus overrides: ``flwr run --run-config`` syntax
        (``"key=value ..."`` or one ``.toml`` file) or a mapping of run-config keys."""
        from flwr.common.config import get_fused_config_from_dir, parse_config_args

        if isinstance(overrides, str):
            try:
                overrides = parse_config_args([overrides]) if overrides else {}
            except (OSError, ValueError) as error:  # a missing .toml file, a malformed one
                raise SettingsError(f"run config {overrides!r}: {error}") from None
        cls.check_keys(overrides)
        return cls.from_run_config(get_fused_config_from_dir(Path(app_dir), dict(overrides)))

    @classmethod
    def check_keys(cls, run_config: Mapping[str, Any]) -> None:
        """Every key is a setting; a misspelled one is named, with the nearest real one."""
        known = [field.name.replace("_", "-") for field in dataclasses.fields(cls)]
        for key in run_config:
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                raise SettingsError(
                    f"unknown run-config key {key!r}" + (f"; did you mean {near[0]!r}?" if near else "")
                )

    def validate(self) -> None:
        for name, (ok, requirement) in _RULES.items():
            value = getattr(self, name)
            if not ok(value):
                raise SettingsError(f"{name.replace('_', '-')} {requirement}, got {value!r}")
        _ = self.exit_positions  # parses and validates exit-after
        _ = self.thresholds  # parses early-exit-thresholds
        _ = self.slowdowns  # parses slowdown-profile
        levels = self.profile_levels  # parses exit-profile
        partial = any(level != self.num_exits for level in levels)  # some uploads lack the deeper arrays
        if partial and (self.strategy in NOT_MEAN_BASED_STRATEGIES or self.dp != "none"):
            raise SettingsError(
                f"strategy {self.strategy!r} (dp {self.dp!r}) cannot aggregate the partial uploads of clients at "
                f"different exit levels (exit-profile {self.exit_profile!r}): use a mean-based strategy"
            )
        if self.momentum_distillation > 0 and (not self.multi_exit or self.exit_training == "exclusive"):
            raise SettingsError(
                f"momentum-distillation blends the updates that clients at shallower exit levels make to their top "
                f"layer; it needs a multi-exit model whose shallower levels train (multi-exit {self.multi_exit}, "
                f"exit-training {self.exit_training!r})"
            )
        if self.cohort_size > 1:
            self._check_cohorts(levels)
        weights = self.loss_weights()  # parses exit-loss-weights
        if weights:
            for level in sorted(set(levels) - {AUTO_LEVEL}):
                if self.trains_at(level) and not any(self.loss_weights(level)):
                    raise SettingsError(
                        f"exit-loss-weights {self.exit_loss_weights!r} give the level-{level} clients of exit-profile "
                        f"a zero loss (exits 1..{level} all weigh 0): give one of those exits a weight > 0"
                    )

    def _check_cohorts(self, levels: tuple[int, ...]) -> None:
        """Cohort training (cohort.py) batches the ResNet with GroupNorm and the plain loss."""
        problems = []
        if self.task != "fmnist" or self.norm != "group":
            problems.append(
                f"the ResNet with group norm (task {self.task!r}, norm {self.norm!r}; the LSTM trains per client)"
            )
        if self.proximal_mu > 0 or self.strategy == "feddyn":
            problems.append("no FedProx / FedDyn term in the local loss")
        if AUTO_LEVEL in levels:
            problems.append("fixed exit levels (an auto level is each node's own measurement)")
        if problems:
            needs = " and ".join(problems)
            raise SettingsError(f"cohort-size {self.cohort_size} needs {needs}; set cohort-size = 0")

    def trains_at(self, level: int) -> bool:
        """Whether a client at exit level ``level`` trains (its model: exits 1..level). Under
        ``exit-training = "partial"`` or "own-exit" every level does; under "exclusive" only the deepest."""
        return self.exit_training != "exclusive" or level == self.num_exits

    @property
    def exit_positions(self) -> tuple[int, ...]:
        """Blocks (ResNet) / layers (LSTM) followed by an exit; only the last without ``multi-exit``.

        Empty ``exit-after``: the study's choice per task (ResNet 1,3,5; LSTM 1,2,3)."""
        text = self.exit_after or DEFAULT_EXITS[self.task]
        try:
            blocks = tuple(int(b) for b in text.split(","))
        except ValueError:
            raise SettingsError(f"exit-after must be comma-separated block numbers, got {self.exit_after!r}") from None
        try:
            blocks = check_exit_positions(blocks, DEPTH[self.task])
        except ValueError:
            raise SettingsError(
                f"exit-after must be increasing numbers in 1..{DEPTH[self.task]} for task {self.task!r}, got {text!r}"
            ) from None
        return blocks if self.multi_exit else blocks[-1:]

    @property
    def num_exits(self) -> int:
        """Exits of the full model (the deepest exit level)."""
        return len(self.exit_positions)

    def loss_weights(self, num_exits: int | None = None) -> tuple[float, ...] | None:
        """``exit-loss-weights`` for a model with the first ``num_exits`` exits (default all);
        None: every exit weighs 1. A single-exit model ignores them (plain cross-entropy)."""
        if self.exit_training == "own-exit" and self.multi_exit:  # only the client's deepest exit learns
            count = num_exits or self.num_exits
            return (0.0,) * (count - 1) + (1.0,)
        if not self.exit_loss_weights or not self.multi_exit:
            return None
        exits = self.num_exits  # multi-exit here: every exit
        if self.exit_loss_weights == "depth":  # ScaleFL: exit j of a model with L exits weighs j / (L (L + 1) / 2)
            count = num_exits or exits
            return tuple(j / (count * (count + 1) / 2) for j in range(1, count + 1))
        try:
            values = tuple(float(w) for w in self.exit_loss_weights.split(","))
        except ValueError:
            values = ()
        if len(values) != exits or any(w < 0 for w in values) or values[-1] <= 0:
            raise SettingsError(
                f"exit-loss-weights must be {exits} comma-separated numbers >= 0 (one per exit, "
                f"the deepest > 0), got {self.exit_loss_weights!r}"
            )
        return values[: num_exits or exits]

    @property
    def thresholds(self) -> tuple[float, ...]:
        """Confidence thresholds of the early-exit evaluation (empty string: none)."""
        try:
            values = tuple(float(t) for t in self.early_exit_thresholds.split(",") if t.strip())
        except ValueError:
            raise SettingsError(
                f"early-exit-thresholds must be comma-separated numbers, got {self.early_exit_thresholds!r}"
            ) from None
        if any(not 0 < t <= 1 for t in values):
            raise SettingsError(f"early-exit-thresholds must lie in (0, 1], got {self.early_exit_thresholds!r}")
        return values

    @property
    def profile_levels(self) -> tuple[int, ...]:
        """``exit-profile`` "1:8,2:8,3:8" as one exit level per partition id, in order (empty:
        every client at the deepest level); "auto:8" entries are ``AUTO_LEVEL`` (the client picks
        from its budget)."""
        if not self.exit_profile:
            return ()
        levels: list[int] = []
        for part in self.exit_profile.split(","):
            try:
                level, count = part.split(":")
                level, count = (AUTO_LEVEL if level.strip() == "auto" else int(level)), int(count)
            except ValueError:
                raise SettingsError(
                    f"exit-profile must look like '1:8,2:8,3:8' or 'auto:8,3:16' (level:clients), "
                    f"got {self.exit_profile!r}"
                ) from None
            if not (level == AUTO_LEVEL or 1 <= level <= self.num_exits) or count < 0:
                raise SettingsError(
                    f"exit-profile levels must lie in 1..{self.num_exits} (or be auto) with counts >= 0, "
                    f"got {self.exit_profile!r}"
                )
            levels += [level] * count
        return tuple(levels)

    @property
    def slowdowns(self) -> tuple[float, ...]:
        """``slowdown-profile`` "4:8,1:16" as one slowdown factor per partition id (emulated slow
        devices of an auto exit level, budget.py); partitions past its end run at 1."""
        factors: list[float] = []
        for part in filter(None, self.slowdown_profile.split(",")):
            try:
                factor, count = part.split(":")
                factor, count = float(factor), int(count)
            except ValueError:
                raise SettingsError(
                    f"slowdown-profile must look like '4:8,1:16' (factor:clients), got {self.slowdown_profile!r}"
                ) from None
            if factor <= 0 or count < 0:
                raise SettingsError(f"slowdown-profile factors must be > 0, counts >= 0, got {self.slowdown_profile!r}")
            factors += [factor] * count
        return tuple(factors)

    @property
    def target(self) -> float:
        """``target-accuracy``, or the study's threshold for the task when it is 0."""
        return self.target_accuracy or DEFAULT_TARGET[self.task]

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir).expanduser().resolve()

    def as_run_config(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _cast(key: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    raise SettingsError(f"{key} must be {_KIND_NAMES[kind]}, got {value!r}")


def _one_of(choices: tuple[str, ...]):
    return (lambda v: v in choices), f"must be one of {', '.join(choices)}"


def _at_least(low: float):
    return (lambda v: v >= low), f"must be >= {low}"


def _between(low: float, high: float, *, closed: str = ""):
    """Interval check; ``closed`` names the closed ends: "", "low", "high" or "both"."""
    lo_ok = (lambda v: v >= low) if closed in ("low", "both") else (lambda v: v > low)
    hi_ok = (lambda v: v <= high) if closed in ("high", "both") else (lambda v: v < high)
    brackets = (
        ("[" if closed in ("low", "both") else "(") + f"{low}, {high}" + ("]" if closed in ("high", "both") else ")")
    )
    return (lambda v: lo_ok(v) and hi_ok(v)), f"must lie in {brackets}"


_RULES = {
    "task": _one_of(TASKS),
    "dp": _one_of(DP_MODES),
    "exit_training": _one_of(EXIT_TRAINING),
    "max_grad_norm": _at_least(0),
    "min_train_nodes": _at_least(1),
    "min_train_replies": _at_least(1),
    "min_train_fraction": _between(0, 1, closed="both"),
    "round_timeout": _between(0, float("inf")),
    "reply_poll_seconds": _between(0, float("inf")),
    "proximal_mu": _at_least(0),
    "server_learning_rate": _between(0, float("inf")),
    "server_momentum": _between(0, 1, closed="low"),
    "eta": _at_least(0),
    "eta_l": _at_least(0),
    "beta_1": _between(0, 1, closed="low"),
    "beta_2": _between(0, 1, closed="low"),
    "tau": _at_least(0),
    "trim_beta": _between(0, 0.5),
    "num_malicious_nodes": _at_least(0),
    "num_nodes_to_select": _at_least(1),
    "feddyn_alpha": _between(0, float("inf")),
    "qfedavg_q": _at_least(0),
    "momentum_distillation": _between(0, 1, closed="low"),
    "dp_noise_multiplier": _at_least(0),
    "dp_clipping_norm": _between(0, float("inf")),
    "dp_num_sampled_clients": _at_least(0),
    "norm": _one_of(NORMS),
    "distill_teacher": _one_of(TEACHERS),
    "distill_ramp": _between(0, 1, closed="both"),
    "hypernetwork_rank": _at_least(0),
    "hypernetwork_epochs": _at_least(1),
    "distill_warmup": _between(0, 1, closed="low"),
    "device": _one_of(DEVICES),
    "partition_by": _one_of(PARTITION_BY),
    "har_subset": _one_of(HAR_SUBSETS),
    "num_server_rounds": _at_least(1),
    "local_epochs": _at_least(1),
    "batch_size": _at_least(2),
    "eval_batch_size": _at_least(1),
    "learning_rate": _between(0, float("inf")),
    "momentum": _between(0, 1, closed="low"),
    "weight_decay": _at_least(0),
    "dirichlet_alpha": _between(0, float("inf")),
    "min_partition_size": _at_least(2),
    "test_fraction": _between(0, 1),
    "central_test_fraction": _between(0, 1),
    "validation_fraction": _between(0, 1, closed="low"),
    "fraction_train": _between(0, 1, closed="high"),
    "fraction_evaluate": _between(0, 1, closed="both"),
    "min_available_nodes": _at_least(1),
    "target_accuracy": _between(0, 1, closed="both"),
    "distill_weight": _between(0, 1, closed="both"),
    "distill_temperature": _between(0, float("inf")),
    "hidden_size": _at_least(1),
    "torch_threads": _at_least(0),
    "exit_dropout": _between(0, 1, closed="low"),
    "cohort_size": _at_least(-1),
    "exit_budget_seconds": _at_least(0),
    "exit_budget_memory_mb": _at_least(0),
}
