"""Continue a run that stopped (killed, crashed, out of time) from its last finished round.

Every finished round leaves ``checkpoint-round<N>.pt`` (the global model) in the run folder and
names it in ``results.json``, written after the checkpoint, so the two never disagree. A run with
``resume-from = "<run folder>"`` starts a fresh folder, copies the finished rounds' records, loads
the checkpoint and trains rounds N+1 .. ``num-server-rounds``. The clients hold no state between
rounds and seed each round from (seed, round, partition), so for stateless strategies the
continued run is the run that would have happened -- except for float summation order in the
aggregate. Strategies that keep server state (momentum, Adam moments, adaptive clipping) would
silently restart it, so they are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

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


def load_resume_point(run_dir: str | Path, settings: RunSettings) -> ResumePoint:
    """The stopped run in ``run_dir``, checked against ``settings``; a clear error if it
    cannot be continued with them."""
    run_dir = Path(run_dir).expanduser().resolve()
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise SettingsError(f"resume-from: no {RESULTS_FILE} in {run_dir}")
    results = json.loads(path.read_text())
    checkpoint = checkpoint_of(run_dir, results)
    if not checkpoint:
        raise SettingsError(f"resume-from: {run_dir} has no finished round to continue from")
    server_round = int(checkpoint["round"])
    if server_round >= settings.num_server_rounds:
        raise SettingsError(
            f"resume-from: {run_dir} already has {server_round} rounds; "
            f"num-server-rounds is {settings.num_server_rounds}"
        )
    if keeps_server_state(settings):
        raise SettingsError(
            f"resume-from: strategy {settings.strategy!r} (dp {settings.dp!r}) keeps server state "
            "that checkpoints do not hold; only stateless strategies can be continued"
        )
    stored, current = results.get("run_config", {}), settings.as_run_config()
    fixed = (
        ("num-server-rounds",) if settings.distill_ramp or settings.distill_warmup else ()
    )  # schedules scale with it
    differing = sorted(
        k for k in current if (k not in MAY_DIFFER or k in fixed) and k in stored and stored[k] != current[k]
    )
    if differing:
        shown = ", ".join(f"{k}: {stored[k]!r} there, {current[k]!r} here" for k in differing)
        raise SettingsError(f"resume-from: the run config differs from the stopped run's ({shown})")
    state_dict = torch.load(run_dir / checkpoint["file"], map_location="cpu", weights_only=True)
    return ResumePoint(run_dir, server_round, state_dict, results)
