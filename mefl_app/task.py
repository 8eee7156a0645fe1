"""What a task is: its data, its model and this node's shard, chosen by the ``task`` setting."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .data.fashion_mnist import load_fashion_mnist
from .data.shards import ClientShard, check_shard_matches, load_shard, make_client_shard
from .data.tensors import TaskData
from .data.unimib_shar import load_har
from .model.flops import flop_counter, forward_mflops_per_exit
from .model.loss import multi_exit_loss
from .model.lstm import MultiExitLSTM
from .model.resnet import MultiExitResNet
from .seeds import central_holdout_seed
from .settings import AUTO_LEVEL, RunSettings, SettingsError


def load_task_data(settings: RunSettings) -> TaskData:
    """The task's data pool (to shard) and central test set; cached per process."""
    if settings.task == "har":
        return load_har(
            settings.data_path,
            settings.har_subset,
            settings.central_test_fraction,
            central_holdout_seed(settings.partition_seed),
        )
    return load_fashion_mnist(settings.data_path)


def build_model(
    settings: RunSettings, num_classes: int, input_shape: tuple[int, ...], level: int | None = None
) -> nn.Module:
    """The task's multi-exit model (or its single-exit baseline with ``multi-exit = false``).

    ``level = k`` builds only the front of it: the layers up to exit k and exits 1..k, whose
    parameter names are exactly the full model's names for those parts. ``channels-last`` stores
    the ResNet's convolution weights NHWC, which oneDNN's CPU convolutions run faster (measured
    in benchmarks/RESULTS.md); state dicts keep their names, shapes and values."""
    exits = settings.exit_positions[:level]
    if settings.task == "har":
        return MultiExitLSTM(
            num_classes,
            input_size=input_shape[-1],
            hidden_size=settings.hidden_size,
            exit_after=exits,
            dropout=settings.exit_dropout,
        )
    model = MultiExitResNet(
        num_classes, in_channels=input_shape[0], exit_after=exits, norm=settings.norm, dropout=settings.exit_dropout
    )
    return model.to(memory_format=torch.channels_last) if settings.channels_last else model


@functools.lru_cache(maxsize=8)
def model_costs(
    settings: RunSettings, num_classes: int, input_shape: tuple[int, ...], level: int | None = None
) -> tuple[list[float], float]:
    """Measured on the real model (once per process): forward MFLOPs of one sample to each exit,
    and MFLOPs of one sample's training step (forward and backward of the multi-exit loss)."""
    model = build_model(settings, num_classes, input_shape, level)
    forward = forward_mflops_per_exit(model, torch.zeros(input_shape))
    x, y = torch.randn(2, *input_shape), torch.zeros(2, dtype=torch.long)
    with flop_counter() as counter:
        multi_exit_loss(
            model(x),
            y,
            distill_weight=settings.distill_weight,
            temperature=settings.distill_temperature,
            teacher=settings.distill_teacher,
            exit_weights=settings.loss_weights(model.num_exits),
        ).backward()
    return forward, counter.get_total_flops() / 2 / 1e6


def exit_level(settings: RunSettings, node_config: Mapping[str, Any], partition_id: int) -> int:
    """How many exits this client runs: its SuperNode's ``exit-level``, else its entry in
    ``exit-profile``, else all of them; ``AUTO_LEVEL`` when the client is to pick (budget.py)."""
    deepest = settings.num_exits
    if "exit-level" in node_config:
        if str(node_config["exit-level"]).strip() == "auto":
            return AUTO_LEVEL
        try:
            level = int(node_config["exit-level"])
        except ValueError:
            raise SettingsError(
                f'node config exit-level must be 1..{deepest} or "auto", got {node_config["exit-level"]!r}'
            ) from None
    elif settings.profile_levels:
        if partition_id >= len(settings.profile_levels):
            raise SettingsError(
                f"exit-profile {settings.exit_profile!r} covers {len(settings.profile_levels)} clients, "
                f"but partition {partition_id} exists"
            )
        level = settings.profile_levels[partition_id]
        if level == AUTO_LEVEL:
            return AUTO_LEVEL
    else:
        level = deepest
    if not 1 <= level <= deepest:
        raise SettingsError(f"exit-level must lie in 1..{deepest}, got {level}")
    return level


def initial_model(settings: RunSettings, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """The global model of round 0, seeded by ``seed`` so that runs repeat exactly."""
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)
        return build_model(settings, num_classes, input_shape)


def level_array_names(settings: RunSettings, num_classes: int, input_shape: tuple[int, ...]) -> dict[int, list[str]]:
    """Exit level -> names of the arrays a client at that level holds (and sends)."""
    return {
        level: list(build_model(settings, num_classes, input_shape, level).state_dict())
        for level in range(1, settings.num_exits + 1)
    }


def layer_prefix(settings: RunSettings) -> str:
    """Name prefix of the model's stacked layers in its state dict: ``blocks.<i>.`` (ResNet) or
    ``layers.<i>.`` (LSTM), i counted from 0."""
    return "layers" if settings.task == "har" else "blocks"


def hypernetwork_pairs(settings: RunSettings) -> list[tuple[str, str]]:
    """(shallower, deeper) weights of consecutive blocks (the ResNet's two convolutions) or layers
    (the LSTM's input and recurrent weights), shallow to deep: what HypeMeFed's hypernetworks map."""
    unit, blocks = layer_prefix(settings), range(settings.exit_positions[-1] - 1)
    names = ("weight_ih_l0", "weight_hh_l0") if settings.task == "har" else ("conv1.weight", "conv2.weight")
    return [(f"{unit}.{b}.{n}", f"{unit}.{b + 1}.{n}") for b in blocks for n in names]


def exit_names(settings: RunSettings) -> list[str]:
    """Exit labels by the block/layer they follow, so single- and multi-exit runs line up."""
    unit = "block" if settings.task == "fmnist" else "layer"
    return [f"{unit}{b}" for b in settings.exit_positions]


def load_client_shard(
    settings: RunSettings, node_config: Mapping[str, Any], num_classes: int, input_shape: tuple[int, ...]
) -> ClientShard:
    """This node's shard: a ``shard-file`` from its node config (a real device holding only its
    own data), else computed from ``partition-id`` / ``num-partitions`` (simulation).

    ``num_classes`` / ``input_shape`` are those of the server's model; a shard file written
    for another data set is refused before any training.
    """
    if "shard-file" in node_config:
        shard = load_shard(str(node_config["shard-file"]))
        check_shard_matches(shard, settings, num_classes, input_shape)
        return shard
    try:
        partition_id, num_partitions = int(node_config["partition-id"]), int(node_config["num-partitions"])
    except KeyError as missing:
        raise SettingsError(
            f"node config lacks {missing}: give a SuperNode either shard-file=... or partition-id=... "
            "num-partitions=..."
        ) from None
    return make_client_shard(load_task_data(settings), settings, partition_id, num_partitions)
