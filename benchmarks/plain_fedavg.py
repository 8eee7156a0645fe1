"""Plain-PyTorch reference of one mefl federation: same shards, model, local training and
weighted FedAvg, sequential in one process, no Flower, no Ray.

Used to study design choices quickly (normalisation layer, learning rate) and, in the
performance benchmark, as the baseline the Flower app is measured against.

    python benchmarks/plain_fedavg.py --clients 24 --rounds 3 --run-config "norm='batch' learning-rate=0.05"
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from torch import nn

from mefl_app.data.shards import make_client_shard
from mefl_app.device import apply_thread_setting, select_device
from mefl_app.evaluate import evaluate_exits
from mefl_app.metrics import pool
from mefl_app.seeds import client_round_seed
from mefl_app.settings import RunSettings
from mefl_app.task import build_model, initial_model, load_task_data
from mefl_app.train import train_local


def fedavg(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    total = sum(weights)
    return {
        key: sum(state[key].double() * (w / total) for state, w in zip(states, weights)).to(states[0][key].dtype)
        for key in states[0]
    }


def with_batch_statistics(model: nn.Module) -> nn.Module:
    """A copy whose BatchNorm layers normalise with each batch's own statistics instead of
    the FedAvg-averaged running statistics (a diagnostic: which of the two is broken?)."""
    probe = copy.deepcopy(model)
    for module in probe.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats, module.running_mean, module.running_var = False, None, None
    return probe


def run(settings: RunSettings, num_clients: int, rounds: int, log=print) -> list[dict]:
    apply_thread_setting(settings)
    device = select_device(settings)  # the run config's ``device``, as in the ClientApp
    data = load_task_data(settings)
    shards = [make_client_shard(data, settings, pid, num_clients) for pid in range(num_clients)]
    model = initial_model(settings, data.num_classes, data.input_shape).to(device)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    history = []
    for server_round in range(1, rounds + 1):
        started = time.perf_counter()
        states, weights, personalized = [], [], []
        for shard in shards:
            local = build_model(settings, data.num_classes, data.input_shape).to(device)
            local.load_state_dict(global_state)
            seed = client_round_seed(settings.seed, server_round, shard.partition_id)
            torch.manual_seed(seed)
            train_local(local, shard.train, settings, generator=torch.Generator().manual_seed(seed), device=device)
            personalized.append(evaluate_exits(local, shard.test, batch_size=settings.eval_batch_size, device=device))
            states.append(local.state_dict())
            weights.append(len(shard.train))
        global_state = fedavg(states, weights)
        train_seconds = time.perf_counter() - started
        model.load_state_dict(global_state)
        central = evaluate_exits(model, data.test, batch_size=settings.eval_batch_size, device=device)
        global_local = pool(
            evaluate_exits(model, s.test, batch_size=settings.eval_batch_size, device=device) for s in shards
        )
        entry = {
            "round": server_round,
            "train_seconds": train_seconds,
            "round_seconds": time.perf_counter() - started,
            "personalized": pool(personalized).accuracy,
            "global_local": global_local.accuracy,
            "central": central.accuracy,
        }
        if settings.norm == "batch":
            probe = with_batch_statistics(model)
            entry["central_batch_stats"] = evaluate_exits(
                probe, data.test, batch_size=settings.eval_batch_size, device=device
            ).accuracy
        history.append(entry)
        log(json.dumps(entry))
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run-config", default="", help="overrides of pyproject's [tool.flwr.app.config]")
    args = parser.parse_args()
    settings = RunSettings.from_app_dir(".", args.run_config)
    print(json.dumps({"clients": args.clients, "rounds": args.rounds, "run_config": args.run_config}))
    run(settings, args.clients, args.rounds)


if __name__ == "__main__":
    main()
