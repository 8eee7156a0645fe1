"""Campaigns: named run configurations driven through Flower's simulation engine, resumable.

A campaign folder holds ``runs/<name>/`` per configuration (one run folder per attempt inside),
``campaign.json`` (every command that ran in it, with machine and time) and the report. A
configuration whose folder already holds a completed ``results.json`` is skipped; one whose last
attempt stopped after some finished rounds (or completed fewer rounds than now asked for) is
continued from its checkpoint (``resume-from``), so an interrupted campaign resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mefl_app.files import write_atomically
from mefl_app.server.resume import why_not_continuable
from mefl_app.server.run_folder import utc_now
from mefl_app.settings import RunSettings

from . import APP_DIR
from .runtime.simulation import RayCluster, SimulationSuperLink

VARIANTS = {"me": True, "se": False}  # run folder prefix -> multi-exit

# Settings a campaign varies per run, and the multi-exit loss settings, which a single-exit run
# ignores (``multi_exit_loss`` of one exit is plain cross-entropy).
PER_RUN_KEYS = ("multi-exit", "seed", "partition-seed", "output-dir", "resume-from", "client-state-dir")
LOSS_KEYS = ("distill-weight", "distill-temperature", "distill-teacher", "exit-loss-weights")


def gpu_share(text: str) -> float:
    """``--gpus-per-client``: Ray gives a client a fraction of one GPU or whole GPUs."""
    value = float(text)
    if value < 0 or (value > 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(
            f"{text}: give a share of one GPU (0 to 1, e.g. 0.25) or a whole number of GPUs"
        )
    return value


def add_task_and_seeds(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=["fmnist", "har"], required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per seed and configuration")


def add_campaign_options(parser: argparse.ArgumentParser) -> None:
    """Where a campaign writes, how many clients it simulates with what resources, and its run config."""
    parser.add_argument("--clients", type=int, default=24, help="simulated SuperNodes (num-supernodes)")
    add_client_resources(parser)
    parser.add_argument(
        "--run-config", default="", help='overrides for every run: flwr run syntax ("key=value ...") or one .toml file'
    )
    parser.add_argument("--out", type=Path, required=True, help="the campaign folder")


def add_client_resources(run: argparse.ArgumentParser) -> None:
    """``--cpus-per-client`` / ``--gpus-per-client``: what Ray gives each simulated client (every
    command that runs campaigns takes both)."""
    run.add_argument("--cpus-per-client", type=int, default=1)
    run.add_argument(
        "--gpus-per-client",
        type=gpu_share,
        default=0.0,
        help="share of a GPU each client gets from Ray, e.g. 0.25: four clients share one (default 0)",
    )


def completed_results(folder: Path) -> dict[str, Any] | None:
    """The newest completed results file under ``folder`` (a run folder per attempt)."""
    for path in sorted(folder.glob("*/results.json"), reverse=True):
        results = json.loads(path.read_text())
        if results.get("status") == "completed":
            results["_path"] = str(path)
            return results
    return None


def rounds_wanted(config: dict[str, Any]) -> int:
    return int(config.get("num-server-rounds", RunSettings.num_server_rounds))


def is_done(folder: Path, config: dict[str, Any]) -> bool:
    """A completed run with at least the configuration's rounds exists under ``folder``."""
    results = completed_results(folder)
    return results is not None and len(results["rounds"]) >= rounds_wanted(config)


def settings_of(config: dict[str, Any]) -> RunSettings:
    """The settings a run of ``config`` gets: the app's defaults, the overrides, its method's preset."""
    checked = {
        k: str(v) if isinstance(v, Path) else v for k, v in config.items() if k not in ("output-dir", "resume-from")
    }
    return RunSettings.from_app_dir(APP_DIR, checked)


def stopped_attempt(folder: Path, config: dict[str, Any]) -> Path | None:
    """The newest attempt under ``folder`` that can be continued to the configuration's rounds
    (resume.py: a checkpoint short of them, with the state its strategy keeps) -- stopped, or
    completed with fewer rounds -- to continue instead of starting over."""
    settings = settings_of(config)
    for path in sorted(folder.glob("*/results.json"), reverse=True):
        if why_not_continuable(path.parent, json.loads(path.read_text()), settings) is None:
            return path.parent
    return None


def run_configs(
    configs: dict[str, dict[str, Any]],
    out: Path,
    clients: int,
    cpus_per_client: int,
    log=print,
    gpus_per_client: float = 0.0,
    command: str = "",
) -> list[str]:
    """Run every named configuration whose folder ``out/runs/<name>`` has no completed results
    with its rounds; continue a stopped (or shorter) attempt where there is one. Each client gets
    ``cpus_per_client`` cores and ``gpus_per_client`` of a GPU from Ray (0.25: four share one).
    Returns the names of the configurations that did not complete."""
    for config in configs.values():  # every setting of every run is checked before any starts
        settings_of(config)
    todo = {name: config for name, config in configs.items() if not is_done(out / "runs" / name, config)}
    log(f"[mefl] {len(todo)} run(s) to do, {len(configs) - len(todo)} already completed")
    if not todo:
        return []
    out.mkdir(parents=True, exist_ok=True)
    record_invocation(out, command)
    work = out / ".work"
    folder = None  # the run in progress
    try:
        with (
            campaign_ray_cluster(work, log) as address,
            SimulationSuperLink(work / "flwr-home", ray_address=address) as link,
        ):
            failed = []
            for name, config in todo.items():
                folder = out / "runs" / name
                if not _run_one(link, name, config, folder, clients, cpus_per_client, gpus_per_client, log):
                    failed.append(name)
        return failed
    except KeyboardInterrupt:  # every process is stopped by now
        if folder is not None:
            record_abandoned(folder)
        raise


