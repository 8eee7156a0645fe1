"""Multi-exit losses: every exit learns the labels, and the exits learn from each other.

- teacher "last" / "next": distillation from a deeper exit (Phuong & Lampert, "Distillation-Based
  Training for Multi-Exit Architectures", ICCV 2019), the study's loss; ScaleFL's depth part
  (Ilhan et al., CVPR 2023) is "last" with depth-weighted exits and a warm-up.
- teacher "mutual": DepthFL's mutual self-distillation (Kim et al., ICLR 2023), every exit from
  every other exit.

Teachers are always detached, so distillation never pulls a teacher towards its students.
``distill_schedule`` gives the distillation weight of a round (DepthFL's ramp, ScaleFL's warm-up).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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
    """Sum over exits of each exit's loss, exit k's times ``exit_weights[k]`` (default all 1; an
    exit of weight 0 adds no term, so its head is left alone, weight decay included).

    With C = ``distill_weight`` and T = ``temperature``, exit k < K gets
    ``(1 - C) * CE(z_k, y) + C * T^2 * KL(softmax(z_t / T) || softmax(z_k / T))`` where the
    teacher t is the deepest exit K (``teacher="last"``) or exit k + 1 (``"next"``); the
    deepest exit gets ``CE(z_K, y)``. C = 0 is the plain sum of cross-entropies; a single
    exit is plain cross-entropy. The T^2 factor keeps the distillation gradient's scale
    independent of T (Hinton et al., 2015).

    ``teacher="last-additive"`` (ScaleFL): exit k < K gets ``CE(z_k, y) + C * T^2 * KL(softmax(z_K
    / T) || softmax(z_k / T))``, the labels at full weight as in ScaleFL's code (``train.py`` of
    git-disl/scale-fl; its exit weights are ``exit-loss-weights = "depth"``).

    ``teacher="mutual"`` (DepthFL): every exit k gets ``CE(z_k, y) + C / (K - 1) * sum over
    j != k of T^2 * KL(softmax(z_j / T) || softmax(z_k / T))``, the labels at full weight as in
    DepthFL's code (``baselines/depthfl/depthfl/models.py`` in Flower's repository).
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

    def cross_entropy(z: Tensor) -> Tensor:
        return F.cross_entropy(z, target)

    def distill(student: Tensor, teachers: Sequence[Tensor]) -> Tensor:
        log_student = F.log_softmax(student / temperature, dim=1)
        return sum(
            F.kl_div(log_student, F.softmax(t.detach() / temperature, dim=1), reduction="batchmean") for t in teachers
        )

    return combine_exit_losses(logits, cross_entropy, distill, distill_weight, temperature, teacher, weights)


def combine_exit_losses(
    logits: Sequence[Tensor],
    cross_entropy: Callable[[Tensor], Tensor],
    distill: Callable[[Tensor, Sequence[Tensor]], Tensor],
    distill_weight: float,
    temperature: float,
    teacher: str,
    weights: Sequence[float],
) -> Tensor:
    """The terms of ``multi_exit_loss`` (its docstring) from a cross-entropy of one exit's logits
    and a distillation -- the summed KL(teacher || student) over teachers, teachers detached, before
    the T^2 factor -- so that one model's loss and a cohort's per-client losses (cohort.py) weigh
    and combine the same terms."""
    if teacher == "mutual":
        total = None
        for k, student in enumerate(logits):
            if weights[k] == 0:  # an exit that does not learn: no term, so its head gets no gradient at all
                continue
            term = cross_entropy(student)
            if distill_weight > 0 and len(logits) > 1:
                others = [other for j, other in enumerate(logits) if j != k]
                term = term + distill_weight / (len(logits) - 1) * temperature**2 * distill(student, others)
            total = weights[k] * term if total is None else total + weights[k] * term
        return total
    *students, deepest = logits
    total = weights[-1] * cross_entropy(deepest)
    for k, student in enumerate(students):
        if weights[k] == 0:  # an exit that does not learn: no term, so its head gets no gradient at all
            continue
        ce = cross_entropy(student)
        if distill_weight == 0.0:
            total = total + weights[k] * ce
            continue
        teacher_logits = logits[k + 1] if teacher == "next" else deepest
        label_weight = 1.0 if teacher == "last-additive" else 1.0 - distill_weight
        total = total + weights[k] * (
            label_weight * ce + distill_weight * temperature**2 * distill(student, [teacher_logits])
        )
    return total


def distill_schedule(
    weight: float, server_round: int, num_rounds: int, *, ramp: float = 0.0, warmup: float = 0.0
) -> float:
    """The distillation weight in round ``server_round`` (1-based) of ``num_rounds``.

    ``warmup``: no distillation in the first ``warmup`` share of the rounds (ScaleFL switches its
    self-distillation on after a warm-up). ``ramp``: DepthFL's ramp ``exp(-5 (1 - x)^2)`` with
    ``x = min(round - 1, R) / R`` over the first R = ``ramp * num_rounds`` rounds (DepthFL's code:
    300 of 1,000 rounds, i.e. ramp 0.3), then the full weight.
    """
    if server_round <= warmup * num_rounds:
        return 0.0
    span = ramp * num_rounds
    if span <= 0:
        return weight
    phase = 1.0 - min(server_round - 1, span) / span
    return weight * math.exp(-5.0 * phase * phase)
