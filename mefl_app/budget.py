"""An exit level chosen by the device itself: ``exit-level = "auto"`` (node config, or an "auto"
entry of ``exit-profile``) with a budget of training seconds per round and/or peak memory.

On its first message the client measures, on its own hardware, one training step of its real
loss at every exit level (the median of a few timed steps after a warm-up, on a batch of its own
shard) and the step's peak tensor memory; it projects its round as (steps per epoch x local
epochs) x step time x ``slowdown`` and picks the deepest level whose projected round and memory
fit. A client that no level fits sits out of training (it still evaluates at exit 1). The
choice, the measurement and the reason go to the server in the census reply (results.json:
``federation``) and stay in the node's ``Context.state`` for the later rounds.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` over the step; on a CPU, which has no
allocator statistics, the bytes of the tensors the step holds at its peak: the parameters, their
gradients and momentum buffers, the batch, and every tensor autograd saves for the backward pass
(counted once each, through ``saved_tensors_hooks``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .data.tensors import TensorData
from .settings import RunSettings, SettingsError
from .train import train_local

TIMED_STEPS = 3


@dataclass(frozen=True)
class Budget:
    """What a device can spend on one round's training (0: no limit) and how much slower than
    this machine it is (emulated devices in simulation)."""

    seconds: float = 0.0
    memory_mb: float = 0.0
    slowdown: float = 1.0


@dataclass(frozen=True)
class LevelCost:
    level: int
    step_seconds: float  # measured here, median of the timed steps
    peak_memory_mb: float  # measured here
    round_seconds: float  # projected: steps per round x step seconds x slowdown


@dataclass(frozen=True)
class LevelChoice:
    level: int  # the level the client runs (1 when it sits out: it still evaluates at exit 1)
    trains: bool  # False: no level fits the budget, the client sits out of training
    reason: str
    costs: tuple[LevelCost, ...] = ()

    def as_record(self, budget: Budget) -> dict[str, Any]:
        """The choice as the census reports it (Flower record values: numbers, lists, strings)."""
        return {
            "level": self.level,
            "trains": int(self.trains),
            "reason": self.reason,
            "budget-seconds": budget.seconds,
            "budget-memory-mb": budget.memory_mb,
            "slowdown": budget.slowdown,
            "step-seconds": [c.step_seconds for c in self.costs],
            "peak-memory-mb": [c.peak_memory_mb for c in self.costs],
            "projected-round-seconds": [c.round_seconds for c in self.costs],
        }


def budget_of(settings: RunSettings, node_config: Mapping[str, Any], partition_id: int) -> Budget:
    """The node's own ``budget-seconds`` / ``budget-memory-mb`` / ``slowdown`` node config, else
    the run's ``exit-budget-seconds`` / ``exit-budget-memory-mb`` and its ``slowdown-profile`` entry."""

    def number(key: str, default: float) -> float:
        if key not in node_config:
            return default
        try:
            value = float(node_config[key])
        except (TypeError, ValueError):
            raise SettingsError(f"node config {key} must be a number, got {node_config[key]!r}") from None
        if value < 0 or (key == "slowdown" and value <= 0):
            raise SettingsError(f"node config {key} must be {'> 0' if key == 'slowdown' else '>= 0'}, got {value}")
        return value

    slowdowns = settings.slowdowns
    profile_slowdown = slowdowns[partition_id] if partition_id < len(slowdowns) else 1.0
    return Budget(
        seconds=number("budget-seconds", settings.exit_budget_seconds),
        memory_mb=number("budget-memory-mb", settings.exit_budget_memory_mb),
        slowdown=number("slowdown", profile_slowdown),
    )


def choose_level(costs: list[LevelCost], budget: Budget) -> LevelChoice:
    """The deepest level whose projected round and peak memory fit the budget."""

    def fits(cost: LevelCost) -> bool:
        return (budget.seconds <= 0 or cost.round_seconds <= budget.seconds) and (
            budget.memory_mb <= 0 or cost.peak_memory_mb <= budget.memory_mb
        )

    fitting = [cost for cost in costs if fits(cost)]
    limits = []
    if budget.seconds > 0:
        limits.append(f"{budget.seconds:g} s a round")
    if budget.memory_mb > 0:
        limits.append(f"{budget.memory_mb:g} MB")
    limit = " and ".join(limits) or "no limit"
    if not fitting:
        first = costs[0]
        return LevelChoice(
            1,
            False,
            f"no level fits {limit}: level 1 needs {first.round_seconds:.1f} s a round and "
            f"{first.peak_memory_mb:.1f} MB; sits out of training",
            tuple(costs),
        )
    best = fitting[-1]
    deeper = next((c for c in costs if c.level == best.level + 1), None)
    why = f"level {best.level} fits {limit} ({best.round_seconds:.1f} s a round, {best.peak_memory_mb:.1f} MB)"
    if deeper is not None:
        why += f"; level {deeper.level} would need {deeper.round_seconds:.1f} s and {deeper.peak_memory_mb:.1f} MB"
    return LevelChoice(best.level, True, why, tuple(costs))


def measure_levels(
    settings: RunSettings,
    train: TensorData,
    build: Callable[[int], torch.nn.Module],
    device: torch.device,
    budget: Budget,
    clock: Callable[[], float] = time.perf_counter,
) -> list[LevelCost]:
    """Each level's measured step (time, peak memory) on a batch of ``train`` and its projected
    round; ``build(level)`` returns the model up to that exit."""
    batch = min(settings.batch_size, len(train))
    sample = TensorData(train.x[:batch], train.y[:batch])
    one_step = dataclasses.replace(settings, local_epochs=1)
    steps_per_round = math.ceil(len(train) / settings.batch_size) * settings.local_epochs
    costs = []
    for level in range(1, settings.num_exits + 1):
        model = build(level).to(device)
        generator = torch.Generator().manual_seed(settings.seed)
        memory_mb = peak_step_memory_mb(model, sample, one_step, device, generator)  # also the warm-up
        times = []
        for _ in range(TIMED_STEPS):
            start = clock()
            train_local(model, sample, one_step, generator=generator, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(clock() - start)
        step = sorted(times)[len(times) // 2]
        costs.append(LevelCost(level, step, memory_mb, steps_per_round * step * budget.slowdown))
    return costs


def peak_step_memory_mb(
    model: torch.nn.Module, sample: TensorData, settings: RunSettings, device: torch.device, generator
) -> float:
    """Peak memory (MB) of one training step of ``model`` on ``sample`` (module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        train_local(model, sample, settings, generator=generator, device=device)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20 + _bytes(model.parameters()) / 2**20
    saved: dict[tuple[int, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type != "meta" and tensor.untyped_storage().nbytes():
            saved[(tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())] = (
                tensor.untyped_storage().nbytes()
            )
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        train_local(model, sample, settings, generator=generator, device=device)
    parameters = _bytes(model.parameters())
    weights = {(p.untyped_storage().data_ptr(), p.untyped_storage().nbytes()) for p in model.parameters()}
    activations = sum(size for key, size in saved.items() if key not in weights)
    buffers = 2 * parameters if settings.momentum > 0 else parameters  # gradients (+ momentum)
    return (parameters + buffers + activations + sample.x.nbytes + sample.y.nbytes) / 2**20


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)
