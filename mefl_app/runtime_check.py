"""Refuse to train with other library versions than the ones mefl was installed with.

Flower's SuperLink, unless started with ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``, runs
``uv sync`` of the app's ``[project].dependencies`` into a fresh per-run environment and puts it
in front of ``sys.path`` before any app code runs (``flwr.supercore.superexec.dependency_installer``).
uv ignores pip's constraints, so that environment may hold another torch than the installed one
(2.15.0 against 2.14.1, seen here). The app cannot stop the install, but it can refuse the run.
"""

from __future__ import annotations

from importlib import metadata

WATCHED = ("torch", "torchvision", "numpy")


class RuntimeEnvironmentError(RuntimeError):
    """The packages this process imports differ from the installed ones."""


def installed_versions(package: str) -> list[str]:
    """Every version of ``package`` on ``sys.path``, the one imported first."""
    return [dist.version for dist in metadata.distributions(name=package)]


def check_runtime_environment() -> None:
    """One-line error if a package is shadowed by a different version (Flower's per-run environment)."""
    for package in WATCHED:
        versions = installed_versions(package)
        if len(set(versions)) > 1:
            raise RuntimeEnvironmentError(
                f"{package} {versions[0]} from a per-run environment shadows the installed {package} {versions[1]}: "
                "start the SuperLink with FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 (see README)"
            )
