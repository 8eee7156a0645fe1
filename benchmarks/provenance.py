"""Where a benchmark's raw numbers come from: the command, the time and the machine, the JSON
file they are written to (benchmarks/results/), and the line that cites them in RESULTS.md."""

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
    host, its CPUs and torch's version), with the load average when this is called: call it once
    the measuring is done."""
    machine = f"{platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__}{machine_detail}"
    return {
        "command": f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{machine}, load average {os.getloadavg()[0]:.2f} at the end",
    }


def cited(report: dict) -> str:
    """ "`command` -- date, machine": the line above a benchmark's table. Files written before the
    machine was one line hold a dict (cpu_count, processor, torch, maybe a GPU device)."""
    machine = report.get("machine", f"torch {report.get('torch', '?')}")
    if isinstance(machine, dict):
        machine = f"{machine['cpu_count']} cores ({machine['processor']}), torch {machine['torch']}" + (
            f", GPU {machine['device']}" if machine.get("device", "cpu") != "cpu" else ""
        )
    return f"`{report['command']}` -- {report['date']}, {machine}"


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
