"""Atomic file writes: each file is written beside its target, then renamed over it, so that a
reader (or a process killed mid-write) sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[Path], None], mode: int | None = None) -> Path:
    """Call ``write(temporary_path)``, then give the file ``mode`` (if set) and rename it to
    ``path``; returns ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    write(tmp)
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)
    return path
