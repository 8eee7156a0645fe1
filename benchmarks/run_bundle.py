"""What ``flwr run`` pays to bundle the app, from the checkout (``flwr run .``, which walks the
virtual environment inside it) against from the bundle's own folder (``mefl.runtime.app_bundle``,
what mefl's runners hand it), and a whole 2-round, 4-client simulation run either way.

The arms run interleaved (one of each per repetition), so that a noisy machine hits them alike;
compare them as ratios within one run.

    python benchmarks/run_bundle.py --repeats 7 --run-repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

from mefl.runtime.app_bundle import bundle_folder
from mefl.runtime.processes import BIN, run_config_arg
from mefl.runtime.simulation import RayCluster, SimulationSuperLink

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from helpers import SHORT_RUN, write_idx_fashion_mnist  # noqa: E402  (the tests' small IDX files)


def bundle_seconds(from_checkout: bool) -> float:
    start = time.perf_counter()
    if from_checkout:
        build_fab_from_disk(REPO)
    else:
        with bundle_folder(REPO) as folder:
            build_fab_from_disk(folder)
    return time.perf_counter() - start


def run_seconds(link: SimulationSuperLink, app: Path, config: dict) -> float:
    start = time.perf_counter()
    command = [str(BIN / "flwr"), "run", str(app), "test", "--stream", "--run-config", run_config_arg(config)]
    command += ["--federation-config", "num-supernodes=4 client-resources-num-cpus=1"]
    subprocess.run(command, env=link.env, check=True, capture_output=True)
    return time.perf_counter() - start


def staged_run_seconds(link: SimulationSuperLink, config: dict) -> float:
    start = time.perf_counter()
    with bundle_folder(REPO, parent=link.home) as folder:
        run_seconds(link, folder, config)
    return time.perf_counter() - start


def table(title: str, times: dict[str, list[float]], base: str) -> None:
    print(f"\n{title}\n\n| arm | median s | min-max s | ratio to {base} |\n|---|---|---|---|")
    reference = statistics.median(times[base])
    for arm, values in times.items():
        median = statistics.median(values)
        print(f"| {arm} | {median:.2f} | {min(values):.2f}-{max(values):.2f} | {median / reference:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="repetitions of the bundle step alone")
    parser.add_argument("--run-repeats", type=int, default=3, help="repetitions of the whole run (0: none)")
    args = parser.parse_args()
    files = sum(len(names) for _, _, names in os.walk(REPO))
    print(f"`python benchmarks/run_bundle.py --repeats {args.repeats} --run-repeats {args.run_repeats}`")
    print(f"({files} files under the checkout), medians of interleaved repetitions")
    bundle_seconds(True)  # warm the file cache once, untimed
    steps = {"from the checkout": [], "from the bundle's folder": []}
    for _ in range(args.repeats):
        steps["from the checkout"].append(bundle_seconds(True))
        steps["from the bundle's folder"].append(bundle_seconds(False))
    table("Bundling the app (what `flwr run` does first)", steps, "from the checkout")
    if not args.run_repeats:
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = write_idx_fashion_mnist(Path(tmp) / "data", n_train=320, n_test=80)
        config = {"data-dir": data, "output-dir": Path(tmp) / "out", **SHORT_RUN}
        runs = {"from the checkout": [], "from the bundle's folder": []}
        with RayCluster(Path(tmp) / "ray", num_cpus=os.cpu_count() or 1) as cluster:
            with SimulationSuperLink(Path(tmp) / "home", ray_address=cluster.address) as link:
                for _ in range(args.run_repeats):
                    runs["from the checkout"].append(run_seconds(link, REPO, config))
                    runs["from the bundle's folder"].append(staged_run_seconds(link, config))
        table("A whole run: `flwr run` of 2 rounds, 4 clients, on one Ray cluster", runs, "from the checkout")


if __name__ == "__main__":
    main()
