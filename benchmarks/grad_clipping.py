"""Diagnostic: how hard does gradient clipping bite the multi-exit vs the single-exit model?

For finished runs (their ``results.json`` and final ``model.pt``), replays one local epoch of each
client's training from the final global model with the app's own ``train_local`` -- same
settings, shards and loss as the run -- and records the total gradient norm of every step before
clipping. Reports, per run, the median norm, the share of steps that ``max-grad-norm`` clipped and
the mean factor it scaled the step by.

    python benchmarks/grad_clipping.py results/study/har-distill-0.5/runs/me-seed0 \
        results/study/har-distill-0.5/runs/se-seed0 --json out.json

Checkpoints are not kept in git: rerun a campaign's command (results/README.md) to regenerate its
``model.pt`` files first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

import torch

from mefl_app.data.shards import make_client_shard
from mefl_app.settings import RunSettings
from mefl_app.task import build_model, load_task_data
from mefl_app.train import train_local


def replay(run_folder: Path) -> dict:
    results_path = next(run_folder.glob("*/results.json"))
    results = json.loads(results_path.read_text())
    settings = RunSettings.from_run_config(results["run_config"])
    if settings.max_grad_norm <= 0:
        raise SystemExit(f"{results_path}: the run did not clip gradients (max-grad-norm = 0)")
    torch.set_num_threads(1)
    data = load_task_data(settings)
    final = torch.load(results_path.parent / "model.pt")
    norms: list[float] = []
    one_epoch = dataclasses.replace(settings, local_epochs=1)
    clients = len(results["partitions"])  # one shard per simulated SuperNode
    for partition in range(clients):
        shard = make_client_shard(data, settings, partition, clients)
        model = build_model(settings, data.num_classes, data.input_shape)
        model.load_state_dict(final)
        torch.manual_seed(partition)  # dropout masks seeded per client, so the replay repeats exactly
        train_local(
            model,
            shard.train,
            one_epoch,
            generator=torch.Generator().manual_seed(partition),
            device=torch.device("cpu"),
            grad_norms=norms,
        )
    limit = settings.max_grad_norm
    return {
        "run": str(results_path),
        "multi_exit": settings.multi_exit,
        "max_grad_norm": limit,
        "steps": len(norms),
        "median_norm": statistics.median(norms),
        "share_clipped": sum(n > limit for n in norms) / len(norms),
        "mean_scale": statistics.fmean(min(1.0, limit / n) for n in norms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (e.g. <campaign>/runs/me-seed0)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = [replay(folder) for folder in args.runs]
    for r in rows:
        print(
            f"{r['run']}: multi-exit={r['multi_exit']} steps={r['steps']} median grad norm {r['median_norm']:.2f} "
            f"(max-grad-norm {r['max_grad_norm']}): {r['share_clipped']:.0%} of steps clipped, mean step scale "
            f"{r['mean_scale']:.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
