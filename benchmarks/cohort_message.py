"""What a cohort message costs its ClientApp beside the training: one ``train.cohort`` and one
``evaluate.cohort`` message handled in this process (the ClientApp's own functions, no Flower
engine), for K partitions of an N-client Fashion-MNIST federation, split into the batched
training (``cohort.train_cohort``) and everything else (settings, shards, models, per-member
scoring and replies) per member. That rest is paid once per client however the clients are
grouped, so it is what keeps a large federation's round from costing what a small one's does
(benchmarks/RESULTS.md, "A round's cost as the federation grows").

    python benchmarks/cohort_message.py --clients 240 --members 10 --repeats 5 --json OUT.json

1 torch thread (the app's layout); medians over the repeats, after one warm-up message each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance, write_json  # noqa: E402

from mefl_app import client_app  # noqa: E402
from mefl_app.server.cohort_grid import COHORT_ACTION, PARTITIONS_KEY  # noqa: E402
from mefl_app.settings import RunSettings  # noqa: E402
from mefl_app.task import build_model, load_task_data  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="~/.cache/mefl/data")
    parser.add_argument("--clients", type=int, default=240, help="N: the federation's size")
    parser.add_argument("--members", type=int, default=10, help="K: partitions 0..K-1 in the cohort")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = 1, 0, 1  # Flower stamps messages
    run_config = {"data-dir": args.data_dir, "local-epochs": 1, "min-partition-size": 8}
    settings = RunSettings.from_run_config(run_config)
    data = load_task_data(settings)
    model = build_model(settings, data.num_classes, data.input_shape)
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": args.clients},
        state=RecordDict(),
        run_config=run_config,
    )
    config = {
        "num-classes": data.num_classes,
        "input-shape": list(data.input_shape),
        "server-round": 1,
        PARTITIONS_KEY: list(range(args.members)),
    }

    def message(kind: str) -> Message:
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord(config)})
        return Message(content, dst_node_id=1, message_type=f"{kind}.{COHORT_ACTION}")

    training_seconds: list[float] = []
    real_train_cohort = client_app.train_cohort

    def timed_train_cohort(*a, **kw):
        started = time.perf_counter()
        result = real_train_cohort(*a, **kw)
        training_seconds.append(time.perf_counter() - started)
        return result

    seconds: dict[str, list[float]] = {"train message": [], "of it training": [], "evaluate message": []}
    with mock.patch.object(client_app, "train_cohort", timed_train_cohort):
        for repeat in range(args.repeats + 1):  # the first is the warm-up
            started = time.perf_counter()
            client_app.train_cohort_message(message("train"), context)
            train = time.perf_counter() - started
            started = time.perf_counter()
            client_app.evaluate_cohort_message(message("evaluate"), context)
            evaluate = time.perf_counter() - started
            if repeat:
                seconds["train message"].append(train)
                seconds["of it training"].append(training_seconds[-1])
                seconds["evaluate message"].append(evaluate)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    per_member_ms = {
        "train message beside the training": 1000 * (median["train message"] - median["of it training"]) / args.members,
        "evaluate message": 1000 * median["evaluate message"] / args.members,
    }
    print(f"N = {args.clients} clients, a cohort of K = {args.members}:")
    for name, value in median.items():
        print(f"  {name}: {value:.3f} s")
    for name, value in per_member_ms.items():
        print(f"  per member, {name}: {value:.1f} ms")
    if args.json:
        result = {
            **provenance(", 1 thread"),
            "clients": args.clients,
            "members": args.members,
            "seconds": seconds,
            "median_seconds": median,
            "per_member_ms": per_member_ms,
        }
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
