"""An example user strategy, plugged in by import path:

    flwr run . --run-config \\
        "strategy='mefl_app.example_strategy:UpdateNormFedAvg' strategy-kwargs='{\\"tag\\": \\"demo\\"}'"

Any ``flwr.serverapp.strategy.Strategy`` subclass importable by the ServerApp works the same
way (keep it inside the app folder so that ``flwr run`` ships it). Arguments of mefl's own
(``fraction_train``, ``min_available_nodes``, ``train_metrics_aggr_fn``, ...) are passed when the
constructor accepts them; ``strategy-kwargs`` (a JSON object) adds the rest.
"""

from __future__ import annotations

from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord
from flwr.common.logger import log
from flwr.serverapp.strategy import FedAvg


class UpdateNormFedAvg(FedAvg):
    """FedAvg that logs how far each round moved the global model (L2 norm of the change)."""

    def __init__(self, tag: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.tag = tag
        self._previous: ArrayRecord | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid):
        if self._previous is not None:
            change = sum(float(np.sum((arrays[k].numpy() - self._previous[k].numpy()) ** 2)) for k in arrays)
            log(
                INFO,
                "[%s] round %d: global model moved by %.4f",
                self.tag or "update-norm",
                server_round - 1,
                change**0.5,
            )
        self._previous = arrays
        return super().configure_train(server_round, arrays, config, grid)
