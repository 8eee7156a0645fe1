"""A run's output folder: ``results.json`` rewritten after every round, checkpoints, final model.

The file is replaced atomically, so a run killed at any moment leaves a readable file whose
``status`` tells how it ended: "completed" (its numbers are real), "failed" (with the reason),
"interrupted" (stopped by a signal: Ctrl-C, SIGTERM, ``flwr stop``; resumable) or still "running"
(or the process was killed outright, e.g. SIGKILL: ``process`` names its host and pid, and
``mefl status`` reports such a run "killed"; resumable too), and whose
``checkpoint`` names the global model of the last finished round and, for a strategy that keeps
state between rounds, that state (``resume-from`` continues from both, see resume.py); only a
completed run has ``model.pt``.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord
from flwr.common.logger import log
from flwr.supercore.run import RunNotRunningException

from ..files import write_atomically
from ..health import strict_json
from ..metrics import ExitScores, pool, summarize_exits

ACCURACY_KINDS = ("personalized", "global_local", "central")
RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class ResumePoint:
    """A stopped run as far as it got: its folder, last finished round, that round's global model
    and its results.json (what a continuation takes over)."""

    run_dir: Path
    server_round: int  # the last finished round; the continuation starts after it
    state_dict: dict[str, torch.Tensor]
    results: dict[str, Any]
    server_state: dict[str, Any] | None = None  # the strategies' state after that round (server_state.py)


def checkpoint_of(run_dir: Path, results: dict[str, Any]) -> dict[str, Any] | None:
    """``{"round", "file"}`` of the model a run can be continued from, or None. Completed runs
    written before checkpoints were named in results.json continue from their ``model.pt``."""
    if results.get("checkpoint"):
        return results["checkpoint"]
    if results.get("status") == "completed" and (run_dir / "model.pt").is_file():
        return {"round": len(results["rounds"]), "file": "model.pt"}
    return None


def _remove_checkpoint(run_dir: Path, checkpoint: dict[str, Any]) -> None:
    """Delete a checkpoint's files (the model and, where saved, the server state)."""
    for key in ("file", "server_state"):
        if key in checkpoint:
            (run_dir / checkpoint[key]).unlink(missing_ok=True)


def utc_now() -> str:
    """The time as results files record it: UTC, ISO 8601, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _elapsed_until_last_write(run_dir: Path, results: dict[str, Any]) -> float:
    """Wall time of a run that was killed: from its start to its last results.json write."""
    started = datetime.fromisoformat(results["started_at"]).timestamp()
    return max(0.0, (run_dir / RESULTS_FILE).stat().st_mtime - started)


def make_run_dir(output_dir: Path, label: str) -> Path:
    """A fresh folder ``<output-dir>/<UTC time>-<label>``; never reuses an existing one."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    for attempt in range(100):
        run_dir = output_dir / (f"{stamp}-{label}" + (f"-{attempt}" if attempt else ""))
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a fresh run folder under {output_dir}")


