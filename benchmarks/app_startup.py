"""What a fresh process pays to load the app: wall time of a new interpreter importing PyTorch,
torchvision, and the ClientApp module with and without torchvision.

Flower's deployment starts a fresh ClientApp process for every message, and its simulation a
ServerApp process and one actor per concurrent client for every run, so this cost recurs. The
arms run interleaved (one of each per repetition), so that a noisy machine hits them alike;
compare them as ratios within one run.

    python benchmarks/app_startup.py --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARMS = {
    "import torch": "import torch",
    "import torch, torchvision": "import torch, torchvision",
    "ClientApp module": "import mefl_app.client_app",
    "ClientApp module + torchvision": "import torchvision, mefl_app.client_app",
}


def wall_time(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    wall_time("import mefl_app.client_app")  # warm the file cache once, untimed
    times = {arm: [] for arm in ARMS}
    for _ in range(args.repeats):
        for arm, code in ARMS.items():
            times[arm].append(wall_time(code))
    base = statistics.median(times["ClientApp module + torchvision"])
    print(f"`python benchmarks/app_startup.py --repeats {args.repeats}`, medians of {args.repeats} interleaved runs\n")
    print("| process imports | median s | min-max s | ratio to ClientApp + torchvision |\n|---|---|---|---|")
    for arm, values in times.items():
        median = statistics.median(values)
        print(f"| {arm} | {median:.2f} | {min(values):.2f}-{max(values):.2f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
