"""What a round costs as the federation grows at the same total work: the app through Flower's
simulation engine with N clients sharing one data pool (so N x shard = the same 48,000 training
samples at every N), one client at a time against cohorts of ceil(N / 24) clients (24 training
messages a round at every N; mefl_app/cohort.py). One run, arms one after the other, on this
machine; per arm: the round's seconds (training, the clients' evaluation and the central one), the
start-up, and the peak memory (summed PSS of the SuperLink's process tree).

    python benchmarks/federation_size.py --clients 24 100 500 --json benchmarks/results/federation_size_fmnist.json
    python benchmarks/federation_size.py --render benchmarks/results/federation_size_fmnist.json

``min-partition-size`` is 8 at every N: at Dirichlet(0.2) no draw of 500 shards gives every shard
the default 20 (the split would refuse).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from flwr.common.config import parse_config_args

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app_vs_plain import run_app  # noqa: E402
from provenance import cited, provenance, write_json  # noqa: E402

MESSAGES = 24  # training messages a round in the cohort arms


def arms(clients: int) -> dict[str, dict]:
    """The arms for one federation size: name -> extra run config."""
    size = math.ceil(clients / MESSAGES)
    found = {f"{clients} clients, one at a time": {"cohort-size": 0}}
    if size > 1:
        found[f"{clients} clients, cohorts of {size}"] = {"cohort-size": size}
    return found


def render_markdown(report: dict) -> str:
    lines = [
        cited(report),
        "",
        f"Workload: {report['workload']}",
        "",
    ]
    first, base = next((name, r["round_seconds"][-1]) for name, r in report["runs"].items())
    lines += [
        f"| arm | s per round | ratio to {first} | start-up s | peak PSS MB | final central acc |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report["runs"].items():
        seconds = r["round_seconds"][-1]
        lines.append(
            f"| {name} | {seconds:.1f} | {seconds / base:.2f} | {r['startup_seconds']:.1f} | "
            f"{r['peak_pss_mb']:.0f} | {r['final_central']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render", type=Path, help="print the Markdown table of this --json file and stop")
    parser.add_argument("--clients", type=int, nargs="+", default=[24, 100, 500])
    parser.add_argument("--data-dir", default=None, help="data-dir run-config value (default: pyproject's)")
    parser.add_argument("--run-config", default="", help="further overrides, flwr run syntax")
    parser.add_argument("--json", type=Path, help="write the raw numbers here, after every arm")
    args = parser.parse_args()
    if args.render:
        print(render_markdown(json.loads(args.render.read_text())))
        return
    overrides = (
        "task='fmnist' local-epochs=1 min-partition-size=8"
        + (f" data-dir='{args.data_dir}'" if args.data_dir else "")
        + " "
        + args.run_config
    )
    task_config = parse_config_args([overrides])
    report = {
        **provenance(),
        "workload": f"Fashion-MNIST, 1 round, run config {overrides.strip()}, {os.cpu_count()} clients x 1 thread "
        "at a time (Ray)",
        "runs": {},
        "finished": False,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for clients in args.clients:
            for name, extra in arms(clients).items():
                print(f"running: {name}", flush=True)
                report["runs"][name] = run_app(task_config, clients, 1, 1, 1, Path(tmp), **extra)
                print(f"done: {name}: " + json.dumps(report["runs"][name]), flush=True)
                if args.json:
                    write_json(args.json, {**report, **provenance()})
    report["finished"] = True
    report.update(provenance())
    if args.json:
        write_json(args.json, report)
    print(render_markdown(report))


if __name__ == "__main__":
    main()
