"""Cohort training: the local training of K clients at one exit level as ONE batched computation.

K multi-exit ResNets (same architecture, each with its own parameters) become one grouped network:
the clients' activations lie side by side in the channel dimension, every convolution is one
``conv2d(groups=K)``, every GroupNorm one ``group_norm`` with K x G groups (exactly each client's
own GroupNorm), every exit head one batched matmul. Parameters are stacked (K, ...), so one SGD
step over them is K independent SGD steps with their own momentum and weight decay, and each
client's gradient comes only from its own loss. A training step does about as many operations as
one client's step while each does K times the work: the per-op launch cost, which dominates a step
on small images, is paid once for the cohort.

``train_cohort`` reproduces ``train.train_local`` for each client: the same batches (each client's
own generator, one permutation per epoch, batches of fewer than 2 samples skipped), the same loss
(``cohort_multi_exit_loss``: ``multi_exit_loss`` per client, over its real samples), gradient
clipping per client, and ragged shards: a client whose steps are done leaves the cohort (its
parameters kept as they are, every stacked parameter sliced to the others), so the remaining
steps compute only for the clients still training; a last batch smaller than the batch size is
padded and masked. With dropout off the result equals K
sequential trainings to float tolerance (tested). What differs: the dropout masks come from one
random stream for the cohort instead of one per client, so with dropout on a cohort run is a
different (equally valid) sample of the same training; and only the ResNet with GroupNorm and the
plain loss is batched (FedProx / FedDyn terms, BatchNorm and the LSTM run per client:
``supports``). The LSTM stays per client by design: PyTorch's fused CPU LSTM kernel beats an
explicit batched cell loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.tensors import TensorData
from .health import NonFiniteError
from .model.loss import combine_exit_losses
from .model.resnet import MultiExitResNet
from .settings import RunSettings


def supports(settings: RunSettings, model: nn.Module, proximal_mu: float = 0.0, feddyn: bool = False) -> bool:
    """Whether a cohort trains clients of this configuration exactly as ``train_local`` does."""
    return isinstance(model, MultiExitResNet) and settings.norm == "group" and proximal_mu == 0 and not feddyn


def _stack(tensors: Sequence[Tensor]) -> nn.Parameter:
    return nn.Parameter(torch.stack([t.detach().contiguous(memory_format=torch.contiguous_format) for t in tensors]))


# Every stacked parameter holds the cohort's clients in its first dimension, and the modules read
# K from it, so that ``CohortResNet.keep`` can drop finished clients by slicing the parameters.


class _GroupedConv(nn.Module):
    def __init__(self, convs: Sequence[nn.Conv2d]) -> None:
        super().__init__()
        first = convs[0]
        self.stride, self.padding = first.stride, first.padding
        self.weight = _stack([c.weight for c in convs])  # K x O x I x kh x kw

    def forward(self, x: Tensor) -> Tensor:
        k, o = self.weight.shape[:2]
        weight = self.weight.reshape(k * o, *self.weight.shape[2:])
        return F.conv2d(x, weight, stride=self.stride, padding=self.padding, groups=k)


class _GroupedGroupNorm(nn.Module):
    def __init__(self, norms: Sequence[nn.GroupNorm]) -> None:
        super().__init__()
        self.groups_per_client, self.eps = norms[0].num_groups, norms[0].eps
        self.weight = _stack([n.weight for n in norms])
        self.bias = _stack([n.bias for n in norms])

    def forward(self, x: Tensor) -> Tensor:
        groups = self.groups_per_client * len(self.weight)
        return F.group_norm(x, groups, self.weight.reshape(-1), self.bias.reshape(-1), self.eps)


class _GroupedBlock(nn.Module):
    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.conv1 = _GroupedConv([b.conv1 for b in blocks])
        self.bn1 = _GroupedGroupNorm([b.bn1 for b in blocks])
        self.conv2 = _GroupedConv([b.conv2 for b in blocks])
        self.bn2 = _GroupedGroupNorm([b.bn2 for b in blocks])
        self.downsample = None
        if blocks[0].downsample is not None:
            self.downsample = nn.Sequential(
                _GroupedConv([b.downsample[0] for b in blocks]), _GroupedGroupNorm([b.downsample[1] for b in blocks])
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class _GroupedHead(nn.Module):
    """Average pooling, dropout, one linear layer per client (a batched matmul)."""

    def __init__(self, heads: Sequence[nn.Sequential]) -> None:
        super().__init__()
        self.p = heads[0][2].p
        self.weight = _stack([h[3].weight for h in heads])  # K x classes x channels
        self.bias = _stack([h[3].bias for h in heads])

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.mean(dim=(2, 3))  # B x (K C)
        pooled = F.dropout(pooled, self.p, self.training).reshape(len(x), len(self.weight), -1).transpose(0, 1)
        return torch.baddbmm(self.bias.unsqueeze(1), pooled, self.weight.transpose(1, 2))  # K x B x classes


class CohortResNet(nn.Module):
    """K ``MultiExitResNet`` s with the same architecture as one grouped network. Input K x B x
    C x H x W (each client's batch); output per exit K x B x classes."""

    def __init__(self, models: Sequence[MultiExitResNet]) -> None:
        super().__init__()
        if len({tuple(m.exit_after) for m in models}) != 1:
            raise ValueError("a cohort holds models of one architecture (one exit level)")
        self.exit_after = models[0].exit_after
        self.stem_conv = _GroupedConv([m.stem[0] for m in models])
        self.stem_norm = _GroupedGroupNorm([m.stem[1] for m in models])
        self.blocks = nn.ModuleList(_GroupedBlock([m.blocks[i] for m in models]) for i in range(len(models[0].blocks)))
        self.exits = nn.ModuleList(_GroupedHead([m.exits[e] for m in models]) for e in range(models[0].num_exits))

    @property
    def k(self) -> int:
        """The number of clients in the cohort now."""
        return len(self.stem_conv.weight)

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def keep(self, positions: Sequence[int]) -> None:
        """Go on with only the clients at ``positions`` (in that order): every stacked parameter
        sliced, so the next steps compute nothing for the others."""
        index = torch.as_tensor(list(positions), device=self.stem_conv.weight.device)
        for module in self.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                setattr(module, name, nn.Parameter(p.detach()[index]))

    def forward(self, x: Tensor) -> list[Tensor]:
        k, b = x.shape[:2]
        out = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])  # clients side by side in channels
        out = out.contiguous(memory_format=torch.channels_last)  # oneDNN's grouped convolutions: NHWC is faster
        out = F.relu(self.stem_norm(self.stem_conv(out)))
        logits = []
        for number, block in enumerate(self.blocks, start=1):
            out = block(out)
            if number in self.exit_after:
                logits.append(self.exits[len(logits)](out))
        return logits

    def client_state_dict(self, position: int, like: nn.Module) -> dict[str, Tensor]:
        """The parameters of the client at ``position`` under its own model's names (``like``: a
        model of the cohort's architecture)."""
        grouped = dict(self.named_parameters())
        return {
            name: grouped[cohort_name][position].detach().clone() for name, cohort_name in _name_map(like, self).items()
        }


