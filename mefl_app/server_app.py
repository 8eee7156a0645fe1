"""mefl ServerApp: the configured Flower strategy over the multi-exit model, wrapped by
tracking, with central evaluation of the global model after every round."""

from __future__ import annotations

from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from .grid import PromptGrid
from .results import RunRecorder, make_run_dir
from .resume import load_resume_point
from .settings import RunSettings
from .partial import PartialAggregation
from .strategies import PooledTrainMetrics, build_strategy
from .tasks import build_model, exit_names, initial_model, load_task_data, model_costs
from .tracking import TrackingStrategy
from .training import evaluate_exits, select_device

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    # Everything that can be wrong with the settings fails here, before any folder or round.
    settings = RunSettings.from_run_config(context.run_config)
    train_metrics = PooledTrainMetrics()
    strategy = build_strategy(settings, train_metrics)
    data = load_task_data(settings)
    model = initial_model(settings, data.num_classes, data.input_shape)
    device = select_device(settings)
    resumed = load_resume_point(settings.resume_from, settings) if settings.resume_from else None
    if resumed is not None:
        model.load_state_dict(resumed.state_dict)
        log(INFO, "[mefl] continuing %s after round %d", resumed.run_dir, resumed.server_round)
    offset = resumed.server_round if resumed else 0

    run_dir = make_run_dir(settings.output_path, f"{settings.task}-{'me' if settings.multi_exit else 'se'}-seed{settings.seed}-run{context.run_id}")
    log(INFO, "[mefl] writing results to %s", run_dir)
    recorder = RunRecorder(
        run_dir,
        header={
            "run_id": context.run_id,
            "run_config": settings.as_run_config(),
            "strategy": type(strategy).__name__,
            "model": {"class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
                      "forward_mflops_per_exit": model_costs(settings, data.num_classes, data.input_shape)[0]},
            "early_exit_thresholds": list(settings.thresholds),
            "data": {"task": data.name, "num_classes": data.num_classes, "class_names": list(data.class_names),
                     "pool_size": len(data.train), "central_test_size": len(data.test)},
        },
        exit_names=exit_names(settings),
        target=settings.target,
        resumed=resumed,
    )

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """The global model on the central test set, per exit (not in tuning mode, where the
        central test set stays unseen); closes the round's record and checkpoints the model."""
        if resumed is not None and server_round == 0:
            return None  # the stopped run evaluated this model already
        server_round += offset
        metrics = None
        if settings.validation_fraction == 0:
            model.load_state_dict(arrays.to_torch_state_dict())
            scores = evaluate_exits(model.to(device), data.test, batch_size=settings.eval_batch_size, device=device)
            recorder.record_central(server_round, scores)
            metrics = MetricRecord({"accuracy": scores.accuracy, "loss": scores.loss})
        if server_round > 0:
            recorder.finish_round(server_round, settings.num_server_rounds, arrays)
        return metrics

    # Clients at exit level k hold (and send) only these arrays.
    level_keys = {k: list(build_model(settings, data.num_classes, data.input_shape, k).state_dict())
                  for k in range(1, len(settings.exit_blocks) + 1)}
    # Clients build their model from what the server announces, and refuse other data.
    data_config = {"num-classes": data.num_classes, "input-shape": list(data.input_shape)}
    try:
        partial = PartialAggregation(strategy, level_keys, train_metrics)
        result = TrackingStrategy(partial, recorder, train_metrics, settings.min_train_replies, offset).start(
            grid=PromptGrid(grid, settings.reply_poll_seconds),
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=settings.num_server_rounds - offset,
            timeout=settings.round_timeout,
            train_config=ConfigRecord(dict(data_config)),
            evaluate_config=ConfigRecord(dict(data_config)),
            evaluate_fn=central_evaluate,
        )
    except BaseException as error:
        recorder.fail(error)
        raise
    recorder.complete(result.arrays)
    log(INFO, "[mefl] run completed: %s", run_dir / "results.json")
