"""The house rules: the app bundle holds only the app, no package imports in a cycle, the app never
imports the tools nor, when it starts, torchvision, and the ServerApp refuses a per-run
environment with another torch."""

import ast
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk
from helpers import REPO

from mefl_app import runtime_check
from mefl_app.runtime_check import RuntimeEnvironmentError, check_runtime_environment

PACKAGES = ("mefl_app", "mefl")
# `python -m mefl_app.<old>` forms that results/ records: they start the tools, outside the bundle.
ALIASES = {f"mefl_app.{name}" for name in ("experiments", "exit_experiments", "partitions", "deploy", "certificates")}


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of both packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (function bodies included), and
    the packages above each of them (importing a module runs its packages' __init__ first)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
    result = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        while target:
            result.add(target)
            target = target.rpartition(".")[0]
    return result - {name}


def test_no_module_imports_itself_through_a_cycle():
    found = modules()
    graph = {name: imports_of(name, path, set(found)) for name, path in found.items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_app_never_imports_the_tools():
    found = modules()
    for name, path in found.items():
        if name.startswith("mefl_app") and name not in ALIASES:
            assert not {m for m in imports_of(name, path, set(found)) if m.split(".")[0] == "mefl"}, name


def test_starting_the_apps_does_not_import_torchvision():
    """torchvision costs about 2 s per process, and a deployment starts a ClientApp process for
    every message: it is imported only to download Fashion-MNIST."""
    check = "import sys, mefl_app.server_app, mefl_app.client_app; print([m for m in sys.modules if 'vision' in m])"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"


def test_the_app_bundle_holds_the_app_and_nothing_else():
    names = set(zipfile.ZipFile(io.BytesIO(build_fab_from_disk(REPO))).namelist())
    app = {
        f"{m.replace('.', '/')}{'/__init__' if p.name == '__init__.py' else ''}.py"
        for m, p in modules().items()
        if m.startswith("mefl_app") and m not in ALIASES
    }
    assert names == app | {"pyproject.toml", "README.md", ".info/CONTENT"}


def test_a_per_run_environment_with_another_torch_is_refused(monkeypatch):
    monkeypatch.setattr(runtime_check, "installed_versions", lambda package: ["2.15.0", "2.14.1"])
    with pytest.raises(
        RuntimeEnvironmentError,
        match="torch 2.15.0 .* shadows the installed torch 2.14.1.*FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1",
    ):
        check_runtime_environment()


def test_the_installed_environment_passes_and_so_does_one_with_the_same_versions(monkeypatch):
    check_runtime_environment()  # this test process: one version of each package
    monkeypatch.setattr(runtime_check, "installed_versions", lambda package: ["2.14.1", "2.14.1"])
    check_runtime_environment()