def _name_map(model: MultiExitResNet, cohort: CohortResNet) -> dict[str, str]:
    """A client model's parameter name -> the cohort's stacked parameter that holds it."""
    mapping = {
        "stem.0.weight": "stem_conv.weight",
        "stem.1.weight": "stem_norm.weight",
        "stem.1.bias": "stem_norm.bias",
    }
    for name, _ in model.named_parameters():
        parts = name.split(".")
        if parts[0] == "blocks":
            if parts[2] == "downsample":
                mapping[name] = f"blocks.{parts[1]}.downsample.{parts[3]}.{parts[4]}"
            else:
                mapping[name] = name
        elif parts[0] == "exits":
            mapping[name] = f"exits.{parts[1]}.{parts[3]}"
    missing = {n for n, _ in model.named_parameters()} - mapping.keys()
    if missing or set(mapping.values()) != {n for n, _ in cohort.named_parameters()}:
        raise ValueError(f"cohort and client models do not match: {sorted(missing)[:3]}")
    return mapping


def cohort_multi_exit_loss(
    logits: Sequence[Tensor],
    target: Tensor,
    mask: Tensor,
    *,
    distill_weight: float,
    temperature: float,
    teacher: str = "last",
    exit_weights: Sequence[float] | None = None,
) -> Tensor:
    """Per client ``model.loss.multi_exit_loss`` over its real samples (``mask`` K x B: 1 for a
    sample, 0 for padding), returned as K losses. Logits per exit K x B x classes."""
    weights = [1.0] * len(logits) if exit_weights is None else list(exit_weights)
    count = mask.sum(dim=1).clamp_min(1)

    def mean(per_sample: Tensor) -> Tensor:  # K x B -> K
        return (per_sample * mask).sum(dim=1) / count

    def ce(z: Tensor) -> Tensor:
        return mean(F.cross_entropy(z.flatten(0, 1), target.flatten(), reduction="none").view_as(mask))

    def distill(student: Tensor, teachers: Sequence[Tensor]) -> Tensor:
        log_student = F.log_softmax(student / temperature, dim=2)
        return sum(
            mean(F.kl_div(log_student, F.softmax(t.detach() / temperature, dim=2), reduction="none").sum(dim=2))
            for t in teachers
        )

    return combine_exit_losses(logits, ce, distill, distill_weight, temperature, teacher, weights)


