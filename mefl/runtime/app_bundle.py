"""The app's folder as Flower bundles it, without the rest of the checkout.

``flwr run DIR`` walks every file under DIR and only then filters them by the bundle's rules. A
checkout with its virtual environment inside (the README's install) holds about 50,000 files, so
every run spent about 3 s walking them before it started. The runners here hand ``flwr run`` a
folder that holds only the files the bundle is chosen from, by Flower's own rules, with the folders
those rules always drop left unwalked: the bundle, its hash and the app that runs are the same.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flwr.cli.build import build_pathspec, get_user_fab_patterns
from flwr.cli.utils import filter_paths_for_publish

CONFIG = "pyproject.toml"
# Flower drops these from every bundle (flwr.supercore.constant.APP_PUBLISH_EXCLUDE_PATTERNS:
# ".flwr/**", ".venv/**" at the top, "**/__pycache__/**" anywhere), so they need not be walked.
DROPPED_AT_TOP = {".flwr", ".venv"}
DROPPED_ANYWHERE = {"__pycache__"}


def candidate_files(app_dir: Path) -> dict[str, Path]:
    """Relative POSIX path -> file, for every file Flower would consider (``collect_files``:
    no symlinks, nothing outside ``app_dir``), except under the folders it always drops."""
    root = app_dir.resolve()
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dropped = DROPPED_ANYWHERE | (DROPPED_AT_TOP if here == root else set())
        dirnames[:] = [d for d in dirnames if d not in dropped]  # os.walk never enters a symlinked folder
        for name in filenames:
            path = here / name
            if not path.is_symlink():
                files[path.relative_to(root).as_posix()] = path
    return files


def bundle_sources(app_dir: Path) -> list[str]:
    """The files (relative paths) Flower chooses ``app_dir``'s bundle from: those its publish rules
    keep and, where ``[tool.flwr.app]`` has ``fab-include``, those its ``fab-include`` or
    ``fab-exclude`` patterns name (Flower refuses a pattern that matches no file)."""
    kept = sorted(filter_paths_for_publish(candidate_files(app_dir)))
    include, exclude = get_user_fab_patterns(tomllib.loads((app_dir / CONFIG).read_text()))
    if include is None:
        return kept
    named = build_pathspec(include + (exclude or []))
    return [name for name in kept if name == CONFIG or named.match_file(name)]


def copy_bundle_sources(app_dir: Path, into: Path) -> Path:
    """``into`` holding ``app_dir``'s bundle sources, copied as they are."""
    for name in bundle_sources(app_dir):
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(app_dir / name, target)
    return into


@contextmanager
def bundle_folder(app_dir: Path, parent: Path | None = None) -> Iterator[Path]:
    """A fresh folder with ``app_dir``'s bundle sources, for one ``flwr run``; removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="mefl-app-", dir=parent))
    try:
        yield copy_bundle_sources(Path(app_dir).resolve(), folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
