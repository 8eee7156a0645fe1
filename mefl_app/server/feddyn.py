"""FedDyn (Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021), the
aggregation DepthFL trains with (Kim et al., ICLR 2023), per array so that clients at different
depths (exit levels) take part.

As DepthFL's code runs it (Flower's ``baselines/depthfl/depthfl/strategy.py``): for every array
l, with P_l the replying clients that hold it and m the number of clients in the federation,
``mean_l`` = the unweighted mean over P_l, ``h_l <- h_l - alpha |P_l| / m (mean_l - previous_l)``,
and the new global array is ``mean_l - h_l / alpha``; an array nobody sent keeps its value and
its h. Normalisation statistics (BatchNorm's running mean / var) are averaged plainly. Clients
add FedDyn's terms to their loss and keep their own state between rounds (``train.py``,
``client_app.py``): the server tells them ``alpha`` in the train config. ``h`` is saved with
every checkpoint (server_state.py) and the clients' state with ``client-state-dir``, so a stopped
run continues (``resume-from``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

ALPHA_KEY = "feddyn-alpha"  # in the train config: the clients' FedDyn coefficient
NOT_REGULARISED = ("running_mean", "running_var", "num_batches_tracked")


class FedDyn(FedAvg):
    """FedDyn's server: FedAvg's sampling and configuration, FedDyn's aggregate and state ``h``."""

    accepts_partial_uploads = True  # it averages each array over the clients that hold it

    def __init__(
        self,
        alpha: float = 0.1,
        *,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        train_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        evaluate_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
        )
        if alpha <= 0:
            raise ValueError(f"FedDyn's alpha must be > 0, got {alpha}")
        self.alpha = alpha
        self.h: dict[str, np.ndarray] = {}  # the server state, one array per model array
        self.num_clients = 0  # m: every client of the federation, not only those sampled
        self.current: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current = arrays
        self.num_clients = max(self.num_clients, len(list(grid.get_node_ids())))
        return super().configure_train(server_round, arrays, ConfigRecord({**config, ALPHA_KEY: self.alpha}), grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ok = [m for m in replies if not m.has_error()]
        if not ok or self.current is None:
            return None, None
        uploads = [next(iter(m.content.array_records.values())) for m in ok]
        result = {}
        for name in self.current.keys():
            previous = self.current[name].numpy()
            held = [upload[name].numpy().astype(np.float64) for upload in uploads if name in upload]
            if not held:
                result[name] = Array(previous.copy())
                continue
            mean = np.mean(np.stack(held), axis=0)
            if name.endswith(NOT_REGULARISED) or not np.issubdtype(previous.dtype, np.floating):
                result[name] = Array(mean.astype(previous.dtype))
                continue
            h = self.h.get(name, np.zeros_like(mean)) - self.alpha * len(held) / max(self.num_clients, 1) * (
                mean - previous
            )
            self.h[name] = h
            result[name] = Array((mean - h / self.alpha).astype(previous.dtype))
        metrics = self.train_metrics_aggr_fn([m.content for m in ok], self.weighted_by_key)
        return ArrayRecord(result), metrics

    def server_state(self) -> dict[str, Any]:
        """What the next round needs beyond the global model (server_state.py saves it)."""
        return {"h": dict(self.h), "num_clients": self.num_clients}

    def load_server_state(self, state: dict[str, Any]) -> None:
        self.h, self.num_clients = dict(state["h"]), int(state["num_clients"])
