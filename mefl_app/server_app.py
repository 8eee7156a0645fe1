"""mefl ServerApp: the configured Flower strategy over the multi-exit model, wrapped by exit-level
aggregation and tracking, with central evaluation of the global model after every round."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from flwr.supercore.exit import add_exit_handler
from torch import nn

from . import cohort, metrics
from .budget import peak_step_memory_mb
from .client_state import RUNS_KEY
from .data.tensors import TaskData, TensorData
from .device import select_device
from .evaluate import evaluate_exits
from .runtime_check import check_runtime_environment
from .server.census import LEVEL_CHOICE, NUM_TRAIN, take_census
from .server.cohort_grid import AUTO_COHORT_SIZE, CohortGrid, auto_cohort_size
from .server.exit_levels import ExitLevelAggregation
from .server.hypernetwork import HypernetworkFill
from .server.momentum_distillation import MomentumDistillation, momentum_pairs
from .server.polling_grid import PollingGrid
from .server.resume import load_resume_point
from .server.run_folder import RunRecorder, make_run_dir
from .server.server_state import chain, load_server_state
from .server.strategies import build_strategy
from .server.tracking import TrackingStrategy
from .settings import RunSettings
from .task import (
    exit_names,
    hypernetwork_pairs,
    initial_model,
    layer_prefix,
    level_array_names,
    load_task_data,
    model_costs,
)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    # A bad setting fails here, before any folder; everything after is recorded in results.json.
    check_runtime_environment()
    settings = RunSettings.from_run_config(context.run_config)
    strategy = build_strategy(settings)
    variant = "me" if settings.multi_exit else "se"
    run_dir = make_run_dir(settings.output_path, f"{settings.task}-{variant}-seed{settings.seed}-run{context.run_id}")
    log(INFO, "[mefl] writing results to %s", run_dir)
    header = {"run_id": context.run_id, "run_config": settings.as_run_config(), "strategy": type(strategy).__name__}
    recorder = RunRecorder(run_dir, header, exit_names(settings), settings.target)
    add_exit_handler(lambda: recorder.interrupt("stopped by a signal (SIGTERM, Ctrl-C or flwr stop)"))
    try:
        # Data, model, and the stopped run this one continues
        data = load_task_data(settings)
        model = initial_model(settings, data.num_classes, data.input_shape)
        recorder.describe(describe_run(settings, model, data))
        resumed = load_resume_point(settings.resume_from, settings) if settings.resume_from else None
        if resumed is not None:
            model.load_state_dict(resumed.state_dict)
            recorder.continue_from(resumed)
            log(INFO, "[mefl] continuing %s after round %d", resumed.run_dir, resumed.server_round)
        offset = resumed.server_round if resumed else 0

        # Flower's strategy, aware of exit levels, observed by the tracking wrapper
        levels = exit_level_aggregation(strategy, settings, model, data, recorder)
        if resumed is not None and resumed.server_state:
            load_server_state(levels, resumed.server_state)
        tracked = TrackingStrategy(levels, recorder, settings.min_train_replies, offset, settings.min_train_fraction)
        # Clients build their model from what the server announces, and refuse other data.
        announced = {"num-classes": data.num_classes, "input-shape": list(data.input_shape)}
        train_config = dict(announced)
        if settings.client_state_dir:  # where clients find what they saved (client_state.py)
            earlier = [Path(r["from"]).name for r in reversed(recorder.results.get("resumed", []))]
            train_config[RUNS_KEY] = [run_dir.name, *earlier]
        census = take_census(grid, settings, announced)
        recorder.record_federation(census)
        aggregation = next(part for part in chain(levels) if isinstance(part, ExitLevelAggregation))
        aggregation.know_levels({node: int(answer[metrics.EXIT_LEVEL]) for node, answer in census.items()})
        grid = PollingGrid(grid, settings.reply_poll_seconds)
        cohort_size = settings.cohort_size
        if cohort_size == AUTO_COHORT_SIZE:
            cohort_size, why = pick_cohort_size(settings, model, data, census)
            recorder.describe({"cohort_size": {"size": cohort_size, "reason": why}})
            log(INFO, "[mefl] cohort-size -1: %s", why)
        if cohort_size > 1:  # cohorts of clients trained as one computation (cohort.py)
            grid = CohortGrid(grid, cohort_size, census)
        tuning = settings.validation_fraction > 0  # the central test set stays unseen
        result = tracked.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=settings.num_server_rounds - offset,
            timeout=settings.round_timeout,
            train_config=ConfigRecord(train_config),
            evaluate_config=ConfigRecord(dict(announced)),
            evaluate_fn=None if tuning else central_evaluation(model, data, settings),
        )
        recorder.complete(result.arrays)
    except BaseException as error:
        recorder.fail(error)
        raise


def pick_cohort_size(
    settings: RunSettings, model: nn.Module, data: TaskData, census: dict[int, dict[str, Any]]
) -> tuple[int, str]:
    """``cohort-size = -1``: 0 where cohorts cannot train this configuration exactly (the LSTM,
    BatchNorm, FedProx / FedDyn terms, auto exit levels), else ``auto_cohort_size`` from the
    device, the federation's size and one client's measured training step at the deepest exit plus
    the largest shard."""
    levels = [int(answer[metrics.EXIT_LEVEL]) for answer in census.values()]
    chosen = any(LEVEL_CHOICE in answer for answer in census.values())  # a level the node measured
    if not cohort.supports(settings, model, settings.proximal_mu, settings.strategy == "feddyn") or chosen:
        return 0, "one client at a time: cohorts batch only the ResNet with group norm, the plain loss and fixed levels"
    device = select_device(settings)
    largest_group = max(Counter(levels).values(), default=0)
    if device.type != "cuda":  # a CPU's cohorts follow the federation's size, not memory
        return auto_cohort_size(device.type, 0.0, 0.0, largest_group, len(census))
    sample = TensorData(data.train.x[: settings.batch_size], data.train.y[: settings.batch_size])
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.random.fork_rng(devices=[device]):  # the run's random streams stay as they are
        step_mb = peak_step_memory_mb(copy.deepcopy(model), sample, settings, device, generator)
    largest_shard = max((int(answer.get(NUM_TRAIN, 0)) for answer in census.values()), default=0)
    shard_mb = largest_shard * (data.train.x[0].nbytes + data.train.y[0].nbytes) / 2**20
    free_mb = torch.cuda.mem_get_info(device)[0] / 2**20
    return auto_cohort_size(device.type, step_mb + shard_mb, free_mb, largest_group, len(census))


def exit_level_aggregation(
    strategy: Strategy, settings: RunSettings, model: nn.Module, data: TaskData, recorder: RunRecorder
) -> Strategy:
    """``strategy`` wrapped for clients at different exit levels, with the method's server-side
    steps before it aggregates: InclusiveFL's momentum distillation, then HypeMeFed's fill."""
    levels: Strategy = ExitLevelAggregation(strategy, level_array_names(settings, data.num_classes, data.input_shape))
    if settings.hypernetwork_rank > 0:  # HypeMeFed: fill the missing deeper layers first
        levels = HypernetworkFill(
            levels,
            hypernetwork_pairs(settings),
            settings.hypernetwork_rank,
            settings.hypernetwork_epochs,
            seed=settings.seed,
        )
    if settings.momentum_distillation > 0:  # InclusiveFL: blend the shallower levels' top-layer updates
        shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
        pairs = momentum_pairs(layer_prefix(settings), settings.exit_positions, shapes)
        recorder.describe({"momentum_distillation": {str(k): [top for top, _ in p] for k, p in pairs.items()}})
        if not any(pairs.values()):
            log(
                WARNING,
                "[mefl] momentum-distillation has nothing to blend: no layer after an exit has the shape of the "
                "layer before it (docs/methods.md)",
            )
        levels = MomentumDistillation(levels, pairs, settings.momentum_distillation)
    return levels


def central_evaluation(
    model: nn.Module, data: TaskData, settings: RunSettings
) -> Callable[[int, ArrayRecord], MetricRecord]:
    """The global model on the central test set, per exit, as raw counts."""
    device = select_device(settings)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        scores = evaluate_exits(model.to(device), data.test, batch_size=settings.eval_batch_size, device=device)
        return metrics.scores_record(-1, len(data.test), scores)

    return evaluate


def describe_run(settings: RunSettings, model: nn.Module, data: TaskData) -> dict:
    """What results.json says about the model and the data."""
    return {
        "model": {
            "class": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "forward_mflops_per_exit": model_costs(settings, data.num_classes, data.input_shape)[0],
        },
        "early_exit_thresholds": list(settings.thresholds),
        "data": {
            "task": data.name,
            "num_classes": data.num_classes,
            "class_names": list(data.class_names),
            "input_shape": list(data.input_shape),
            "normalization": data.normalization,
            "pool_size": len(data.train),
            "central_test_size": len(data.test),
        },
    }
