"""A real deployment on this machine: one SuperLink, N SuperNodes, each its own process.

    mefl deploy --nodes 3 --run-config "num-server-rounds=3 local-epochs=1"

brings up ``flower-superlink`` (deployment runtime, not ``--simulation``) and N
``flower-supernode`` processes on 127.0.0.1, secured as on real devices: TLS with a fresh
self-signed CA, and SuperNode authentication (the SuperLink admits only SuperNodes whose public
key was registered with ``flwr supernode register``). It waits until every SuperNode is online,
runs the app with ``flwr run <app-dir> <connection> --stream``, and stops every process it
started (process groups, SIGTERM then SIGKILL) on success, error, Ctrl-C or SIGTERM.

Everything of a deployment lives in one work folder (default ``<app-dir>/outputs/deploy/<UTC
time>``): ``certs/`` (CA, SuperLink certificate, one key pair per SuperNode), ``flwr-home/`` (the
private Flower configuration, ``config.toml``, with the connection entry), ``logs/`` (one log per
process, plus ``flwr-run.log``). Results go where the run config's ``output-dir`` says (relative
paths resolve against the app folder), as in simulation.

``--insecure`` drops TLS and authentication for a quick local look: never on a network.

The class :class:`LocalDeployment` is the same machinery for tests and scripts.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from .. import APP_DIR
from .app_bundle import bundle_folder
from .certificates import NodeKeys, ServerCertificates, make_node_keys, make_server_certificates
from .processes import (
    BIN,
    ManagedProcess,
    deferred_interrupts,
    descendants_named,
    flwr_bin,
    free_port,
    interrupt_on_termination,
    port_is_bound,
    run_config_arg,
    stop_pids,
    stop_processes,
)

CONNECTION = "mefl-local"


# -- the deployment -------------------------------------------------------------------------
@dataclass
class Node:
    index: int
    port: int
    node_config: str
    keys: NodeKeys | None
    process: ManagedProcess | None = None
    node_id: int | None = None  # from registration


@dataclass
class RunOutcome:
    returncode: int
    run_id: int | None
    status: str | None  # Flower's run status, e.g. "finished:completed"
    results_path: Path | None
    output: str
    seconds: float

    @property
    def results(self) -> dict[str, Any]:
        if self.results_path is None:
            raise FileNotFoundError(f"run {self.run_id} wrote no results.json\n{self.output[-3000:]}")
        return json.loads(self.results_path.read_text())


@dataclass
class LocalDeployment:
    """One SuperLink and its SuperNodes on this machine, stopped by :meth:`close` (or ``with``).

    ``secure``: TLS + SuperNode authentication (default); ``False`` is ``--insecure``.
    """

    workdir: Path
    app_dir: Path = APP_DIR
    secure: bool = True
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    echo: bool = False  # copy flwr run's output to stdout
    timestamps: bool = False  # prefix every log line with the wall-clock time (Flower's own lines have none)
    env_extra: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list, init=False)
    processes: list[ManagedProcess] = field(default_factory=list, init=False)
    certs: ServerCertificates | None = field(default=None, init=False)
    superlink: ManagedProcess | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.app_dir = Path(self.app_dir).resolve()
        self.logs = self.workdir / "logs"
        self.flwr_home = self.workdir / "flwr-home"
        self._ports: set[int] = set()
        self._pumps: list[threading.Thread] = []
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.flwr_home),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PYTHONUNBUFFERED": "1",
            **self.env_extra,
        }
        self.env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")  # no network calls from a local test bed
        self.env.setdefault("FLWR_TELEMETRY_ENABLED", "0")

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> LocalDeployment:
        try:
            self.start_superlink()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _spawn(self, name: str, args: list[str]) -> ManagedProcess:
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{name}.log"
        log = open(log_path, "a")
        with deferred_interrupts():  # recorded before Ctrl-C can unwind: close() stops it
            popen = subprocess.Popen(
                args,
                env=self.env,
                cwd=self.app_dir,
                stderr=subprocess.STDOUT,
                stdout=subprocess.PIPE if self.timestamps else log,
                text=self.timestamps,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self.timestamps:

                def pump(out: IO[str]) -> None:
                    with out:
                        for line in popen.stdout:
                            out.write(f"{datetime.now().isoformat(timespec='milliseconds')} {line}")
                            out.flush()

                thread = threading.Thread(target=pump, args=(log,), name=f"log-{name}", daemon=True)
                thread.start()
                self._pumps.append(thread)
                log = None  # the pump closes it at the end of the output
            proc = ManagedProcess(name, popen, log_path, log)
            with self._lock:
                self.processes.append(proc)
        return proc

    def start_superlink(self, timeout: float = 60) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self._ports)
        self._ports.add(self.port)
        if self.secure:
            self.certs = make_server_certificates(self.workdir / "certs")
            tls = [
                "--ssl-ca-certfile",
                str(self.certs.ca_cert),
                "--ssl-certfile",
                str(self.certs.server_cert),
                "--ssl-keyfile",
                str(self.certs.server_key),
                "--enable-supernode-auth",
            ]
        else:
            tls = ["--insecure"]
        self._write_flwr_config()
        self.superlink = self._spawn(
            "superlink",
            [
                flwr_bin("flower-superlink"),
                *tls,
                "--host",
                self.host,
                "--port",
                str(self.port),
                # Flower would otherwise `uv sync` [project].dependencies (PyTorch) into a fresh
                # environment for every run; mefl is installed once, like on the devices.
                "--disable-runtime-dependency-installation",
            ],
        )
        context = ssl.create_default_context(cafile=str(self.certs.ca_cert)) if self.certs else None
        url = f"{'https' if self.secure else 'http'}://{self.address}/health"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2, context=context):
                    return
            except OSError:
                if not self.superlink.running():
                    break
                time.sleep(0.2)
        raise RuntimeError(f"SuperLink did not come up at {url}:\n{self.tail(self.superlink)}")

    def _write_flwr_config(self) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        entry = f'root-certificates = "{self.certs.ca_cert}"' if self.certs else "insecure = true"
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{self.address}"\n{entry}\n'
        )

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """The ``flwr`` CLI against this deployment's private Flower configuration."""
        return subprocess.run(
            [flwr_bin("flwr"), *args], env=self.env, cwd=self.workdir, capture_output=True, text=True, timeout=timeout
        )

    def register(self, keys: NodeKeys) -> int:
        """``flwr supernode register <public key> <connection>``: admit a SuperNode's key."""
        proc = self.flwr("supernode", "register", str(keys.public_key), CONNECTION, "--format", "json")
        try:
            return int(json.loads(proc.stdout[proc.stdout.index("{") :])["node-id"])
        except (ValueError, KeyError) as error:
            raise RuntimeError(f"registering {keys.public_key} failed: {proc.stdout}{proc.stderr}") from error

    def add_node(self, node_config: str, *, register: bool = True, start: bool = True) -> Node:
        """A SuperNode with its own Runtime API port, node config and (secure mode) key pair."""
        return self.add_nodes([node_config], register=register, start=start)[0]

    def add_nodes(self, node_configs: list[str], *, register: bool = True, start: bool = True) -> list[Node]:
        """SuperNodes, one per node config; their keys are registered in parallel."""
        new = []
        for node_config in node_configs:
            index = len(self.nodes)
            keys = make_node_keys(self.workdir / "certs" / "nodes", f"node{index}") if self.secure else None
            node = Node(index, free_port(self._ports | {self.port}), node_config, keys)
            self._ports.add(node.port)
            self.nodes.append(node)
            new.append(node)
        if register and self.secure:
            errors: list[BaseException] = []

            def register_one(node: Node) -> None:
                try:
                    node.node_id = self.register(node.keys)
                except BaseException as error:  # re-raised below
                    errors.append(error)

            # daemon: after Ctrl-C the launcher must not wait for a registration to time out
            threads = [threading.Thread(target=register_one, args=(n,), daemon=True) for n in new]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise errors[0]
        if start:
            for node in new:
                self.start_node(node)
        return new

    def start_node(self, node: Node) -> ManagedProcess:
        if node.process is not None and node.process.running():
            raise RuntimeError(f"node {node.index} is already running")
        if node.keys is not None:
            auth = [
                "--root-certificates",
                str(self.certs.ca_cert),
                "--auth-supernode-private-key",
                str(node.keys.private_key),
            ]
        else:
            auth = ["--insecure"]
        node.process = self._spawn(
            f"supernode-{node.index}",
            [
                flwr_bin("flower-supernode"),
                *auth,
                "--superlink",
                self.address,
                "--port",
                str(node.port),
                "--node-config",
                node.node_config,
            ],
        )
        return node.process

    def kill_node(self, node: Node, sig: int = signal.SIGKILL) -> None:
        """Stop one SuperNode and its ClientApp processes (SIGKILL: as if the device lost power)."""
        if node.process is not None:
            stop_processes([node.process], first=sig)

    def list_nodes(self) -> list[dict[str, Any]]:
        proc = self.flwr("supernode", "ls", CONNECTION, "--format", "json")
        try:
            return json.loads(proc.stdout[proc.stdout.index("{") :])["nodes"]
        except (ValueError, KeyError) as error:
            raise RuntimeError(f"flwr supernode ls failed: {proc.stdout}{proc.stderr}") from error

    def online_node_ids(self) -> set[int]:
        return {int(n["node-id"]) for n in self.list_nodes() if n["status"] == "online"}

    def wait_for_nodes(self, count: int, timeout: float = 90) -> set[int]:
        """Until ``count`` SuperNodes are online (connected and sending heartbeats)."""
        deadline = time.monotonic() + timeout
        online: set[int] = set()
        while time.monotonic() < deadline:
            online = self.online_node_ids()
            if len(online) >= count:
                return online
            dead = [n for n in self.nodes if n.process is not None and not n.process.running()]
            if dead:
                raise RuntimeError(f"SuperNode {dead[0].index} exited:\n{self.tail(dead[0].process)}")
            time.sleep(0.5)
        raise TimeoutError(f"{len(online)} of {count} SuperNodes online after {timeout:.0f}s")

    def run(self, run_config: dict[str, Any] | str = "", timeout: float = 3600) -> RunOutcome:
        """``flwr run <app-dir> <connection> --stream --run-config ...``; waits for the end."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with bundle_folder(self.app_dir, parent=self.workdir) as app:
            return self._run(app, run_config, timeout)

    def _run(self, app: Path, run_config: dict[str, Any] | str, timeout: float) -> RunOutcome:
        started = time.monotonic()
        config = run_config_arg(run_config)
        args = [flwr_bin("flwr"), "run", str(app), CONNECTION, "--stream"]
        if config:
            args += ["--run-config", config]
        self.logs.mkdir(parents=True, exist_ok=True)
        lines: list[str] = []
        timed_out = threading.Event()

        def give_up() -> None:
            timed_out.set()
            proc.signal_group(signal.SIGKILL)

        # A daemon timer, started with the process and before Ctrl-C can unwind: a live
        # non-daemon timer would keep the interpreter from exiting for `timeout` seconds.
        timer = threading.Timer(timeout, give_up)
        timer.daemon = True
        with deferred_interrupts():
            popen = subprocess.Popen(
                args,
                env=self.env,
                cwd=self.workdir,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
            proc = ManagedProcess("flwr-run", popen, self.logs / "flwr-run.log")
            with self._lock:
                self.processes.append(proc)
            timer.start()
        try:
            with open(proc.log_path, "a") as log:
                for line in popen.stdout:
                    lines.append(line)
                    log.write(line)
                    log.flush()
                    if self.echo:
                        sys.stdout.write(line)
                        sys.stdout.flush()
            returncode = popen.wait()
        finally:
            timer.cancel()
        output = "".join(lines)
        if timed_out.is_set():
            raise TimeoutError(f"flwr run did not finish in {timeout:.0f}s:\n{output[-3000:]}")
        match = re.search(r"Successfully started run (\d+)", output)
        run_id = int(match.group(1)) if match else None
        status = self.run_status(run_id) if run_id is not None else None
        return RunOutcome(
            returncode, run_id, status, self.find_results(run_config, run_id), output, time.monotonic() - started
        )

    def run_status(self, run_id: int) -> str | None:
        proc = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        try:
            return json.loads(proc.stdout[proc.stdout.index("{") :])["runs"][0]["status"]
        except (ValueError, KeyError, IndexError):
            return None

    def output_dir(self, run_config: dict[str, Any] | str = "") -> Path:
        """Where runs write their folders: the run config's ``output-dir`` (relative to the app
        folder, the working directory of every process here)."""
        from mefl_app.settings import RunSettings  # light: no torch

        path = Path(RunSettings.from_app_dir(self.app_dir, run_config_arg(run_config)).output_dir).expanduser()
        return path if path.is_absolute() else self.app_dir / path

    def find_results(self, run_config: dict[str, Any] | str, run_id: int | None) -> Path | None:
        if run_id is None:
            return None
        found = sorted(self.output_dir(run_config).glob(f"*-run{run_id}*/results.json"))
        return found[-1] if found else None

    def tail(self, proc: ManagedProcess | None, chars: int = 3000) -> str:
        if proc is None or not proc.log_path.exists():
            return ""
        return proc.log_path.read_text(errors="replace")[-chars:]

    def close(self) -> None:
        """Stop the run first (its ServerApp records it as interrupted), then the SuperNodes (they
        sign off while the SuperLink still listens), then the SuperLink and anything left; every
        process group, SIGTERM then SIGKILL."""
        with self._lock:
            processes = list(self.processes)
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan anything
        try:
            stop_pids(descendants_named([p.pid for p in processes if p.running()], "flwr-serverapp"), grace=30)
            nodes = [p for p in processes if p.name.startswith("supernode-")]
            stop_processes(nodes)
            stop_processes([p for p in processes if p not in nodes])
            deadline = time.monotonic() + 10
            while any(port_is_bound(p) for p in self._ports) and time.monotonic() < deadline:
                time.sleep(0.2)
            for thread in self._pumps:  # --timestamps: the last lines of every log
                thread.join(timeout=5)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)


# -- command line ---------------------------------------------------------------------------
def _node_config(index: int, num_nodes: int, shards: Path | None) -> str:
    if shards is None:
        return f"partition-id={index} num-partitions={num_nodes}"
    return f"shard-file='{shards / f'client_{index:03d}.npz'}'"


def _prepare_shards(shards: Path, num_nodes: int, run_config: str, app_dir: Path, env: dict[str, str]) -> None:
    """Use the shard files in ``shards``, or write them first (``mefl shards``)."""
    manifest = shards / "manifest.json"
    if manifest.exists():
        have = json.loads(manifest.read_text())["num_partitions"]
        if have != num_nodes:
            raise SystemExit(f"{shards} holds {have} shards, but --nodes is {num_nodes}")
        return
    print(f"writing {num_nodes} shard files to {shards}", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mefl",
            "shards",
            "--num-partitions",
            str(num_nodes),
            "--out",
            str(shards),
            "--run-config",
            run_config,
            "--app-dir",
            str(app_dir),
        ],
        env=env,
        cwd=app_dir,
        check=True,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mefl deploy``'s options."""
    parser.add_argument("--nodes", type=int, default=3, help="number of SuperNodes (default 3)")
    parser.add_argument("--run-config", default="", help='as for flwr run, e.g. "num-server-rounds=3 local-epochs=1"')
    parser.add_argument(
        "--shards",
        type=Path,
        default=None,
        help="folder of shard files (mefl shards); written first if it has no "
        "manifest.json. Without it each SuperNode gets partition-id=i num-partitions=N",
    )
    parser.add_argument("--app-dir", type=Path, default=APP_DIR, help="the app folder (pyproject.toml)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="certificates, Flower configuration and logs (default <app-dir>/outputs/deploy/<UTC time>)",
    )
    parser.add_argument("--port", type=int, default=0, help="SuperLink port on 127.0.0.1 (default: a free one)")
    parser.add_argument(
        "--insecure", action="store_true", help="no TLS, no SuperNode authentication: local quick look only"
    )
    parser.add_argument("--connect-timeout", type=float, default=120, help="seconds to wait for all SuperNodes")
    parser.add_argument("--timeout", type=float, default=24 * 3600, help="seconds before the run is given up")
    parser.add_argument(
        "--timestamps",
        action="store_true",
        help="prefix every line of the SuperLink/SuperNode logs with the local wall-clock time",
    )


