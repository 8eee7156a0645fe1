"""HypeMeFed's hypernetworks (Shin et al., 2024; ``eis-lab/HypeMeFed``): before aggregation, the
server generates the deeper layers a client could not train from the shallower ones it did.

One low-rank hypernetwork per pair of consecutive layers (``LowRankHypernetwork``, HypeMeFed's
``LRFConvHyperNetwork``): the trained shallower weight W_s (o x i x k x k, viewed as (o k) x (i k))
is factored by a rank-r SVD into A = (U_r S_r^1/2)^T and B = S_r^1/2 V_r^T; two MLPs map A to
(r x i' k) and B to (r x o' k); the generated deeper weight is ``map_B(B)^T map_A(A)``, viewed as
o' x i' x k x k. Each round the server trains every hypernetwork on the (W_s, W_t) pairs of the
clients that trained both layers (MSE, Adam, ``hypernetwork-epochs`` passes, one pair a step), then
fills each client's missing deeper weights from its own trained ones (a generated layer feeds the
next), and the wrapped strategy averages as usual. Only the paired weights are generated, as in
HypeMeFed: biases, normalisation layers and exit heads of missing layers are not.

Where mefl departs: the generated weights do enter the aggregate (the released code's write-back,
``model.state_dict()[name].data = ...``, leaves the model unchanged), and the rank is
``hypernetwork-rank`` capped by the weight's size (the released code builds them with the round
counter, 1, as rank). The hypernetworks are saved with every checkpoint (``server_state``), so
a stopped run continues (``resume-from``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy
from torch import nn

from ..seeds import server_round_seed
from .wrapping import WrappingStrategy, with_arrays


class LowRankHypernetwork(nn.Module):
    """Maps a trained layer's weight to the next layer's (shapes ``source`` -> ``target``)."""

    def __init__(self, source: Sequence[int], target: Sequence[int], rank: int, hidden: int = 512) -> None:
        super().__init__()
        kernel = source[2] if len(source) > 2 else 1
        if (target[2] if len(target) > 2 else 1) != kernel:
            raise ValueError(f"a hypernetwork maps weights of one kernel size, got {tuple(source)} -> {tuple(target)}")
        self.source, self.target, self.kernel = tuple(source), tuple(target), kernel
        rows, cols = source[0] * kernel, source[1] * kernel
        self.rank = max(1, min(rank, rows, cols))
        self.map_a = nn.Sequential(nn.Linear(rows, hidden), nn.ReLU(), nn.Linear(hidden, target[1] * kernel))
        self.map_b = nn.Sequential(nn.Linear(cols, hidden), nn.ReLU(), nn.Linear(hidden, target[0] * kernel))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.generate(*self.factors(weight))

    @torch.no_grad()  # the factors are the input, not something to learn through
    def factors(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A and B of the rank-r SVD of ``weight`` (fixed while the network trains: computed once
        per weight, not once per step)."""
        u, s, vh = torch.linalg.svd(weight.reshape(self.source[0] * self.kernel, -1), full_matrices=False)
        root = s[: self.rank].sqrt()
        return (u[:, : self.rank] * root).T, root[:, None] * vh[: self.rank]

    def generate(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The deeper weight from the shallower one's factors."""
        return (self.map_b(b).T @ self.map_a(a)).reshape(self.target)


class HypernetworkFill(WrappingStrategy):
    """Wraps a strategy: trains the hypernetworks on this round's uploads, fills each upload's
    missing deeper weights, then lets the wrapped strategy aggregate the filled uploads."""

    def __init__(
        self,
        inner: Strategy,
        pairs: Sequence[tuple[str, str]],
        rank: int,
        epochs: int = 25,
        learning_rate: float = 5e-4,
        seed: int = 0,
    ) -> None:
        super().__init__(inner)
        self.pairs = list(pairs)  # (source, target) array names, shallow to deep
        self.rank, self.epochs, self.learning_rate, self.seed = rank, epochs, learning_rate, seed
        self.networks: dict[tuple[str, str], LowRankHypernetwork] = {}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        uploads = {i: next(iter(m.content.array_records.values())) for i, m in enumerate(replies) if not m.has_error()}
        generator = torch.Generator().manual_seed(server_round_seed(self.seed, server_round))
        for pair in self.pairs:
            self._train(
                pair, [(u[pair[0]], u[pair[1]]) for u in uploads.values() if pair[0] in u and pair[1] in u], generator
            )
        filled = []
        for i, message in enumerate(replies):
            if i not in uploads or all(target in uploads[i] for _, target in self.pairs):
                filled.append(message)
                continue
            arrays = {name: uploads[i][name] for name in uploads[i].keys()}
            for source, target in self.pairs:
                if source in arrays and target not in arrays and (source, target) in self.networks:
                    with torch.no_grad():
                        weight = torch.from_numpy(arrays[source].numpy().astype(np.float32))
                        arrays[target] = Array(self.networks[(source, target)](weight).numpy())
            filled.append(with_arrays(message, ArrayRecord(arrays)))
        return self.inner.aggregate_train(server_round, filled)

    def server_state(self) -> dict[str, Any]:
        """The hypernetworks trained so far (server_state.py saves them with each checkpoint; the
        Adam state starts anew each round)."""
        return {
            "networks": [
                {"pair": list(pair), "source": list(n.source), "target": list(n.target), "weights": n.state_dict()}
                for pair, n in self.networks.items()
            ]
        }

    def load_server_state(self, state: dict[str, Any]) -> None:
        self.networks = {}
        for entry in state["networks"]:
            network = LowRankHypernetwork(entry["source"], entry["target"], self.rank)
            network.load_state_dict({k: torch.as_tensor(v) for k, v in entry["weights"].items()})
            self.networks[tuple(entry["pair"])] = network

    def _train(self, pair: tuple[str, str], examples: list[tuple[Array, Array]], generator: torch.Generator) -> None:
        if not examples:
            return
        sources = [torch.from_numpy(s.numpy().astype(np.float32)) for s, _ in examples]
        targets = [torch.from_numpy(t.numpy().astype(np.float32)) for _, t in examples]
        if pair not in self.networks:
            with torch.random.fork_rng():
                torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
                self.networks[pair] = LowRankHypernetwork(sources[0].shape, targets[0].shape, self.rank)
        network = self.networks[pair]
        factors = [network.factors(source) for source in sources]
        optimizer = torch.optim.Adam(network.parameters(), lr=self.learning_rate)  # anew each round, as HypeMeFed
        for _ in range(self.epochs):
            for j in torch.randperm(len(examples), generator=generator).tolist():
                loss = nn.functional.mse_loss(network.generate(*factors[j]), targets[j])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
