"""mefl ClientApp: local multi-exit training on this node's shard, per-exit evaluation.

A client at exit level k (node config ``exit-level`` or run config ``exit-profile``) builds only
the model up to exit k, trains exits 1..k (its deepest exit is its teacher) and uploads only
those arrays. At ``exit-level = "auto"`` it picks k itself from its budget on its first message
(budget.py) and keeps the choice in its ``Context.state``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from . import metrics
from .budget import LevelChoice, budget_of, choose_level, measure_levels
from .client_state import RUNS_KEY, load_client_state, save_client_state
from .cohort import train_cohort
from .data.shards import ClientShard, label_counts
from .device import apply_thread_setting, select_device
from .evaluate import evaluate_exits
from .health import NonFiniteError
from .model.loss import distill_schedule
from .seeds import client_round_seed, validation_split_seed
from .server.census import LEVEL_CHOICE, census_record
from .server.cohort_grid import COHORT_ACTION, PARTITIONS_KEY, arrays_key, metrics_key
from .server.feddyn import ALPHA_KEY
from .settings import AUTO_LEVEL, RunSettings
from .task import build_model, exit_level, load_client_shard, model_costs
from .train import FedDynState, train_local

FEDDYN_STATE = "feddyn-state"  # in Context.state: the client's FedDyn g, one array per parameter

app = ClientApp()


@dataclass(frozen=True)
class LocalSetup:
    """What one message needs: settings, this node's shard and exit level, and its part of the
    received global model, on the training device."""

    settings: RunSettings
    shard: ClientShard
    level: int
    fits_budget: bool  # False: an auto-level client that no level fits sits out of training
    device: torch.device
    model: nn.Module
    num_classes: int
    forward_mflops: list[float]  # per exit, one sample
    train_mflops_per_sample: float


def _announced(msg: Message) -> tuple[int, tuple[int, ...]]:
    """The number of classes and the input shape of the server's model."""
    config = msg.content["config"]
    return int(config["num-classes"]), tuple(int(d) for d in config["input-shape"])


def _prepare(
    msg: Message, context: Context, partition_id: int | None = None, models: dict[int, nn.Module] | None = None
) -> LocalSetup:
    """``partition_id``: another partition than this node's (a cohort's member, simulation only).
    ``models``: the received model per exit level, shared by a cohort's members (they all get the
    same global model), built on a level's first member; a member that trains it loads its own
    parameters into it before it is scored."""
    settings = RunSettings.from_run_config(context.run_config)
    apply_thread_setting(settings)
    num_classes, input_shape = _announced(msg)
    node_config = context.node_config if partition_id is None else {**context.node_config, "partition-id": partition_id}
    shard = load_client_shard(settings, node_config, num_classes, input_shape)
    if settings.validation_fraction > 0:
        shard = shard.validation_view(
            settings.validation_fraction, seed=validation_split_seed(settings.partition_seed, shard.partition_id)
        )
    device = select_device(settings)
    choice = _level_choice(settings, context, shard, num_classes, input_shape, device)
    level = choice.level
    model = None if models is None else models.get(level)
    if model is None:
        model = build_model(settings, num_classes, input_shape, level)
        received = msg.content["arrays"].to_torch_state_dict()
        model.load_state_dict({name: received[name] for name in model.state_dict()})  # exits 1..level only
        model.to(device)
        if models is not None:
            models[level] = model
    forward_mflops, train_mflops_per_sample = model_costs(settings, num_classes, input_shape, level)
    return LocalSetup(
        settings,
        shard,
        level,
        choice.trains,
        device,
        model,
        num_classes,
        forward_mflops,
        train_mflops_per_sample,
    )