def main(args: argparse.Namespace) -> int:
    """Run mefl on a local deployment: one flower-superlink and N flower-supernode processes (TLS
    and SuperNode authentication unless --insecure), then stop them all."""
    from mefl_app.settings import RunSettings, SettingsError

    app_dir = args.app_dir.resolve()
    try:  # a bad setting fails here, before any process starts
        RunSettings.from_app_dir(app_dir, args.run_config)
    except SettingsError as error:
        raise SettingsError(str(error)) from None
    if args.nodes < 1:
        raise SettingsError(f"--nodes must be >= 1, got {args.nodes}")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    workdir = (args.workdir or app_dir / "outputs" / "deploy" / stamp).resolve()

    if args.insecure:
        bar = "!" * 78
        print(
            f"{bar}\n!! INSECURE: no TLS and no SuperNode authentication. Traffic is plain HTTP and any\n"
            f"!! process that reaches the port can join as a SuperNode. Local quick look only.\n{bar}",
            flush=True,
        )

    interrupt_on_termination()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: a stuck launcher shows where
    deployment = LocalDeployment(
        workdir, app_dir, secure=not args.insecure, port=args.port, echo=True, timestamps=args.timestamps
    )
    try:
        shards = args.shards.resolve() if args.shards else None
        if shards is not None:
            _prepare_shards(shards, args.nodes, args.run_config, app_dir, deployment.env)
        print(
            f"work folder  {workdir}\n  logs       {deployment.logs}/ (superlink.log, supernode-<i>.log, "
            "flwr-run.log)\n"
            f"  Flower configuration  {deployment.flwr_home / 'config.toml'} (connection {CONNECTION!r})\n"
            f"results      {deployment.output_dir(args.run_config)}/<time>-...-run<id>/results.json",
            flush=True,
        )
        deployment.__enter__()
        print(
            f"SuperLink    {deployment.address} "
            f"({'TLS, SuperNode authentication' if deployment.secure else 'INSECURE'}), "
            f"pid {deployment.superlink.pid}",
            flush=True,
        )
        for node in deployment.add_nodes([_node_config(i, args.nodes, shards) for i in range(args.nodes)]):
            print(
                f"SuperNode {node.index}  port {node.port}, pid {node.process.pid}, node config {node.node_config}"
                + (f", key {node.keys.private_key}" if node.keys else ""),
                flush=True,
            )
        online = deployment.wait_for_nodes(args.nodes, timeout=args.connect_timeout)
        print(f"{len(online)} SuperNodes online; starting the run", flush=True)
        outcome = deployment.run(args.run_config, timeout=args.timeout)
        print(
            f"\nrun {outcome.run_id}: Flower status {outcome.status}, flwr exit code {outcome.returncode}, "
            f"{outcome.seconds:.0f}s",
            flush=True,
        )
        if outcome.results_path is None:
            print("no results.json found for this run; see the logs above and in", deployment.logs, flush=True)
            return 1
        status = outcome.results.get("status")
        print(f"results      {outcome.results_path} (status {status})", flush=True)
        return 0 if status == "completed" and outcome.returncode == 0 else 1
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process of the deployment", file=sys.stderr, flush=True)
        return 130
    except (RuntimeError, TimeoutError, subprocess.SubprocessError) as error:
        print(f"\nerror: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        deployment.close()
        print(f"stopped; logs in {deployment.logs}", flush=True)
