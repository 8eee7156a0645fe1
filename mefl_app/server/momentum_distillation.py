"""InclusiveFL's momentum distillation (Liu et al., KDD 2022, "No One Left Behind"; ReeFL's
re-implementation, ``royson/reefl`` ``src/server/strategies/inclusivefl.py``): the server blends
the update that a shallower level's clients made to their top layer with the mean update that the
next deeper level's clients made to the layers it has beyond that level, ``g <- beta m + (1 - beta) g``.

For each exit level k below the deepest, with t_k the layer just before exit k and the layers
between exits k and k+1 the "deeper" ones: m is the mean, over the deeper layers whose array has
t_k's shape, of (previous global - the level-(k+1) clients' example-weighted mean); each level-k
client's upload of t_k is replaced by ``previous - (beta m + (1 - beta) (previous - upload))``.
That is linear, so the level-k clients' share of the aggregate moves exactly by the blended step.
Levels are handled deepest first, so a level's blended top layer feeds the momentum of the level
below it (as in ReeFL). A level whose deeper neighbour had no client this round gets m = 0 (as
ReeFL's reset).

Where mefl departs, and why:
- One multi-exit network: the original keeps each level's top layer and head apart from the other
  levels (per-level copies), which would turn the model into K sub-models and early exit into K
  separate forward passes. In mefl the top layer of level k is also an inner layer of the deeper
  levels; the blend changes only the level-k clients' share of its update, the deeper clients'
  share is theirs.
- This round's deeper update, not the last round's: ReeFL reads m_{k+1} before computing it in the
  same round (its loop goes from the shallowest level up), so it uses the previous round's. Using
  this round's keeps the server free of state a checkpoint lacks (the run stays resumable).
- Only arrays of one shape can be blended: InclusiveFL's transformer layers all match; mefl's LSTM
  layers 2 and 3 match (layer 1's input weights do not), and the default ResNet's blocks change
  width at each exit (16 -> 32 -> 64 channels), so there the blend has nothing to act on (the run
  records which arrays were blended: ``momentum_distillation`` in results.json).
- The within-level mean weighs clients by their examples (ReeFL: by count).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from .. import metrics
from .wrapping import WrappingStrategy, with_arrays

# level k -> (top-layer array of level k, the same-shaped arrays of the layers between exits k and k+1)
LevelPairs = Mapping[int, Sequence[tuple[str, Sequence[str]]]]


def momentum_pairs(
    unit: str, exit_positions: Sequence[int], shapes: Mapping[str, tuple[int, ...]]
) -> dict[int, list[tuple[str, list[str]]]]:
    """The arrays the blend acts on, per level below the deepest. ``unit``: the name prefix of
    the model's layers ("blocks" for the ResNet, "layers" for the LSTM); ``exit_positions``: the
    layers (1-based) each exit follows; ``shapes``: every array's shape."""
    pairs: dict[int, list[tuple[str, list[str]]]] = {}
    for level in range(1, len(exit_positions)):
        prefix = f"{unit}.{exit_positions[level - 1] - 1}."
        deeper = range(exit_positions[level - 1], exit_positions[level])
        pairs[level] = []
        for name, shape in shapes.items():
            if name.startswith(prefix):
                suffix = name[len(prefix) :]
                sources = [f"{unit}.{j}.{suffix}" for j in deeper if shapes.get(f"{unit}.{j}.{suffix}") == shape]
                if sources:
                    pairs[level].append((name, sources))
    return pairs


def blend_uploads(
    uploads: Sequence[tuple[int, dict[str, np.ndarray], float]],
    previous: Mapping[str, np.ndarray],
    pairs: LevelPairs,
    beta: float,
) -> None:
    """Apply the blend in place to ``uploads``: (exit level, arrays by name, weight) per client."""
    for level in sorted(pairs, reverse=True):
        shallow = [arrays for lvl, arrays, _ in uploads if lvl == level]
        deeper = [(arrays, w) for lvl, arrays, w in uploads if lvl == level + 1 and w > 0]
        if not shallow:
            continue
        total = sum(w for _, w in deeper)
        for top, sources in pairs[level]:
            old = previous[top].astype(np.float64)
            momentum = np.zeros_like(old)
            if deeper:
                for source in sources:
                    group_mean = sum(arrays[source].astype(np.float64) * (w / total) for arrays, w in deeper)
                    momentum += (previous[source].astype(np.float64) - group_mean) / len(sources)
            for arrays in shallow:
                if top in arrays:
                    step = beta * momentum + (1 - beta) * (old - arrays[top].astype(np.float64))
                    arrays[top] = (old - step).astype(arrays[top].dtype)


class MomentumDistillation(WrappingStrategy):
    """Wraps a strategy: blends the shallower levels' top-layer uploads (module docstring), then
    lets the wrapped strategy aggregate."""

    def __init__(self, inner: Strategy, pairs: LevelPairs, beta: float) -> None:
        super().__init__(inner)
        self.pairs = {level: [(top, list(sources)) for top, sources in p] for level, p in pairs.items()}
        self.beta = beta
        self.current: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current = arrays
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        uploads: dict[int, tuple[int, dict[str, np.ndarray], float]] = {}
        for i, message in enumerate(replies):
            if message.has_error() or not message.content.array_records:
                continue
            record = metrics.metric_record_of(message.content)
            arrays = next(iter(message.content.array_records.values()))
            uploads[i] = (
                int(record[metrics.EXIT_LEVEL]),
                {name: arrays[name].numpy() for name in arrays.keys()},
                float(record[metrics.NUM_EXAMPLES]),
            )
        previous = {name: self.current[name].numpy() for name in self.current.keys()}
        blend_uploads(list(uploads.values()), previous, self.pairs, self.beta)
        blended = []
        for i, message in enumerate(replies):
            level, arrays, _ = uploads.get(i, (0, {}, 0.0))
            if any(top in arrays for top, _ in self.pairs.get(level, ())):
                message = with_arrays(message, ArrayRecord({n: Array(a) for n, a in arrays.items()}))
            blended.append(message)
        return self.inner.aggregate_train(server_round, blended)
