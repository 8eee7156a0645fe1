"""Local training with the multi-exit loss, and per-exit evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .datasets import TensorData
from .losses import multi_exit_loss
from .settings import RunSettings


def select_device(settings: RunSettings) -> torch.device:
    if settings.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch sees no CUDA device on this machine")
    return torch.device(settings.device)


def apply_thread_setting(settings: RunSettings) -> None:
    """Pin torch's intra-op threads; with N clients sharing N cores, 1 thread each avoids
    oversubscription (``torch-threads = 0`` keeps torch's own default)."""
    if settings.torch_threads and torch.get_num_threads() != settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)


def train_local(
    model: nn.Module,
    data: TensorData,
    settings: RunSettings,
    *,
    generator: torch.Generator,
    device: torch.device,
    proximal_mu: float = 0.0,
) -> float:
    """``local-epochs`` epochs of SGD on the summed multi-exit loss; returns the mean batch loss.

    ``proximal_mu > 0`` adds FedProx's ``mu/2 * ||w - w_global||^2`` (Li et al., 2020).
    Batches are index slices of in-memory tensors, reshuffled each epoch with ``generator``.
    """
    model.train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.learning_rate, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    x, y = data.x.to(device), data.y.to(device)
    loss_sum, steps = torch.zeros((), device=device), 0
    for _ in range(settings.local_epochs):
        order = torch.randperm(len(y), generator=generator).to(device)
        for batch in order.split(settings.batch_size):
            if len(batch) < 2:  # BatchNorm cannot normalise a single sample
                continue
            loss = multi_exit_loss(
                model(x[batch]),
                y[batch],
                distill_weight=settings.distill_weight,
                temperature=settings.distill_temperature,
                teacher=settings.distill_teacher,
            )
            if anchor is not None:
                loss = loss + proximal_mu / 2 * sum((p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            loss_sum += loss.detach()
            steps += 1
    return float(loss_sum) / max(steps, 1)


@dataclass(frozen=True)
class ExitScores:
    """Per-exit counts on one data part; sums pool exactly across clients."""

    correct: list[int]
    loss_sum: list[float]
    total: int

    @property
    def accuracy(self) -> list[float]:
        return [c / self.total if self.total else 0.0 for c in self.correct]

    @property
    def loss(self) -> list[float]:
        return [s / self.total if self.total else 0.0 for s in self.loss_sum]


@torch.no_grad()
def evaluate_exits(model: nn.Module, data: TensorData, *, batch_size: int, device: torch.device) -> ExitScores:
    """Accuracy and cross-entropy of every exit, in eval mode (dropout off), no autograd."""
    model.eval()
    correct: Tensor | None = None
    loss_sum: Tensor | None = None
    for start in range(0, len(data), batch_size):
        x = data.x[start : start + batch_size].to(device)
        y = data.y[start : start + batch_size].to(device)
        logits = torch.stack(model(x))  # exits x batch x classes
        batch_correct = (logits.argmax(dim=2) == y).sum(dim=1)
        batch_loss = torch.stack([F.cross_entropy(z, y, reduction="sum") for z in logits])
        correct = batch_correct if correct is None else correct + batch_correct
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
    if correct is None:
        raise ValueError("cannot evaluate on an empty data part")
    return ExitScores(correct.tolist(), loss_sum.tolist(), len(data))