def _level_choice(
    settings: RunSettings,
    context: Context,
    shard: ClientShard,
    num_classes: int,
    input_shape: tuple[int, ...],
    device: torch.device,
) -> LevelChoice:
    """This client's exit level: fixed by its node config or the profile, or (auto) chosen from
    its budget on its first message, measured here, and kept in its ``Context.state``."""
    level = exit_level(settings, context.node_config, shard.partition_id)
    if level != AUTO_LEVEL:
        return LevelChoice(level, True, "set by " + ("node config" if "exit-level" in context.node_config else "run"))
    if LEVEL_CHOICE in context.state:
        kept = context.state[LEVEL_CHOICE]
        return LevelChoice(int(kept["level"]), bool(kept["trains"]), str(kept["reason"]))
    budget = budget_of(settings, context.node_config, shard.partition_id)
    costs = measure_levels(
        settings, shard.train, lambda k: build_model(settings, num_classes, input_shape, k), device, budget
    )
    choice = choose_level(costs, budget)
    context.state[LEVEL_CHOICE] = ConfigRecord(choice.as_record(budget))
    return choice


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the global model locally, then score THIS locally trained model on the local test
    part, per exit: the personalized accuracy."""
    local = _prepare(msg, context)
    settings, shard, model = local.settings, local.shard, local.model
    trains = settings.trains_at(local.level) and local.fits_budget
    server_round = int(msg.content["config"]["server-round"])
    seed = client_round_seed(settings.seed, server_round, shard.partition_id)
    torch.manual_seed(seed)
    started = time.perf_counter()
    train_loss = 0.0
    if trains:
        config = msg.content["config"]
        feddyn = _feddyn_state(local, config, context, server_round)
        try:
            train_loss = train_local(
                model,
                shard.train,
                settings,
                generator=torch.Generator().manual_seed(seed),
                device=local.device,
                proximal_mu=float(config.get("proximal-mu", 0.0)),
                distill_weight=_round_distill_weight(settings, server_round),
                feddyn=feddyn,
            )
        except NonFiniteError as error:  # a diverged model is not uploaded
            raise NonFiniteError(f"partition {shard.partition_id}, round {server_round}: {error}") from None
        if feddyn is not None:  # FedDyn's client state lives on the node between rounds
            context.state[FEDDYN_STATE] = ArrayRecord(feddyn.grads)
            if settings.client_state_dir and RUNS_KEY in config:  # and on its disk (client_state.py)
                run = str(config[RUNS_KEY][0])
                save_client_state(settings.client_state_dir, run, shard.partition_id, server_round, feddyn.grads)
    arrays, record = _train_reply(local, trains, train_loss, time.perf_counter() - started)
    return Message(RecordDict({"arrays": arrays, "metrics": record}), reply_to=msg)


@app.train(COHORT_ACTION)
def train_cohort_message(msg: Message, context: Context) -> Message:
    """Train every partition of a cohort (``cohort-partitions``) at once as one batched
    computation (cohort.py; the server's CohortGrid fans the reply out); one arrays and one
    metrics record per partition, as each would have sent."""
    config = msg.content["config"]
    models: dict[int, nn.Module] = {}  # one model for the cohort; each member's parameters in turn
    members = [_prepare(msg, context, int(pid), models) for pid in config[PARTITIONS_KEY]]
    settings, level = members[0].settings, members[0].level
    if any(m.level != level for m in members):
        raise RuntimeError(f"a cohort holds one exit level, got {sorted({m.level for m in members})}")
    server_round = int(config["server-round"])
    trains = settings.trains_at(level)
    started = time.perf_counter()
    losses = [0.0] * len(members)
    if trains:
        seeds = [client_round_seed(settings.seed, server_round, m.shard.partition_id) for m in members]
        torch.manual_seed(seeds[0])  # one dropout stream for the cohort (cohort.py)
        try:
            result = train_cohort(
                [m.model for m in members],
                [m.shard.train for m in members],
                settings,
                generators=[torch.Generator().manual_seed(seed) for seed in seeds],
                device=members[0].device,
                distill_weight=_round_distill_weight(settings, server_round),
            )
        except NonFiniteError as error:
            raise NonFiniteError(f"round {server_round}: {error}") from None
        losses = result.train_losses
    seconds = (time.perf_counter() - started) / len(members)  # the cohort's time, shared out
    content = {}
    for index, member in enumerate(members):
        if trains:
            member.model.load_state_dict(result.state_dicts[index])
        content[arrays_key(index)], content[metrics_key(index)] = _train_reply(member, trains, losses[index], seconds)
    return Message(RecordDict(content), reply_to=msg)


def _round_distill_weight(settings: RunSettings, server_round: int) -> float:
    return distill_schedule(
        settings.distill_weight,
        server_round,
        settings.num_server_rounds,
        ramp=settings.distill_ramp,
        warmup=settings.distill_warmup,
    )


def _local_scores(local: LocalSetup) -> metrics.ExitScores:
    """The model's per-exit and early-exit scores on this client's local test part."""
    return evaluate_exits(
        local.model,
        local.shard.test,
        batch_size=local.settings.eval_batch_size,
        device=local.device,
        thresholds=local.settings.thresholds,
        exit_mflops=local.forward_mflops,
    )


def _train_reply(local: LocalSetup, trains: bool, train_loss: float, train_seconds: float):
    """(arrays, metrics) of a trained client: its model scored per exit on its local test part
    (the personalized accuracy); a client that did not train uploads no arrays at all."""
    scores = _local_scores(local)
    shard = local.shard
    samples = len(shard.train) * local.settings.local_epochs if trains else 0
    record = metrics.scores_record(
        shard.partition_id,
        len(shard.train) if trains else 0,
        scores,
        **{
            metrics.TRAIN_LOSS: train_loss,
            metrics.TRAIN_SECONDS: train_seconds,
            metrics.TRAIN_MFLOPS: samples * local.train_mflops_per_sample,
            metrics.LABEL_COUNTS: label_counts(shard.train.y, local.num_classes),
        },
    )
    arrays = ArrayRecord(local.model.state_dict()) if trains else ArrayRecord()  # copied to the CPU, as bytes
    return arrays, record


def _feddyn_state(local: LocalSetup, config: ConfigRecord, context: Context, server_round: int) -> FedDynState | None:
    """This node's FedDyn state when the strategy is FedDyn: from its ``Context.state``, else (a
    fresh process, a continued run) from ``client-state-dir``, else zeros (its first round)."""
    alpha = float(config.get(ALPHA_KEY, 0.0))
    if alpha <= 0:
        return None
    if FEDDYN_STATE in context.state:
        stored = context.state[FEDDYN_STATE].to_torch_state_dict()
    elif local.settings.client_state_dir and RUNS_KEY in config:
        runs = list(config[RUNS_KEY])
        stored = load_client_state(local.settings.client_state_dir, runs, local.shard.partition_id, server_round) or {}
    else:
        stored = {}
    grads = {name: stored.get(name, torch.zeros_like(p, device="cpu")) for name, p in local.model.named_parameters()}
    return FedDynState(alpha, grads)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received global model (up to this client's exit level) on the local test part,
    per exit and under the early-exit policy."""
    local = _prepare(msg, context)
    scores = _local_scores(local)
    record = metrics.scores_record(local.shard.partition_id, len(local.shard.test), scores)
    return Message(RecordDict({"metrics": record}), reply_to=msg)


