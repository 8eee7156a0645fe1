"""Processes and ports on this machine, for the local runners (simulation and deployment).

Every process is started in its own session; stopping signals its process group AND every
descendant that left it (Flower's SuperLink starts its SuperExec in a new session), waits, then
SIGKILLs what is left -- only processes we started, never a reused pid. Each started process is
also given to a watchdog process that outlives this one: if this process is killed outright
(SIGKILL), the watchdog stops what it had started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

BIN = Path(sys.executable).parent


def flwr_bin(name: str) -> str:
    """Flower's console scripts next to this interpreter (a venv), else from PATH."""
    candidate = BIN / name
    return str(candidate) if candidate.exists() else name


def free_port(taken: set[int] | None = None) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not taken or port not in taken:
            return port


def port_is_bound(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def run_config_arg(config: dict[str, Any] | str) -> str:
    """``--run-config`` syntax: strings quoted, numbers and booleans bare (TOML)."""
    if isinstance(config, str):
        return config

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        return f"'{v}'" if isinstance(v, (str, Path)) else str(v)

    return " ".join(f"{k}={value(v)}" for k, v in config.items())


# -- processes ------------------------------------------------------------------------------
def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) for every process we may see."""
    table: dict[int, tuple[int, str]] = {}
    if os.path.isdir("/proc"):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    stat = handle.read()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
            table[int(entry)] = (int(fields[1]), fields[19])  # ppid, starttime
        return table
    out = subprocess.run(["ps", "-A", "-o", "pid=,ppid=,lstart="], capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3:
            table[int(parts[0])] = (int(parts[1]), parts[2])
    return table


def descendants(pids: list[int]) -> dict[int, str]:
    """Every process below ``pids`` (children, grandchildren, ...), pid -> start time. Flower's
    SuperLink starts its SuperExec in a new session, so a process group does not cover it."""
    table = _proc_table()
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _) in table.items():
        children[ppid].append(pid)
    found: dict[int, str] = {}
    stack = list(pids)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found[child] = table[child][1]
                stack.append(child)
    return found


def descendants_named(pids: list[int], name: str) -> dict[int, str]:
    """The descendants of ``pids`` whose command line contains ``name`` (e.g. ``flwr-serverapp``)."""
    found = {}
    for pid, started in descendants(pids).items():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if name.encode() in handle.read():
                    found[pid] = started
        except OSError:
            pass
    return found


def process_alive(pid: int, started: str | None = None) -> bool:
    """Still running and still the same process (not a reused pid), zombies count as gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
        fields = stat[stat.rfind(")") + 2 :].split()
        return fields[0] != "Z" and (started is None or fields[19] == started)
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


@dataclass
class ManagedProcess:
    """One process this deployment started, in its own session (process group); the watchdog
    guards it from the start."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    log: IO[Any] | None = None

    def __post_init__(self) -> None:
        Watchdog.guard(self.popen.pid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)  # pgid == pid: started with start_new_session
        except (ProcessLookupError, PermissionError):
            pass


def start_logged(
    name: str, command: list[str], log_path: Path, env: dict[str, str], record: Callable[[ManagedProcess], None]
) -> ManagedProcess:
    """Start ``command`` in its own session with its output in ``log_path``; ``record`` (e.g. a
    list's ``append``) keeps it before a Ctrl-C can unwind, so that whoever stops processes finds it."""
    log = open(log_path, "w")
    with deferred_interrupts():
        popen = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        process = ManagedProcess(name, popen, log_path, log)
        record(process)
    return process


def stop_processes(processes: list[ManagedProcess], grace: float = 10.0, first: int = signal.SIGTERM) -> None:
    """Signal every process group (and every descendant that left it) with ``first``, wait up
    to ``grace`` seconds, then SIGKILL whatever is left; reap everything. Only processes we
    started or their descendants are signalled."""
    # Only unreaped processes: a reaped one's pid may belong to someone else by now.
    tracked = [p for p in processes if p.running()]
    below = descendants([p.pid for p in tracked])

    def signal_all(sig: int) -> None:
        for proc in tracked:
            if proc.running():
                proc.signal_group(sig)
        for pid, started in below.items():
            if process_alive(pid, started):
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    def wait(until: float) -> bool:
        while time.monotonic() < until:
            below.update(descendants([p.pid for p in tracked if p.running()]))
            if not any(p.running() for p in tracked) and not any(process_alive(pid, s) for pid, s in below.items()):
                return True
            time.sleep(0.1)
        return False

    if tracked or below:
        signal_all(first)
        if not wait(time.monotonic() + grace):
            signal_all(signal.SIGKILL)
            wait(time.monotonic() + 10)
    for proc in processes:
        try:
            proc.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.signal_group(signal.SIGKILL)
            proc.popen.wait(timeout=5)
        if proc.log is not None and not proc.log.closed:
            proc.log.close()


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a reused pid apart), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()[19]


