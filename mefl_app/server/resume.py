"""Continue a run that stopped (killed, crashed, out of time) from its last finished round.

Every finished round leaves ``checkpoint-round<N>.pt`` (the global model) in the run folder and
names it in ``results.json``, written after the checkpoint, so the two never disagree. A run with
``resume-from = "<run folder>"`` starts a fresh folder, copies the finished rounds' records, loads
the checkpoint and trains rounds N+1 .. ``num-server-rounds``. The clients seed each round from (seed,
round, partition), and what strategies keep between rounds (momentum, Adam moments, FedDyn's h,
HypeMeFed's hypernetworks) is saved with every checkpoint (server_state.py), as FedDyn's clients
save theirs under ``client-state-dir`` (client_state.py); so the continued run is the run that
would have happened -- except for float summation order in the aggregate. What cannot be
restored (adaptive DP clipping's state; FedDyn clients' state kept in memory only) is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..settings import RunSettings, SettingsError
from .run_folder import RESULTS_FILE, ResumePoint, checkpoint_of
from .strategies import keeps_server_state

# Settings that may change between the stopped run and its continuation: they do not change
# what is trained (or, for num-server-rounds, only how long).
MAY_DIFFER = (
    "num-server-rounds",
    "output-dir",
    "resume-from",
    "data-dir",
    "round-timeout",
    "reply-poll-seconds",
    "device",
    "torch-threads",
    "channels-last",
    "eval-batch-size",
)


def why_not_continuable(run_dir: Path, results: dict[str, Any], settings: RunSettings) -> str | None:
    """Why the run in ``run_dir`` (its ``results``) cannot be continued with ``settings``, or None."""
    checkpoint = checkpoint_of(run_dir, results)
    if not checkpoint:
        return f"{run_dir} has no finished round to continue from"
    missing = [
        checkpoint[k] for k in ("file", "server_state") if k in checkpoint and not (run_dir / checkpoint[k]).is_file()
    ]
    if missing:  # deleted, or a copy of the folder without its git-ignored .pt files
        return f"{run_dir} names {', '.join(missing)}, which is not there: start over"
    if int(checkpoint["round"]) >= settings.num_server_rounds:
        return f"{run_dir} already has {checkpoint['round']} rounds; num-server-rounds is {settings.num_server_rounds}"
    if settings.dp == "adaptive":
        return "adaptive DP clipping keeps state (its clipping norm) that checkpoints do not hold: start over"
    if keeps_server_state(settings) and "server_state" not in checkpoint:
        return f"{run_dir} was saved without its strategy's server state (an older mefl): start over"
    if settings.strategy == "feddyn" and not settings.client_state_dir:
        return "FedDyn's clients keep their state in memory only (client-state-dir is empty): start over"
    stored, current = results.get("run_config", {}), settings.as_run_config()
    fixed = (
        ("num-server-rounds",) if settings.distill_ramp or settings.distill_warmup else ()
    )  # schedules scale with it
    differing = sorted(
        k for k in current if (k not in MAY_DIFFER or k in fixed) and k in stored and stored[k] != current[k]
    )
    if differing:
        shown = ", ".join(f"{k}: {stored[k]!r} there, {current[k]!r} here" for k in differing)
        return f"the run config differs from the stopped run's ({shown})"
    return None


def load_resume_point(run_dir: str | Path, settings: RunSettings) -> ResumePoint:
    """The stopped run in ``run_dir``, checked against ``settings``; a clear error if it
    cannot be continued with them."""
    run_dir = Path(run_dir).expanduser().resolve()
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise SettingsError(f"resume-from: no {RESULTS_FILE} in {run_dir}")
    results = json.loads(path.read_text())
    why = why_not_continuable(run_dir, results, settings)
    if why:
        raise SettingsError(f"resume-from: {why}")
    checkpoint = checkpoint_of(run_dir, results)
    state_dict = torch.load(run_dir / checkpoint["file"], map_location="cpu", weights_only=True)
    server_state = (
        torch.load(run_dir / checkpoint["server_state"], map_location="cpu", weights_only=True)
        if "server_state" in checkpoint
        else None
    )
    return ResumePoint(run_dir, int(checkpoint["round"]), state_dict, results, server_state)
