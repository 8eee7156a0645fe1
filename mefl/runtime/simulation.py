"""Flower's simulation runtime driven from Python: a private ``flower-superlink --simulation``
on a free port with its own FLWR_HOME, and ``flwr run`` against it -- the path of ``flwr run .``
on a laptop, made repeatable for tests, benchmarks and the experiment command. Optionally the
runs attach to a Ray cluster started once (``RayCluster``), locally or across machines.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from .app_bundle import bundle_folder
from .processes import BIN, ManagedProcess, free_port, run_config_arg, start_logged, stop_processes


class SimulationSuperLink:
    """``ray_address``: attach every run's simulation to this running Ray cluster instead of
    starting (and tearing down) a private Ray instance per run."""

    def __init__(self, home: Path, ray_address: str | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.env = {
            **os.environ,
            **({"RAY_ADDRESS": ray_address} if ray_address else {}),
            "FLWR_HOME": str(home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        }
        self.process: ManagedProcess | None = None

    def __enter__(self) -> SimulationSuperLink:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        command = [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--disable-runtime-dependency-installation"]
        start_logged("superlink", command, self.home / "superlink.log", self.env, lambda p: setattr(self, "process", p))
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1):
                        return self
                except OSError:
                    if not self.process.running():
                        break
                    time.sleep(0.3)
            raise RuntimeError(f"SuperLink did not come up: {(self.home / 'superlink.log').read_text()[-2000:]}")
        except BaseException:  # no start, or Ctrl-C / SIGTERM while starting: __exit__ will not run
            self.__exit__(None, None, None)
            raise

    def run(
        self,
        app_dir: Path,
        run_config: dict,
        num_supernodes: int,
        timeout: float = 600,
        num_cpus: int = 1,
        num_gpus: float = 0.0,
        stdout=None,
    ) -> subprocess.CompletedProcess:
        """``flwr run`` of the app with ``num_supernodes`` simulated clients, each given
        ``num_cpus`` / ``num_gpus`` Ray resources; output captured unless ``stdout`` is a file."""
        federation = (
            f"num-supernodes={num_supernodes} client-resources-num-cpus={num_cpus} client-resources-num-gpus={num_gpus}"
        )
        with bundle_folder(app_dir, parent=self.home) as app:
            return subprocess.run(
                [
                    str(BIN / "flwr"),
                    "run",
                    str(app),
                    "test",
                    "--stream",
                    "--run-config",
                    run_config_arg(run_config),
                    "--federation-config",
                    federation,
                ],
                env=self.env,
                text=True,
                timeout=timeout,
                **({"stdout": stdout, "stderr": subprocess.STDOUT} if stdout is not None else {"capture_output": True}),
            )

    def __exit__(self, *exc) -> None:
        """Stop the SuperLink and everything it started."""
        if self.process is not None:
            stop_processes([self.process], grace=20)


class RayCluster:
    """A Ray cluster on 127.0.0.1: ``ray start --head --block`` plus optional worker nodes
    (``ray start --address ... --block``), each in its own process group, so that stopping it
    stops exactly these Ray processes and no other Ray on the machine."""

    def __init__(self, temp_dir: Path, num_cpus: int = 2, num_gpus: int | None = None) -> None:
        """``num_gpus``: the GPUs the head node offers (default: the ones Ray detects); a number
        above what the machine has declares logical GPUs, enough to exercise fractional GPU
        scheduling of clients on a machine without one."""
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp_dir = temp_dir
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        }
        self.nodes: list[ManagedProcess] = []

    def _start(self, args: list[str], num_cpus: int) -> None:
        command = [str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1"]
        command += ["--num-cpus", str(num_cpus), "--disable-usage-stats", *args]
        index = len(self.nodes)
        start_logged(f"ray-node{index}", command, self.temp_dir / f"node{index}.log", self.env, self.nodes.append)

    def __enter__(self) -> RayCluster:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        # Ray's session folder holds Unix sockets, whose paths must stay under 108 bytes.
        self.session_dir = Path(tempfile.mkdtemp(prefix="mefl-ray-", dir="/tmp"))
        gpus = ["--num-gpus", str(self.num_gpus)] if self.num_gpus is not None else []
        try:
            self._start(
                [
                    "--head",
                    "--port",
                    str(self.port),
                    "--include-dashboard",
                    "false",
                    "--temp-dir",
                    str(self.session_dir),
                    *gpus,
                ],
                self.num_cpus,
            )
            self.wait_for_nodes(1)
        except BaseException:  # Ctrl-C or SIGTERM while the head starts: __exit__ will not run
            self.__exit__(None, None, None)
            raise
        return self

    def add_worker(self, num_cpus: int) -> None:
        self._start(["--address", self.address], num_cpus)
        self.wait_for_nodes(len(self.nodes))

    def wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        probe = (
            f"import ray; ray.init(address='{self.address}', logging_level='ERROR'); "
            "print(len([n for n in ray.nodes() if n['Alive']]))"
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                out = subprocess.run(
                    [sys.executable, "-c", probe],
                    env=self.env,
                    capture_output=True,
                    text=True,
                    timeout=max(5.0, deadline - time.monotonic()),
                )
            except subprocess.TimeoutExpired:
                break
            if (
                out.returncode == 0
                and out.stdout.strip().splitlines()
                and int(out.stdout.strip().splitlines()[-1]) >= count
            ):
                return
            if any(not node.running() for node in self.nodes):
                break
            time.sleep(1)
        self.__exit__(None, None, None)
        logs = "".join(p.read_text()[-1500:] for p in sorted(self.temp_dir.glob("node*.log")))
        raise RuntimeError(f"Ray cluster at {self.address} did not reach {count} node(s): {logs}")

    def __exit__(self, *exc) -> None:
        stop_processes(list(reversed(self.nodes)), grace=30)
        if hasattr(self, "session_dir"):
            shutil.rmtree(self.session_dir, ignore_errors=True)