def stop_pids(pids: dict[int, str | None], grace: float = 10.0) -> None:
    """Stop processes known only by pid and start time, with their process groups and every
    descendant: SIGTERM, ``grace`` seconds, SIGKILL (for the watchdog, which holds no Popen)."""
    targets = {pid: started for pid, started in pids.items() if process_alive(pid, started)}
    targets.update(descendants(list(targets)))

    def signal_all(sig: int) -> None:
        for pid, started in targets.items():
            if process_alive(pid, started):
                try:
                    if os.getpgid(pid) == pid:  # a group leader: its whole group
                        os.killpg(pid, sig)
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(process_alive(pid, s) for pid, s in targets.items()):
        time.sleep(0.2)
    signal_all(signal.SIGKILL)


class Watchdog:
    """A process (``python -m mefl.runtime.watchdog``) that reads ``pid start-time`` lines from this
    one through a pipe; when the pipe closes -- this process exited or was killed, even by
    SIGKILL -- it stops every guarded process still alive, with its descendants. Started on the
    first ``guard``, in its own session so that a Ctrl-C meant for this process leaves it alone."""

    _pipe: IO[str] | None = None
    _lock = threading.Lock()

    @classmethod
    def guard(cls, pid: int) -> None:
        started = start_time(pid)
        if started is None:  # no /proc here, or already gone
            return
        with cls._lock:
            if cls._pipe is None:
                watchdog = subprocess.Popen(
                    [sys.executable, "-m", "mefl.runtime.watchdog"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    text=True,
                    start_new_session=True,
                )
                cls._pipe = watchdog.stdin
            try:
                cls._pipe.write(f"{pid} {started}\n")
                cls._pipe.flush()
            except OSError:  # the watchdog is gone: nothing more can be done
                pass


_TERMINATIONS = (signal.SIGTERM, signal.SIGHUP)


def interrupt_on_termination() -> None:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt, so that a command stopped by ``kill`` or a
    closed terminal unwinds like Ctrl-C and its ``with`` blocks stop the processes they started
    (Python's default for SIGTERM exits at once and would orphan them)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in _TERMINATIONS:
        signal.signal(sig, interrupt)


_INTERRUPTS = (signal.SIGINT, *_TERMINATIONS)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold Ctrl-C (and SIGTERM/SIGHUP) until the block is done, then raise it.

    For "start a process and record it": an interrupt in between would leave a child that
    nobody stops. A no-op outside the main thread (only it can set handlers). Ignored signals
    and handlers installed from C (which Python cannot reinstall) are left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, Any] = {}
    try:
        for sig in _INTERRUPTS:
            handler = signal.getsignal(sig)
            if handler is not None and handler != signal.SIG_IGN:
                previous[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
        yield
    finally:
        _restore_handlers(previous)
    if caught:
        handler = previous[caught[0]]
        if callable(handler):
            handler(caught[0], None)  # KeyboardInterrupt, as if the signal came now
        else:  # SIG_DFL
            signal.raise_signal(caught[0])


def _restore_handlers(previous: dict[int, Any]) -> None:
    """``signal.signal`` runs pending handlers before it installs: one already restored may raise
    KeyboardInterrupt there. Restore every handler all the same, then raise it."""
    interrupted: BaseException | None = None
    for sig, handler in previous.items():
        while True:
            try:
                signal.signal(sig, handler)
                break
            except KeyboardInterrupt as error:  # not installed yet: try again
                interrupted = interrupted or error
    if interrupted is not None:
        raise interrupted