@contextmanager
def campaign_ray_cluster(work: Path, log=print) -> Iterator[str]:
    """The address of the Ray cluster every run of a campaign attaches to: the one ``RAY_ADDRESS``
    names (a multi-node cluster, docs/performance.md; left running), else a private cluster on this
    machine, started once for the campaign rather than once per run and stopped with it."""
    address = os.environ.get("RAY_ADDRESS", "")
    if address:
        log(f"[mefl] the runs attach to the Ray cluster at RAY_ADDRESS={address}")
        yield address
        return
    with RayCluster(work / "ray", num_cpus=os.cpu_count() or 1) as cluster:
        yield cluster.address


def _run_one(link, name, config, folder, clients, cpus_per_client, gpus_per_client, log) -> bool:
    """One configuration through ``link`` (continuing its stopped attempt); whether it completed."""
    folder.mkdir(parents=True, exist_ok=True)
    record_abandoned(folder, KILLED_BEFORE)  # a killed attempt must not read "running" once continued
    # The clients' own state (FedDyn's) is kept beside the attempts, so that one can be continued.
    config = {"client-state-dir": str((folder / "client-state").resolve()), **config}
    stopped = stopped_attempt(folder, config)
    if stopped is not None:
        config = {**config, "resume-from": str(stopped.resolve())}
    log(
        f"[mefl] {name}: started {datetime.now(UTC):%H:%M:%S} UTC" + (f", continuing {stopped.name}" if stopped else "")
    )
    started = time.perf_counter()
    with open(folder / "flwr-run.log", "a") as stream:
        link.run(
            APP_DIR,
            {**config, "output-dir": folder.resolve()},
            clients,
            timeout=7 * 24 * 3600,
            num_cpus=cpus_per_client,
            num_gpus=gpus_per_client,
            stdout=stream,
        )
    seconds = time.perf_counter() - started
    if is_done(folder, config):
        log(f"[mefl] {name}: completed in {seconds:.0f} s")
        return True
    log(f"[mefl] {name}: NOT completed after {seconds:.0f} s: {run_status(folder)[1]}")
    return False


def newest_results(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest attempt's results.json under ``folder`` (one run folder per attempt), or None."""
    for path in sorted(folder.glob("*/results.json"), reverse=True):
        return path, json.loads(path.read_text())
    return None


def process_alive(process: dict[str, Any]) -> bool:
    """Whether the ServerApp process a results.json names still runs; True when that cannot be
    told (another host, or a file written before processes were recorded)."""
    if process.get("host") != platform.node() or "pid" not in process:
        return True
    try:
        os.kill(int(process["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def killed(results: dict[str, Any]) -> bool:
    """A run that still says "running" while the ServerApp process it names is gone."""
    return results.get("status") == "running" and not process_alive(results.get("process", {}))


STOPPED_WITH_CAMPAIGN = "stopped with its campaign; its ServerApp was ended before it could record so"
KILLED_BEFORE = "its ServerApp ended without recording so (killed outright, its machine stopped); rerun continues it"


def record_abandoned(folder: Path, why: str = STOPPED_WITH_CAMPAIGN) -> None:
    """Record every attempt under ``folder`` that still says "running" while its ServerApp is gone
    as interrupted, ``why``: stopped with its campaign, it was ended (the stop's grace time ran out)
    before its own exit handler wrote so; or it was killed outright and a later campaign finds it
    (also an older attempt, when a run that cannot be continued was started afresh). Its last
    checkpoint continues it, as after any interrupt."""
    for path in sorted(folder.glob("*/results.json")):
        results = json.loads(path.read_text())
        if killed(results):
            results.update(status="interrupted", error=why, finished_at=utc_now())
            write_atomically(path, lambda tmp, results=results: tmp.write_text(json.dumps(results, indent=1)))


def run_status(folder: Path) -> tuple[str, str]:
    """(status, one line) of a run folder (``results.json`` inside) or of the newest attempt in a
    campaign's configuration folder."""
    found = (
        (folder / "results.json", json.loads((folder / "results.json").read_text()))
        if (folder / "results.json").is_file()
        else newest_results(folder)
    )
    if found is None:
        return "missing", f"no results.json in {folder} (see flwr-run.log there, or the SuperLink's log)"
    path, results = found
    status = results.get("status", "unknown")
    rounds = len([r for r in results.get("rounds", []) if "seconds" in r])
    detail = f"{status} after {rounds} of {results.get('run_config', {}).get('num-server-rounds', '?')} rounds"
    if killed(results):
        status = "killed"
        detail += " (its process is gone: killed outright; rerun the campaign to redo or continue it)"
    if results.get("error"):
        detail += f": {results['error']}"
    return status, f"{path.parent}: {detail}"


def record_invocation(out: Path, command: str) -> None:
    """Append ``command``, the machine and the time to ``campaign.json`` (the report cites it)."""
    path = out / "campaign.json"
    history = json.loads(path.read_text()) if path.exists() else []
    history.append(
        {
            "command": command,
            "started_at": utc_now(),
            "machine": f"{platform.node()}: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        }
    )
    path.write_text(json.dumps(history, indent=1))


def run_name(configuration: str, seed: int) -> str:
    """The folder under ``runs/`` of one configuration at one seed (``collect`` reads it back)."""
    return f"{configuration}-seed{seed}"


def collect(out: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """variant -> seed -> completed results, from the files under ``out/runs``."""
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for folder in sorted((out / "runs").glob("*-seed*")):
        variant, _, seed = folder.name.partition("-seed")
        results = completed_results(folder)
        if results is not None:
            found.setdefault(variant, {})[int(seed)] = results
    return found
