"""Numbers that mean nothing never pass: a non-finite loss, array or score stops where it appears.

A diverging client (a learning rate far too large, a NaN in its data) fails its reply instead of
uploading its arrays; the server never aggregates a non-finite upload and stops the run when an
aggregate or the central loss is non-finite; results.json never holds NaN or Infinity (RFC 8259).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from flwr.app import ArrayRecord


class NonFiniteError(RuntimeError):
    """A loss, an array or a score is NaN or infinite; the message says where."""


def non_finite_arrays(arrays: ArrayRecord) -> list[str]:
    """Names of the floating-point arrays in ``arrays`` that hold a NaN or an infinity."""
    bad = []
    for name in arrays.keys():
        values = arrays[name].numpy()
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            bad.append(name)
    return bad


def all_finite(values) -> bool:
    """Whether every value that is there (None: an exit a client does not have) is finite."""
    return all(math.isfinite(v) for v in values if v is not None)


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value