@dataclass
class CohortResult:
    state_dicts: list[dict[str, Tensor]]  # each client's trained parameters, by its model's names
    train_losses: list[float]  # each client's mean batch loss, as train_local returns it


def train_cohort(
    models: Sequence[MultiExitResNet],
    shards: Sequence[TensorData],
    settings: RunSettings,
    *,
    generators: Sequence[torch.Generator],
    device: torch.device,
    distill_weight: float | None = None,
) -> CohortResult:
    """``local-epochs`` epochs of each client's SGD on its shard, all clients at once (module
    docstring). ``models`` share one architecture; ``generators[c]`` orders client c's batches
    exactly as ``train_local`` would with it."""
    cohort = CohortResNet(models).to(device)
    cohort.train()
    exit_weights = settings.loss_weights(cohort.num_exits)
    distill_weight = settings.distill_weight if distill_weight is None else distill_weight
    plan = [_batches(len(shard.y), settings, g) for shard, g in zip(shards, generators)]
    steps = [len(p) for p in plan]
    xs = [shard.x.to(device) for shard in shards]
    ys = [shard.y.to(device) for shard in shards]
    batch = settings.batch_size
    params = list(cohort.parameters())
    buffers = [torch.zeros_like(p) for p in params]
    members = list(range(len(models)))  # the client at each position of the cohort now
    states: list[dict[str, Tensor]] = [{} for _ in models]
    loss_sums = torch.zeros(len(models), device=device)
    for step in range(max(steps, default=0) + 1):
        if not members:
            break
        finished = [i for i, c in enumerate(members) if step >= steps[c]]
        if finished:  # their training is done: keep their parameters, compute nothing more for them
            _check_finite(params, finished, members)
            for i in finished:
                states[members[i]] = cohort.client_state_dict(i, models[0])
            keep = [i for i, c in enumerate(members) if step < steps[c]]
            if not keep:
                break
            cohort.keep(keep)
            params = list(cohort.parameters())
            buffers = [b[keep] for b in buffers]
            members = [members[i] for i in keep]
        k = len(members)
        x = torch.zeros((k, batch, *xs[0].shape[1:]), device=device)
        y = torch.zeros((k, batch), dtype=torch.long, device=device)
        mask = torch.zeros((k, batch), device=device)
        for i, c in enumerate(members):
            index = plan[c][step].to(device)
            x[i, : len(index)], y[i, : len(index)], mask[i, : len(index)] = xs[c][index], ys[c][index], 1.0
        losses = cohort_multi_exit_loss(
            cohort(x),
            y,
            mask,
            distill_weight=distill_weight,
            temperature=settings.distill_temperature,
            teacher=settings.distill_teacher,
            exit_weights=exit_weights,
        )
        if not torch.isfinite(losses).all():
            bad = members[int((~torch.isfinite(losses)).nonzero()[0])]
            raise NonFiniteError(f"non-finite training loss of cohort client {bad} in step {step + 1}")
        for p in params:
            p.grad = None
        losses.sum().backward()  # client c's parameters get only client c's gradient
        with torch.no_grad():
            sgd_step(params, buffers, settings)
        loss_sums[members] += losses.detach()
    return CohortResult(states, [float(loss_sums[c]) / max(steps[c], 1) for c in range(len(models))])


