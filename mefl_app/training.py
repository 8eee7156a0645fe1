"""Local training with the multi-exit loss, and per-exit evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

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
    grad_norms: list[float] | None = None,
) -> float:
    """``local-epochs`` epochs of SGD on the summed multi-exit loss; returns the mean batch loss.

    ``proximal_mu > 0`` adds FedProx's ``mu/2 * ||w - w_global||^2`` (Li et al., 2020).
    Batches are index slices of in-memory tensors, reshuffled each epoch with ``generator``.
    ``grad_norms``, if given, receives every step's gradient norm before clipping (diagnostics;
    needs ``max-grad-norm > 0``).
    """
    model.train()
    exit_weights = settings.loss_weights(model.num_exits)  # a level-k client: exits 1..k
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
                exit_weights=exit_weights,
            )
            if anchor is not None:
                loss = loss + proximal_mu / 2 * sum((p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.max_grad_norm > 0:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                if grad_norms is not None:
                    grad_norms.append(float(norm))
            optimizer.step()
            loss_sum += loss.detach()
            steps += 1
    return float(loss_sum) / max(steps, 1)


@dataclass(frozen=True)
class ExitScores:
    """Per-exit counts on one data part; sums pool exactly across clients.

    ``examples[e]`` is 0 for an exit the client's model does not have (a client at exit level
    k < K). ``early_correct`` / ``early_mflops`` hold, per confidence threshold, the correct
    predictions and the summed forward MFLOPs of the early-exit policy (empty when not asked).
    """

    correct: list[int]
    loss_sum: list[float]
    examples: list[int]
    early_correct: list[int] = field(default_factory=list)
    early_mflops: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return max(self.examples, default=0)

    @property
    def accuracy(self) -> list[float | None]:
        return [c / n if n else None for c, n in zip(self.correct, self.examples)]

    @property
    def loss(self) -> list[float | None]:
        return [s / n if n else None for s, n in zip(self.loss_sum, self.examples)]

    @property
    def early_accuracy(self) -> list[float]:
        return [c / self.total for c in self.early_correct] if self.total else []

    @property
    def early_average_mflops(self) -> list[float]:
        return [m / self.total for m in self.early_mflops] if self.total else []


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
    and cost per threshold."""
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty data part")
    model.eval()
    correct = loss_sum = early_correct = None
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
        if thresholds:
            chosen = torch.stack([first_confident_exit(logits, t) for t in thresholds])  # thresholds x batch
            batch_early = hits.gather(0, chosen).sum(dim=1)
            early_correct = batch_early if early_correct is None else early_correct + batch_early
            for i, used in enumerate(cost[: len(logits)][chosen].sum(dim=1).tolist()):
                early_mflops[i] += used
    exits = len(correct)
    return ExitScores(correct.tolist(), loss_sum.tolist(), [len(data)] * exits,
                      early_correct.tolist() if early_correct is not None else [],
                      early_mflops if thresholds else [])
