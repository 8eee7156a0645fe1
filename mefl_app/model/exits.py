"""Where a multi-exit model's exits sit, checked in one place for every model and the settings."""

from __future__ import annotations

from collections.abc import Sequence


def check_exit_positions(exit_after: Sequence[int], depth: int, unit: str = "block") -> tuple[int, ...]:
    """``exit_after`` as a tuple of increasing ``unit`` numbers in 1..``depth``, else ValueError."""
    positions = tuple(int(p) for p in exit_after)
    if not positions or list(positions) != sorted(set(positions)) or positions[0] < 1 or positions[-1] > depth:
        raise ValueError(f"exits must follow increasing {unit} numbers in 1..{depth}, got {tuple(exit_after)}")
    return positions


def check_exit(up_to_exit: int | None, num_exits: int) -> int:
    """The number of exits a forward pass computes: ``up_to_exit``, or all by default."""
    if up_to_exit is None:
        return num_exits
    if not 1 <= up_to_exit <= num_exits:
        raise ValueError(f"up_to_exit must lie in 1..{num_exits}, got {up_to_exit}")
    return up_to_exit
