"""``python -m mefl.runtime.watchdog``: stops the processes a mefl launcher started once the
launcher is gone, however it went (see ``processes.Watchdog``)."""

import signal
import sys

from .processes import descendants_named, process_alive, stop_pids


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only the launcher's end of the pipe ends the watch
    guarded: dict[int, str] = {}
    for line in sys.stdin:  # until the launcher's end of the pipe closes
        pid, started = line.split()
        guarded[int(pid)] = started
    # As a clean stop does it: the run first (its ServerApp records it as interrupted), then the rest.
    alive = [pid for pid, started in guarded.items() if process_alive(pid, started)]  # not a reused pid
    stop_pids(descendants_named(alive, "flwr-serverapp"), grace=30)
    stop_pids(guarded)


if __name__ == "__main__":
    main()
