"""The exit level a client picks from its budget: the deepest level whose measured step, projected
to a round, and whose peak memory fit; a client that no level fits sits out."""

import itertools

import pytest
import torch
from helpers import synthetic_task

from mefl_app.budget import Budget, LevelCost, budget_of, choose_level, measure_levels
from mefl_app.settings import AUTO_LEVEL, RunSettings, SettingsError
from mefl_app.task import build_model, exit_level

COSTS = [LevelCost(1, 0.01, 50.0, 10.0), LevelCost(2, 0.02, 80.0, 20.0), LevelCost(3, 0.03, 120.0, 30.0)]


def test_the_deepest_level_that_fits_is_chosen():
    assert choose_level(COSTS, Budget(seconds=20.0)).level == 2  # level 2 fits exactly
    assert choose_level(COSTS, Budget(seconds=19.9)).level == 1
    assert choose_level(COSTS, Budget(seconds=100.0, memory_mb=100.0)).level == 2
    assert choose_level(COSTS, Budget()).level == 3  # no limit: the whole model
    choice = choose_level(COSTS, Budget(seconds=20.0))
    assert (
        choice.trains and "level 2 fits 20 s a round" in choice.reason and "level 3 would need 30.0 s" in choice.reason
    )


def test_a_client_that_no_level_fits_sits_out_and_says_why():
    choice = choose_level(COSTS, Budget(seconds=5.0, memory_mb=40.0))
    assert (choice.level, choice.trains) == (1, False)
    assert "no level fits 5 s a round and 40 MB" in choice.reason and "sits out" in choice.reason


def test_a_crafted_timing_that_fits_exactly_level_2_picks_level_2():
    settings = RunSettings(local_epochs=2, batch_size=16)
    train = synthetic_task(n=100).train  # 100 samples: 7 steps an epoch, 14 a round
    # Each timed step of level k takes k * 10 ms on this crafted clock (start, end, start, end, ...).
    ticks = itertools.chain.from_iterable((0.0, 0.01 * k) for k in (1, 2, 3) for _ in range(3))
    costs = measure_levels(
        settings,
        train,
        lambda k: build_model(settings, 10, (1, 28, 28), k),
        torch.device("cpu"),
        Budget(slowdown=2.0),
        clock=lambda: next(ticks),
    )
    assert [c.step_seconds for c in costs] == pytest.approx([0.01, 0.02, 0.03])
    assert [c.round_seconds for c in costs] == pytest.approx([14 * 0.02, 14 * 0.04, 14 * 0.06])  # x slowdown 2
    assert costs[0].peak_memory_mb < costs[1].peak_memory_mb < costs[2].peak_memory_mb  # measured, deeper is bigger
    assert choose_level(costs, Budget(seconds=costs[1].round_seconds)).level == 2


def test_the_budget_comes_from_the_node_else_the_run():
    settings = RunSettings.from_run_config(
        {"exit-profile": "auto:2,3:1", "exit-budget-seconds": 30.0, "slowdown-profile": "4:1"}
    )
    assert [exit_level(settings, {}, p) for p in range(3)] == [AUTO_LEVEL, AUTO_LEVEL, 3]
    assert exit_level(RunSettings(), {"exit-level": "auto"}, 0) == AUTO_LEVEL
    assert budget_of(settings, {}, 0) == Budget(seconds=30.0, slowdown=4.0)
    assert budget_of(settings, {}, 1) == Budget(seconds=30.0)  # past the slowdown profile: 1
    assert budget_of(settings, {"budget-memory-mb": "64", "slowdown": 2}, 0) == Budget(30.0, 64.0, 2.0)
    with pytest.raises(SettingsError, match="node config slowdown must be > 0"):
        budget_of(settings, {"slowdown": 0}, 0)
    with pytest.raises(SettingsError, match='exit-level must be 1..3 or "auto"'):
        exit_level(settings, {"exit-level": "deep"}, 0)
    with pytest.raises(SettingsError, match="slowdown-profile must look like"):
        RunSettings.from_run_config({"slowdown-profile": "fast"})
