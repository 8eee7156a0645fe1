"""How far float rounding alone carries one client's local training: the same client (a real
Fashion-MNIST shard of the study's split, dropout off) trained from the same model with the same
batches three ways -- the per-client loop on 1 and on 2 torch threads, and as a cohort of one
(``cohort.train_cohort``: grouped convolutions, NHWC) -- and the relative L2 distance between the
resulting parameters after each number of local epochs. The two thread counts differ only in the
order of float sums, so their distance is the yardstick for "equal to float tolerance": SGD over
hundreds of steps amplifies rounding, and a cohort run's accuracies differ from a per-client run's
by as much as two per-client runs on different thread counts do.

    python benchmarks/float_drift.py --epochs 1 5 --json benchmarks/results/float_drift_fmnist.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance, write_json  # noqa: E402

from mefl_app.cohort import train_cohort  # noqa: E402
from mefl_app.data.shards import make_client_shard  # noqa: E402
from mefl_app.settings import RunSettings  # noqa: E402
from mefl_app.task import initial_model, load_task_data  # noqa: E402
from mefl_app.train import train_local  # noqa: E402

CPU = torch.device("cpu")


def relative_distance(a: dict, b: dict) -> float:
    """||a - b|| / ||b|| over every floating-point tensor of two state dicts."""
    keys = [k for k in b if b[k].is_floating_point()]
    num = sum(((a[k] - b[k]).double() ** 2).sum() for k in keys)
    return float((num / sum((b[k].double() ** 2).sum() for k in keys)).sqrt())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="~/.cache/mefl/data")
    parser.add_argument("--partition", type=int, default=0, help="which of the 24 clients")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for epochs in args.epochs:
        settings = RunSettings.from_app_dir(
            Path(__file__).resolve().parents[1],
            {"data-dir": args.data_dir, "exit-dropout": 0.0, "local-epochs": epochs},
        )
        data = load_task_data(settings)
        shard = make_client_shard(data, settings, args.partition, 24)
        torch.manual_seed(settings.seed)
        start = initial_model(settings, data.num_classes, data.input_shape)
        trained = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            model = copy.deepcopy(start)
            train_local(model, shard.train, settings, generator=torch.Generator().manual_seed(100), device=CPU)
            trained[threads] = model.state_dict()
        torch.set_num_threads(1)
        cohort = train_cohort(
            [copy.deepcopy(start)], [shard.train], settings, generators=[torch.Generator().manual_seed(100)], device=CPU
        ).state_dicts[0]
        row = {
            "epochs": epochs,
            "samples": len(shard.train),
            "moved_by_training": relative_distance(trained[1], start.state_dict()),
            "per_client_2_vs_1_thread": relative_distance(trained[2], trained[1]),
            "cohort_vs_per_client": relative_distance(cohort, trained[1]),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {**provenance(), "rows": rows}
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