def _check_finite(params: list[Tensor], positions: list[int], members: list[int]) -> None:
    """A diverged model is never uploaded: non-finite parameters of a finished client raise."""
    diverged = [members[i] for i in positions if not all(torch.isfinite(p[i]).all() for p in params)]
    if diverged:
        raise NonFiniteError(f"non-finite parameters after local training of cohort client(s) {diverged}")


def _batches(n: int, settings: RunSettings, generator: torch.Generator) -> list[Tensor]:
    """Client batches in train_local's order: one permutation per epoch, batches under 2 skipped."""
    batches = []
    for _ in range(settings.local_epochs):
        order = torch.randperm(n, generator=generator)
        batches += [b for b in order.split(settings.batch_size) if len(b) >= 2]
    return batches


def sgd_step(params: list[Tensor], buffers: list[Tensor], settings: RunSettings) -> None:
    """PyTorch's SGD (momentum, weight decay) on stacked parameters, with clipping of each client's
    gradient norm."""
    grads = [p.grad for p in params]
    if settings.max_grad_norm > 0:
        norms = torch.zeros(len(params[0]), device=params[0].device)
        for g in grads:
            if g is not None:
                norms += g.pow(2).flatten(1).sum(dim=1)
        scale = (settings.max_grad_norm / (norms.sqrt() + 1e-6)).clamp(max=1.0)
    for p, buf, g in zip(params, buffers, grads):
        if g is None:  # an exit nobody trains: no step, no weight decay (as SGD skips grad None)
            continue
        if settings.max_grad_norm > 0:
            g = g * scale.view(-1, *[1] * (g.dim() - 1))
        if settings.weight_decay:
            g = g + settings.weight_decay * p
        if settings.momentum:
            buf.mul_(settings.momentum).add_(g)
            g = buf
        p.sub_(settings.learning_rate * g)


def train_by_level(
    models: Sequence[MultiExitResNet],
    shards: Sequence[TensorData],
    settings: RunSettings,
    *,
    generators: Sequence[torch.Generator],
    device: torch.device,
    distill_weight: float | None = None,
) -> CohortResult:
    """Clients at different exit levels: one cohort per level, results in the clients' order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for c, model in enumerate(models):
        groups.setdefault(tuple(model.exit_after), []).append(c)
    state_dicts: list[dict[str, Tensor]] = [{} for _ in models]
    losses = [0.0] * len(models)
    for members in groups.values():
        result = train_cohort(
            [models[c] for c in members],
            [shards[c] for c in members],
            settings,
            generators=[generators[c] for c in members],
            device=device,
            distill_weight=distill_weight,
        )
        for c, state, loss in zip(members, result.state_dicts, result.train_losses):
            state_dicts[c], losses[c] = state, loss
    return CohortResult(state_dicts, losses)
