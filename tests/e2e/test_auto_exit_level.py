"""Clients that pick their own exit level from a budget, in Flower's real simulation engine: one
fits level 2 (a memory budget between what levels 2 and 3 measure), one fits nothing (an emulated
device a trillion times slower) and sits out, one has a fixed level; the server learns each level
from the replies and results.json says what was measured and why."""

import pytest
import torch
from helpers import SHORT_RUN, completed_run, synthetic_task

from mefl_app.budget import Budget, measure_levels
from mefl_app.settings import RunSettings
from mefl_app.task import build_model

pytestmark = pytest.mark.e2e


def test_auto_exit_levels_from_the_clients_budgets(superlink, small_fmnist, tmp_path):
    config = {
        "data-dir": small_fmnist,
        "output-dir": tmp_path / "out",
        "batch-size": 8,
        **SHORT_RUN,
        "exit-profile": "auto:2,3:1",
        "slowdown-profile": "1e12:1",
        "exit-budget-seconds": 1e6,
    }
    settings = RunSettings.from_run_config({key: value for key, value in config.items() if "dir" not in key})
    costs = measure_levels(  # what a client measures: memory does not depend on the machine's speed
        settings,
        synthetic_task(n=40).train,
        lambda k: build_model(settings, 10, (1, 28, 28), k),
        torch.device("cpu"),
        Budget(),
    )
    config["exit-budget-memory-mb"] = (costs[1].peak_memory_mb + costs[2].peak_memory_mb) / 2
    results = completed_run(superlink, config, 3)
    federation = results["federation"]
    slow, fits, fixed = (federation[str(p)] for p in range(3))
    assert slow["exit-level-choice"]["trains"] == 0 and "sits out" in slow["exit-level-choice"]["reason"]
    assert (fits["exit-level"], fits["exit-level-choice"]["trains"]) == (2, 1)
    assert fits["exit-level-choice"]["peak-memory-mb"] == pytest.approx([c.peak_memory_mb for c in costs])
    assert "level 3 would need" in fits["exit-level-choice"]["reason"]
    assert fixed["exit-level"] == 3 and "exit-level-choice" not in fixed
    for entry in results["rounds"]:
        assert entry["aggregated_partitions"] == [1, 2]  # the one that sits out trains nothing
        assert entry["replies"]["train"]["ok"] == 3
        assert len(entry["personalized"]["block3"]["per_client"]) == 2  # levels 2 and 3 report exit 2
