"""What a client keeps between rounds (FedDyn's state g), also on its own disk, so that a stopped
run continues with it (``resume-from``); Flower's ``Context.state`` lives in memory only.

With ``client-state-dir`` set, a client writes its state after each round it trains to
``<client-state-dir>/<run>/partition-<id>-round<r>.pt``, ``<run>`` the server's run folder name
(the server sends it in the train config, ``client-state-runs``, followed by the folders of the
attempts the run continues, newest first). Its two newest rounds are kept: a run killed after a
client trained round N+1 but before the server saved that round continues from round N's. A client
whose ``Context.state`` is empty (a fresh process) takes the newest state older than the current
round from the first of those runs that has one.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .files import write_atomically

RUNS_KEY = "client-state-runs"  # in the train config: this run's folder name, then its earlier attempts'
KEPT = 2  # rounds kept per client and run


def _files(folder: Path, partition_id: int) -> dict[int, Path]:
    pattern = re.compile(rf"partition-{partition_id}-round(\d+)\.pt")
    found = {}
    for path in folder.glob(f"partition-{partition_id}-round*.pt"):
        match = pattern.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def save_client_state(
    root: str | Path, run: str, partition_id: int, server_round: int, state: dict[str, torch.Tensor]
) -> None:
    """Write ``state`` after ``server_round`` and drop all but this client's ``KEPT`` newest rounds."""
    folder = Path(root).expanduser() / run
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"partition-{partition_id}-round{server_round}.pt"
    write_atomically(target, lambda tmp: torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp))
    files = _files(folder, partition_id)
    for old in sorted(files)[:-KEPT]:
        files[old].unlink(missing_ok=True)


def load_client_state(
    root: str | Path, runs: list[str], partition_id: int, before_round: int
) -> dict[str, torch.Tensor] | None:
    """The newest state this client saved before ``before_round`` in the first of ``runs`` (newest
    first) that holds one, or None."""
    for run in runs:
        files = {r: p for r, p in _files(Path(root).expanduser() / run, partition_id).items() if r < before_round}
        if files:
            return torch.load(files[max(files)], map_location="cpu", weights_only=True)
    return None
