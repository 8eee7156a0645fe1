"""Cohort training against the per-client loop, in one process: the local training of a whole
federation's clients (the study's shards of real Fashion-MNIST, 24 clients, alpha 0.2, every client
at the deepest level) one client after the other (``train.train_local``, today's client) and in
cohorts of K (``cohort.train_by_level`` on clients sorted by shard size, as ``CohortGrid`` groups
them). Arms interleaved over the repeats; medians; 1 torch thread (the app's layout: one thread
per simulated client).

    python benchmarks/cohort_train.py --data-dir /root/.cache/mefl/data --epochs 1 --sizes 4 8 12 24 --json OUT.json

This is the training work of a round without Flower; the app adds its per-message cost on top
(benchmarks/app_vs_plain.py measures that).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance, write_json  # noqa: E402

from mefl_app.cohort import train_by_level  # noqa: E402
from mefl_app.data.shards import make_client_shard  # noqa: E402
from mefl_app.settings import RunSettings  # noqa: E402
from mefl_app.task import initial_model, load_task_data  # noqa: E402
from mefl_app.train import train_local  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="~/.cache/mefl/data")
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=1, help="local epochs of the round")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 12, 24], help="cohort sizes K")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = RunSettings.from_run_config({"data-dir": args.data_dir, "local-epochs": args.epochs})
    data = load_task_data(settings)
    shards = [make_client_shard(data, settings, p, args.clients) for p in range(args.clients)]
    order = sorted(range(args.clients), key=lambda p: len(shards[p].train))
    model = initial_model(settings, data.num_classes, data.input_shape)
    device = torch.device("cpu")

    def generators():
        return [torch.Generator().manual_seed(1000 + p) for p in range(args.clients)]

    def per_client():
        for p, generator in zip(range(args.clients), generators()):
            train_local(initial_copy(), shards[p].train, settings, generator=generator, device=device)

    def cohorts(k):
        gens = generators()
        for start in range(0, args.clients, k):
            members = order[start : start + k]
            train_by_level(
                [initial_copy() for _ in members],
                [shards[p].train for p in members],
                settings,
                generators=[gens[p] for p in members],
                device=device,
            )

    def initial_copy():
        copy = initial_model(settings, data.num_classes, data.input_shape)
        copy.load_state_dict(model.state_dict())
        return copy

    arms = {"per-client": per_client, **{f"cohort K={k}": (lambda k=k: cohorts(k)) for k in args.sizes}}
    seconds = {name: [] for name in arms}
    for repeat in range(args.repeats):
        for name, run in arms.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
            print(f"repeat {repeat + 1}: {name} {seconds[name][-1]:.1f} s", flush=True)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    samples = sum(len(s.train) for s in shards) * args.epochs
    result = {
        **provenance(", 1 thread"),
        "clients": args.clients,
        "epochs": args.epochs,
        "training_samples": samples,
        "shard_sizes": sorted(len(s.train) for s in shards),
        "seconds": seconds,
        "median_seconds": median,
        "ratio_to_per_client": {name: median[name] / median["per-client"] for name in median},
    }
    print(json.dumps({k: result[k] for k in ("median_seconds", "ratio_to_per_client")}, indent=2))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
