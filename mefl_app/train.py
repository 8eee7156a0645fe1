"""Local training: SGD epochs on the multi-exit loss over a client's in-memory shard."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .data.tensors import TensorData
from .health import NonFiniteError
from .model.loss import multi_exit_loss
from .settings import RunSettings


@dataclass
class FedDynState:
    """A FedDyn client's coefficient and its state g, one tensor per parameter, kept between rounds."""

    alpha: float
    grads: dict[str, torch.Tensor]


def train_local(
    model: nn.Module,
    data: TensorData,
    settings: RunSettings,
    *,
    generator: torch.Generator,
    device: torch.device,
    proximal_mu: float = 0.0,
    grad_norms: list[float] | None = None,
    distill_weight: float | None = None,
    feddyn: FedDynState | None = None,
) -> float:
    """``local-epochs`` epochs of SGD on the summed multi-exit loss; returns the mean batch loss.

    ``proximal_mu > 0`` adds FedProx's ``mu/2 * ||w - w_global||^2`` (Li et al., 2020);
    ``feddyn`` adds FedDyn's ``- <w, g> + alpha/2 * ||w - w_global||^2`` and updates the client's
    state ``g <- g - alpha (w - w_global)`` after the last step (Acar et al., 2021; DepthFL's code).
    ``distill_weight`` (default ``distill-weight``) is this round's weight from the schedule.
    Batches are index slices of in-memory tensors, reshuffled each epoch with ``generator``.
    ``grad_norms``, if given, receives every step's gradient norm before clipping (diagnostics;
    needs ``max-grad-norm > 0``). A non-finite loss or parameter raises ``NonFiniteError`` naming
    the local epoch and step, so that a diverged model is never uploaded.
    """
    model.train()
    exit_weights = settings.loss_weights(model.num_exits)  # a level-k client: exits 1..k
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.learning_rate, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    # The penalties pull only what the loss trains: the head of an exit of weight 0 stays untouched,
    # as without them (a zero gradient would still let weight decay and momentum move it).
    idle = {id(p) for k, w in enumerate(exit_weights or ()) if w == 0 for p in model.exits[k].parameters()}
    named = [(name, p) for name, p in model.named_parameters() if id(p) not in idle]
    trained = [p for _, p in named]
    anchor = [p.detach().clone() for p in trained] if proximal_mu > 0 or feddyn else None
    if distill_weight is None:
        distill_weight = settings.distill_weight
    if feddyn is not None:
        state = [feddyn.grads[name].to(device) for name, _ in named]
    x, y = data.x.to(device), data.y.to(device)
    loss_sum, steps = torch.zeros((), device=device), 0
    for epoch in range(1, settings.local_epochs + 1):
        order = torch.randperm(len(y), generator=generator).to(device)
        for step, batch in enumerate(order.split(settings.batch_size), start=1):
            if len(batch) < 2:  # BatchNorm cannot normalise a single sample
                continue
            loss = multi_exit_loss(
                model(x[batch]),
                y[batch],
                distill_weight=distill_weight,
                temperature=settings.distill_temperature,
                teacher=settings.distill_teacher,
                exit_weights=exit_weights,
            )
            if proximal_mu > 0:
                loss = loss + proximal_mu / 2 * sum((p - a).pow(2).sum() for p, a in zip(trained, anchor))
            if feddyn is not None:
                linear = sum((p * g).sum() for p, g in zip(trained, state))
                quadratic = sum((p - a).pow(2).sum() for p, a in zip(trained, anchor))
                loss = loss - linear + feddyn.alpha / 2 * quadratic
            if not torch.isfinite(loss):
                raise NonFiniteError(f"non-finite training loss ({loss.item()}) in local epoch {epoch}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.max_grad_norm > 0:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                if grad_norms is not None:
                    grad_norms.append(float(norm))
            optimizer.step()
            loss_sum += loss.detach()
            steps += 1
    diverged = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if diverged:
        raise NonFiniteError(f"non-finite parameters after local training: {', '.join(diverged[:3])}")
    if feddyn is not None:
        with torch.no_grad():
            for (name, p), a in zip(named, anchor):
                feddyn.grads[name] = (feddyn.grads[name].to(device) - feddyn.alpha * (p - a)).cpu()
    return float(loss_sum) / max(steps, 1)
