"""Evaluation of every exit, and of the early-exit policy, on one data part."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.tensors import TensorData
from .metrics import ExitScores


def first_confident_exit(logits: Tensor, threshold: float) -> Tensor:
    """Early-exit policy: per sample, the first exit whose top softmax probability reaches
    ``threshold``, else the last exit. ``logits``: exits x batch x classes; returns exit indices."""
    confident = logits.softmax(dim=2).amax(dim=2) >= threshold  # exits x batch
    confident[-1] = True
    return confident.int().argmax(dim=0)  # argmax returns the first maximal entry


@torch.no_grad()
def evaluate_exits(
    model: nn.Module,
    data: TensorData,
    *,
    batch_size: int,
    device: torch.device,
    thresholds: Sequence[float] = (),
    exit_mflops: Sequence[float] = (),
) -> ExitScores:
    """Accuracy and cross-entropy of every exit, in eval mode (dropout off), no autograd; with
    ``thresholds`` (and the forward MFLOPs to each exit) also the early-exit policy's accuracy
    and cost per threshold. The ensemble predicts with the average of the exits' softmax."""
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty data part")
    model.eval()
    correct = loss_sum = early_correct = None
    ensemble_correct = 0
    early_mflops = [0.0] * len(thresholds)
    cost = torch.tensor(list(exit_mflops), dtype=torch.float64, device=device)  # per exit
    for start in range(0, len(data), batch_size):
        x = data.x[start : start + batch_size].to(device)
        y = data.y[start : start + batch_size].to(device)
        logits = torch.stack(model(x))  # exits x batch x classes
        hits = logits.argmax(dim=2) == y  # exits x batch
        batch_loss = torch.stack([F.cross_entropy(z, y, reduction="sum") for z in logits])
        correct = hits.sum(dim=1) if correct is None else correct + hits.sum(dim=1)
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        ensemble_correct += int((logits.softmax(dim=2).mean(dim=0).argmax(dim=1) == y).sum())
        if thresholds:
            chosen = torch.stack([first_confident_exit(logits, t) for t in thresholds])  # thresholds x batch
            batch_early = hits.gather(0, chosen).sum(dim=1)
            early_correct = batch_early if early_correct is None else early_correct + batch_early
            for i, used in enumerate(cost[: len(logits)][chosen].sum(dim=1).tolist()):
                early_mflops[i] += used
    exits = len(correct)
    return ExitScores(
        correct.tolist(),
        loss_sum.tolist(),
        [len(data)] * exits,
        early_correct.tolist() if early_correct is not None else [],
        early_mflops if thresholds else [],
        ensemble_correct,
    )
