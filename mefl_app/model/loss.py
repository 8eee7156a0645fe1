"""Distillation-based multi-exit loss (Phuong & Lampert, "Distillation-Based Training for
Multi-Exit Architectures", ICCV 2019).

Every exit learns the labels; the shallower exits also learn the softened output of a deeper
exit (the teacher), which is detached so distillation never pulls the teacher towards its
students.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from ..settings import TEACHERS


def multi_exit_loss(
    logits: Sequence[Tensor],
    target: Tensor,
    *,
    distill_weight: float,
    temperature: float,
    teacher: str = "last",
    exit_weights: Sequence[float] | None = None,
) -> Tensor:
    """Sum over exits of each exit's loss, exit k's times ``exit_weights[k]`` (default all 1).

    With C = ``distill_weight`` and T = ``temperature``, exit k < K gets
    ``(1 - C) * CE(z_k, y) + C * T^2 * KL(softmax(z_t / T) || softmax(z_k / T))`` where the
    teacher t is the deepest exit K (``teacher="last"``) or exit k + 1 (``"next"``); the
    deepest exit gets ``CE(z_K, y)``. C = 0 is the plain sum of cross-entropies; a single
    exit is plain cross-entropy. The T^2 factor keeps the distillation gradient's scale
    independent of T (Hinton et al., 2015).
    """
    if not logits:
        raise ValueError("multi_exit_loss needs at least one exit's logits")
    if not 0.0 <= distill_weight <= 1.0:
        raise ValueError(f"distill_weight must lie in [0, 1], got {distill_weight}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if teacher not in TEACHERS:
        raise ValueError(f"teacher must be one of {TEACHERS}, got {teacher!r}")
    weights = [1.0] * len(logits) if exit_weights is None else list(exit_weights)
    if len(weights) != len(logits) or any(w < 0 for w in weights):
        raise ValueError(f"exit_weights must be {len(logits)} numbers >= 0, got {exit_weights!r}")

    *students, deepest = logits
    total = weights[-1] * F.cross_entropy(deepest, target)
    for k, student in enumerate(students):
        ce = F.cross_entropy(student, target)
        if distill_weight == 0.0:
            total = total + weights[k] * ce
            continue
        teacher_logits = deepest if teacher == "last" else logits[k + 1]
        soft_target = F.softmax(teacher_logits.detach() / temperature, dim=1)
        kl = F.kl_div(F.log_softmax(student / temperature, dim=1), soft_target, reduction="batchmean")
        total = total + weights[k] * ((1.0 - distill_weight) * ce + distill_weight * temperature**2 * kl)
    return total
