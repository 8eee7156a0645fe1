"""Test helpers around :mod:`mefl_app.simulation` (the app's own simulation runner)."""

from __future__ import annotations

import json
from pathlib import Path

from mefl_app.simulation import RayCluster, SimulationSuperLink

__all__ = ["RayCluster", "SimulationSuperLink", "only_results"]


def only_results(output_dir: Path) -> dict:
    files = sorted(output_dir.glob("*/results.json"))
    assert len(files) == 1, f"expected one run folder in {output_dir}, found {files}"
    return json.loads(files[0].read_text())