class RunRecorder:
    """Collects per-round metrics, bytes and timings, and keeps ``results.json`` current."""

    def __init__(self, run_dir: Path, header: dict[str, Any], exit_names: list[str], target: float) -> None:
        self.run_dir = run_dir
        self._lock = threading.RLock()  # a signal's exit handler may write from another thread
        self.exit_names = exit_names
        self.target = target
        self._started = time.monotonic()
        self._earlier_seconds = 0.0  # wall time of the attempts this run continues
        self._round_started: dict[int, float] = {}
        self.results: dict[str, Any] = {
            "status": "running",
            "started_at": utc_now(),
            "process": {"host": platform.node(), "pid": os.getpid()},  # tells a live run from a killed one
            **header,
            "exit_names": exit_names,
            "target_accuracy": target,
            "partitions": {},
            "initial_central": None,
            "rounds": [],
            "rounds_to_target": {},
            "bytes_to_target": {},
        }
        self.write()

    def describe(self, details: dict[str, Any]) -> None:
        """Add what is known once the data and the model are loaded (model, data, thresholds)."""
        self.results.update(details)
        self.write()

    def continue_from(self, point: ResumePoint) -> None:
        """Take over the stopped run's finished rounds and its checkpoint (copied here, so this
        folder alone can be resumed again)."""
        before = point.results
        for key in ("partitions", "initial_central"):
            self.results[key] = before.get(key, self.results[key])
        for entry in before["rounds"]:
            if entry["round"] <= point.server_round and "seconds" in entry:
                self.results["rounds"].append(entry)
                self._update_targets(entry)
        self._earlier_seconds = before.get("wall_seconds") or (
            before.get("earlier_wall_seconds", 0.0) + _elapsed_until_last_write(point.run_dir, before)
        )
        self.results["earlier_wall_seconds"] = self._earlier_seconds
        self.results["resumed"] = [
            *before.get("resumed", []),
            {"from": str(point.run_dir), "after_round": point.server_round},
        ]
        self._save_checkpoint(point.server_round, ArrayRecord(point.state_dict), point.server_state)
        self.write()

    # -- per-round collection ------------------------------------------------------------
    def _round(self, server_round: int) -> dict[str, Any]:
        rounds = self.results["rounds"]
        if not rounds or rounds[-1]["round"] != server_round:
            self._round_started.setdefault(server_round, time.monotonic())
            rounds.append(
                {
                    "round": server_round,
                    "bytes_down": 0,
                    "bytes_up": 0,
                    "replies": {},
                }
            )
        return rounds[-1]

    def round_started(self, server_round: int) -> None:
        self._round_started[server_round] = time.monotonic()
        self._round(server_round)

    def add_bytes(self, server_round: int, *, down: int = 0, up: int = 0) -> None:
        entry = self._round(server_round)
        entry["bytes_down"] += down
        entry["bytes_up"] += up

    def record_replies(
        self, server_round: int, phase: str, sent: int, ok: dict[int, int], failed: dict[int, str]
    ) -> None:
        """``ok``: node id -> partition id; ``failed``: node id -> error reason."""
        self._round(server_round)["replies"][phase] = {
            "sent": sent,
            "ok": len(ok),
            "failed": len(failed),
            "missing": sent - len(ok) - len(failed),
            "partitions": sorted(ok.values()),
            "errors": {str(node): reason for node, reason in failed.items()},
        }
        if failed or sent != len(ok):
            log(
                WARNING,
                "[mefl] round %d %s: %d/%d replies ok, %d failed, %d missing",
                server_round,
                phase,
                len(ok),
                sent,
                len(failed),
                sent - len(ok) - len(failed),
            )

    def record_scores(self, server_round: int, kind: str, per_client: dict[int, ExitScores]) -> None:
        """Per-exit accuracies of one kind, pooled over the clients that replied, and the
        early-exit policy's accuracy and average cost per confidence threshold."""
        if not per_client:
            return
        entry = self._round(server_round)
        entry[kind] = summarize_exits(per_client, self.exit_names)
        pooled = pool(per_client.values())
        entry[f"{kind}_ensemble"] = {"accuracy": pooled.ensemble_accuracy}
        if pooled.early_correct:
            entry[f"{kind}_early_exit"] = {
                "accuracy": pooled.early_accuracy,
                "mflops_per_sample": pooled.early_average_mflops,
            }

    def record_value(self, server_round: int, key: str, value: Any) -> None:
        self._round(server_round)[key] = value

    def record_federation(self, census: dict[int, dict[str, int]]) -> None:
        """What the nodes said in the census before round 1, by partition id: exit level (and
        whether the node's own config set it), shard sizes."""
        by_partition = sorted((answer["partition-id"], answer) for answer in census.values())
        self.results["federation"] = {
            str(pid): {k: v for k, v in answer.items() if k != "partition-id"} for pid, answer in by_partition
        }
        self.write()

    def record_partition(self, partition_id: int, info: dict[str, Any]) -> None:
        self.results["partitions"].setdefault(str(partition_id), info)

    def record_central(self, server_round: int, scores: ExitScores) -> None:
        summary = {
            name: {"accuracy": scores.accuracy[e], "loss": scores.loss[e]} for e, name in enumerate(self.exit_names)
        }
        if server_round == 0:
            self.results["initial_central"] = summary
        else:
            self._round(server_round)["central"] = summary
            self._round(server_round)["central_ensemble"] = {"accuracy": scores.ensemble_accuracy}

    # -- end of round ---------------------------------------------------------------------
    def finish_round(
        self,
        server_round: int,
        num_rounds: int,
        arrays: ArrayRecord | None = None,
        server_state: dict[str, Any] | None = None,
    ) -> None:
        """Close the round's record; with ``arrays``, also checkpoint the global model and the
        strategies' ``server_state`` (the previous round's files are deleted once results.json
        names the new ones)."""
        previous_checkpoint = self.results.get("checkpoint")
        if arrays is not None:
            self._save_checkpoint(server_round, arrays, server_state)
        entry = self._round(server_round)
        entry["seconds"] = time.monotonic() - self._round_started.get(server_round, self._started)
        previous = self.results["rounds"][-2]["bytes_cumulative"] if len(self.results["rounds"]) > 1 else 0
        entry["bytes_cumulative"] = previous + entry["bytes_down"] + entry["bytes_up"]
        self._update_targets(entry)
        self.write()
        if arrays is not None and previous_checkpoint and previous_checkpoint["round"] != server_round:
            _remove_checkpoint(self.run_dir, previous_checkpoint)
        log(INFO, "[mefl] %s", self.progress_line(entry, num_rounds))

    def _save_checkpoint(
        self, server_round: int, arrays: ArrayRecord, server_state: dict[str, Any] | None = None
    ) -> None:
        name = f"checkpoint-round{server_round}.pt"
        self.save_arrays(arrays, name)
        self.results["checkpoint"] = {"round": server_round, "file": name}
        if server_state:
            state_name = f"server-state-round{server_round}.pt"
            write_atomically(self.run_dir / state_name, lambda tmp: torch.save(server_state, tmp))
            self.results["checkpoint"]["server_state"] = state_name

    def _update_targets(self, entry: dict[str, Any]) -> None:
        for kind in ACCURACY_KINDS:
            reached = self.results["rounds_to_target"].setdefault(kind, {name: None for name in self.exit_names})
            bytes_at = self.results["bytes_to_target"].setdefault(kind, {name: None for name in self.exit_names})
            for name, metrics in entry.get(kind, {}).items():
                if reached[name] is None and metrics["accuracy"] >= self.target:
                    reached[name] = entry["round"]
                    bytes_at[name] = entry["bytes_cumulative"]

    def progress_line(self, entry: dict[str, Any], num_rounds: int) -> str:
        def accs(kind: str) -> str:
            metrics = entry.get(kind)
            return (
                "/".join(f"{metrics[n]['accuracy']:.3f}" if n in metrics else "-" for n in self.exit_names)
                if metrics
                else "-"
            )

        train = entry["replies"].get("train", {})
        return (
            f"round {entry['round']}/{num_rounds} {entry['seconds']:.1f}s | acc per exit "
            f"({'/'.join(self.exit_names)}): personalized {accs('personalized')}, "
            f"global-on-local {accs('global_local')}, central {accs('central')} | "
            f"replies {train.get('ok', 0)}/{train.get('sent', 0)} | {entry['bytes_cumulative'] / 1e6:.1f} MB"
        )

    # -- files ----------------------------------------------------------------------------
    def save_arrays(self, arrays: ArrayRecord, name: str) -> Path:
        state_dict = arrays.to_torch_state_dict()
        return write_atomically(self.run_dir / name, lambda tmp: torch.save(state_dict, tmp))

    def complete(self, final_arrays: ArrayRecord) -> None:
        """Save the final model; it is also the last round's checkpoint (a longer run can
        continue from it), so the round-numbered copy goes."""
        self.save_arrays(final_arrays, "model.pt")
        checkpoint = self.results.get("checkpoint")
        if checkpoint:
            self.results["checkpoint"] = {**checkpoint, "file": "model.pt"}
        self._close("completed")
        if checkpoint:
            (self.run_dir / checkpoint["file"]).unlink(missing_ok=True)

    def fail(self, error: BaseException) -> None:
        """Close the run as failed with ``error``, or as interrupted when a signal stopped it."""
        reason = "".join(traceback.format_exception_only(type(error), error)).strip()
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            self.interrupt(f"stopped by {type(error).__name__}")
            return
        if isinstance(error, RunNotRunningException):  # the SuperLink refuses a stopped run's calls
            self.interrupt("the SuperLink stopped the run (flwr stop)")
            return
        with self._lock:
            if self.results["status"] == "running":
                self.results["error"] = reason
                self._close("failed")

    def interrupt(self, reason: str) -> None:
        """Close a still running run as interrupted (resumable from its last checkpoint)."""
        with self._lock:
            if self.results["status"] == "running":
                self.results["error"] = reason
                self._close("interrupted")

    def _close(self, status: str) -> None:
        with self._lock:
            self.results["status"] = status
            self.results["finished_at"] = utc_now()
            self.results["wall_seconds"] = self._earlier_seconds + time.monotonic() - self._started
            self.write()
        detail = f": {self.results['error']}" if status != "completed" else ""
        log(
            INFO if status == "completed" else WARNING,
            "[mefl] run %s (%s)%s",
            status,
            self.run_dir / RESULTS_FILE,
            detail,
        )

    def write(self) -> None:
        with self._lock:
            text = json.dumps(strict_json(self.results), indent=1, allow_nan=False)
            write_atomically(self.run_dir / RESULTS_FILE, lambda tmp: tmp.write_text(text))
