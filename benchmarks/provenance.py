"""Where a benchmark's raw numbers come from: the command, the time and the machine, and the JSON
file they are written to (benchmarks/results/)."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch


def provenance(machine_detail: str = "") -> dict[str, str]:
    """The command that ran (as typed), when, and on what (``machine_detail`` appended to the
    host, its CPUs and torch's version), with the load average at the end."""
    machine = f"{platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__}{machine_detail}"
    return {
        "command": f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{machine}, load average {os.getloadavg()[0]:.2f} at the end",
    }


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