@app.evaluate(COHORT_ACTION)
def evaluate_cohort_message(msg: Message, context: Context) -> Message:
    """Score the received global model for every partition of a cohort (``cohort-partitions``),
    one after the other: one metrics record per partition, as each would have sent, in one message."""
    content = {}
    models: dict[int, nn.Module] = {}  # the received model, built once for the cohort
    for index, partition in enumerate(msg.content["config"][PARTITIONS_KEY]):
        local = _prepare(msg, context, int(partition), models)
        content[metrics_key(index)] = metrics.scores_record(
            local.shard.partition_id, len(local.shard.test), _local_scores(local)
        )
    return Message(RecordDict(content), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The census before round 1: load (and so check) this node's shard and say which partition
    and exit level it holds; the server checks the federation as a whole."""
    settings = RunSettings.from_run_config(context.run_config)
    apply_thread_setting(settings)
    num_classes, input_shape = _announced(msg)
    shard = load_client_shard(settings, context.node_config, num_classes, input_shape)
    from_node = "exit-level" in context.node_config
    covered = from_node or not settings.profile_levels or shard.partition_id < len(settings.profile_levels)
    content = {}
    level = 0
    if covered:
        choice = _level_choice(settings, context, shard, num_classes, input_shape, select_device(settings))
        level = choice.level
        if LEVEL_CHOICE in context.state:  # an auto level: the server records what was measured and why
            content[LEVEL_CHOICE] = context.state[LEVEL_CHOICE]
    record = census_record(
        shard.partition_id, int(shard.meta["num_partitions"]), level, from_node, len(shard.train), len(shard.test)
    )
    return Message(RecordDict({"census": record, **content}), reply_to=msg)
