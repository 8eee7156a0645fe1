"""Multi-exit stacked LSTM for sensor windows (batch x time x axes)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .exits import check_exit, check_exit_positions


class MultiExitLSTM(nn.Module):
    """Stacked LSTM for sensor windows with a classifier exit after chosen layers.

    One ``nn.LSTM`` module per layer, so every layer's output sequence is reachable and running
    only to exit k computes no later layer. Each exit: dropout, then one linear layer on the
    layer's output at the last time step. Input: batch x time x axes (151 x 3 for UniMiB-SHAR).
    """

    def __init__(
        self,
        num_classes: int = 17,
        input_size: int = 3,
        *,
        hidden_size: int = 64,
        num_layers: int = 3,
        exit_after: Sequence[int] = (1, 2, 3),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        exit_after = check_exit_positions(exit_after, num_layers, "layer")
        self.exit_after = exit_after
        self.layers = nn.ModuleList(
            nn.LSTM(input_size if i == 0 else hidden_size, hidden_size, batch_first=True) for i in range(exit_after[-1])
        )
        # Deepest exit first, as in MultiExitResNet: single- and multi-exit share initial weights.
        heads = {
            layer: nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, num_classes))
            for layer in reversed(exit_after)
        }
        self.exits = nn.ModuleList(heads[layer] for layer in exit_after)

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def forward(self, x: Tensor, up_to_exit: int | None = None) -> list[Tensor]:
        """Logits of exits ``1..up_to_exit`` (all exits by default), shallowest first."""
        last = check_exit(up_to_exit, self.num_exits)
        out, logits = x, []
        for layer_number, layer in enumerate(self.layers, start=1):
            out, _ = layer(out)
            if layer_number in self.exit_after:
                logits.append(self.exits[len(logits)](out[:, -1]))
                if len(logits) == last:
                    break
        return logits
