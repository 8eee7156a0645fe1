"""Do two runs' results.json agree to the last bit, apart from what differs between any two runs
(times, run ids, node ids, paths)? Used to check that a refactoring leaves a seeded run unchanged.

    python benchmarks/same_results.py RUN_A/results.json RUN_B/results.json

Exits 0 and prints "identical" when they agree, else lists every differing key path and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# Keys whose values differ between any two runs of the same configuration.
VOLATILE = {
    "started_at",
    "finished_at",
    "wall_seconds",
    "earlier_wall_seconds",
    "run_id",
    "seconds",
    "client_train_seconds",
    "errors",
}
PATHS = {"output-dir", "data-dir", "resume-from"}  # run-config keys that name folders


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Key paths where ``a`` and ``b`` differ (floats compared exactly)."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(a.keys() | b.keys()):
            if key in VOLATILE or (path.endswith("run_config") and key in PATHS):
                continue
            if key not in a or key not in b:
                found.append(f"{path}.{key}: only in {'the second' if key not in a else 'the first'}")
            else:
                found += differences(a[key], b[key], f"{path}.{key}")
        return found
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} entries"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args()
    found = differences(json.loads(args.first.read_text()), json.loads(args.second.read_text()))
    print("identical" if not found else "\n".join(found))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
