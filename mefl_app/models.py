"""Multi-exit networks: a small ResNet for images and a stacked LSTM for sensor windows.

Every model returns the list of exit logits, shallowest first, and can stop at any exit
(``forward(x, up_to_exit=k)``) without computing a single layer past it: that is what lets a
weak device run only the front of the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.resnet import BasicBlock, conv1x1, conv3x3

NORM_LAYERS = ("batch", "group")


def make_norm_layer(norm: str, group_channels: int = 8):
    """Return a ``norm_layer(num_channels)`` factory for torchvision's ``BasicBlock``.

    ``"group"`` (GroupNorm with ``group_channels`` channels per group) keeps no running
    statistics, so averaging weights across label-skewed clients cannot leave the global model
    with statistics that fit no client -- the failure BatchNorm shows under FedAvg
    (Hsieh et al., "The Non-IID Data Quagmire", ICML 2020).
    """
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "group":
        return lambda channels: nn.GroupNorm(max(1, channels // group_channels), channels)
    raise ValueError(f"norm must be one of {NORM_LAYERS}, got {norm!r}")


class MultiExitResNet(nn.Module):
    """ResNet of five ``BasicBlock`` s with a classifier exit after some of them.

    Chosen size (1x28x28 input, defaults): a 3x3 stem of 16 channels with stride 2 (28->14),
    then blocks of widths 16, 32, 32, 64, 64 with strides 1, 2, 1, 2, 1 (14->7->4). One
    sample's forward pass to the last exit costs about 9 MFLOPs (FlopCounterMode), the whole
    study (50 rounds x 24 clients x 5 local epochs) stays a laptop-CPU job. Exits sit after
    blocks 1, 3 and 5; each is global average pooling, dropout and one linear layer.

    ``exit_after=(5,)`` is the single-exit baseline: the same backbone, only the last exit.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        *,
        exit_after: Sequence[int] = (1, 3, 5),
        widths: Sequence[int] = (16, 32, 32, 64, 64),
        strides: Sequence[int] = (1, 2, 1, 2, 1),
        stem_width: int = 16,
        stem_stride: int = 2,
        norm: str = "group",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if len(widths) != len(strides):
            raise ValueError("widths and strides must have the same length")
        exit_after = tuple(int(b) for b in exit_after)
        if not exit_after or list(exit_after) != sorted(set(exit_after)):
            raise ValueError(f"exit_after must be increasing block numbers, got {exit_after}")
        if exit_after[0] < 1 or exit_after[-1] > len(widths):
            raise ValueError(f"exit_after must lie in 1..{len(widths)}, got {exit_after}")
        norm_layer = make_norm_layer(norm)
        self.exit_after = exit_after

        self.stem = nn.Sequential(
            conv3x3(in_channels, stem_width, stem_stride), norm_layer(stem_width), nn.ReLU(inplace=True)
        )
        blocks, inplanes = [], stem_width
        for planes, stride in zip(widths, strides):
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = nn.Sequential(conv1x1(inplanes, planes, stride), norm_layer(planes))
            blocks.append(BasicBlock(inplanes, planes, stride, downsample, norm_layer=norm_layer))
            inplanes = planes
        # Only the blocks some exit needs: a single-exit model after block 3 has 3 blocks.
        self.blocks = nn.ModuleList(blocks[: exit_after[-1]])
        for module in self.modules():  # torchvision's ResNet initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

        # The deepest exit is created first so that single- and multi-exit models built from
        # the same seed share the initial backbone AND the initial last exit.
        heads = {b: self._exit_head(widths[b - 1], num_classes, dropout) for b in reversed(exit_after)}
        self.exits = nn.ModuleList(heads[b] for b in exit_after)

    @staticmethod
    def _exit_head(channels: int, num_classes: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes)
        )

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def forward(self, x: Tensor, up_to_exit: int | None = None) -> list[Tensor]:
        """Logits of exits ``1..up_to_exit`` (all exits by default), shallowest first."""
        last = _check_exit(up_to_exit, self.num_exits)
        out, logits = self.stem(x), []
        for block_number, block in enumerate(self.blocks, start=1):
            out = block(out)
            if block_number in self.exit_after:
                logits.append(self.exits[len(logits)](out))
                if len(logits) == last:
                    break
        return logits


def _check_exit(up_to_exit: int | None, num_exits: int) -> int:
    if up_to_exit is None:
        return num_exits
    if not 1 <= up_to_exit <= num_exits:
        raise ValueError(f"up_to_exit must lie in 1..{num_exits}, got {up_to_exit}")
    return up_to_exit


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
        exit_after = tuple(int(layer) for layer in exit_after)
        if not exit_after or list(exit_after) != sorted(set(exit_after)):
            raise ValueError(f"exit_after must be increasing layer numbers, got {exit_after}")
        if exit_after[0] < 1 or exit_after[-1] > num_layers:
            raise ValueError(f"exit_after must lie in 1..{num_layers}, got {exit_after}")
        self.exit_after = exit_after
        self.layers = nn.ModuleList(
            nn.LSTM(input_size if i == 0 else hidden_size, hidden_size, batch_first=True)
            for i in range(exit_after[-1])
        )
        # Deepest exit first, as in MultiExitResNet: single- and multi-exit share initial weights.
        heads = {layer: nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, num_classes)) for layer in reversed(exit_after)}
        self.exits = nn.ModuleList(heads[layer] for layer in exit_after)

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def forward(self, x: Tensor, up_to_exit: int | None = None) -> list[Tensor]:
        """Logits of exits ``1..up_to_exit`` (all exits by default), shallowest first."""
        last = _check_exit(up_to_exit, self.num_exits)
        out, logits = x, []
        for layer_number, layer in enumerate(self.layers, start=1):
            out, _ = layer(out)
            if layer_number in self.exit_after:
                logits.append(self.exits[len(logits)](out[:, -1]))
                if len(logits) == last:
                    break
        return logits


# -- compute accounting --------------------------------------------------------------------------
def _lstm_layer_flops(input_shape, w_ih_shape, w_hh_shape, *args, out_shape=None, **kwargs) -> int:
    """One LSTM layer over a whole sequence: the four gates' input and hidden matmuls."""
    steps_times_batch = 1
    for d in input_shape[:-1]:
        steps_times_batch *= d
    gates, inputs = w_ih_shape
    return 2 * steps_times_batch * gates * (inputs + w_hh_shape[1])


def _lstm_layer_backward_flops(input_shape, w_ih_shape, w_hh_shape, *args, out_shape=None, **kwargs) -> int:
    """Gradients for inputs/hidden state and for the weights: twice the forward matmuls."""
    return 2 * _lstm_layer_flops(input_shape, w_ih_shape, w_hh_shape)


# PyTorch's FlopCounterMode knows convolutions and matmuls but not the fused CPU LSTM kernel.
_EXTRA_FLOP_FORMULAS = {}
if hasattr(torch.ops.aten, "mkldnn_rnn_layer"):
    _EXTRA_FLOP_FORMULAS[torch.ops.aten.mkldnn_rnn_layer] = _lstm_layer_flops
    _EXTRA_FLOP_FORMULAS[torch.ops.aten.mkldnn_rnn_layer_backward] = _lstm_layer_backward_flops


def flop_counter() -> FlopCounterMode:
    """``FlopCounterMode`` that also counts the LSTM layers of ``MultiExitLSTM`` on CPU."""
    return FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)


def forward_mflops_per_exit(model: nn.Module, sample: Tensor) -> list[float]:
    """Measured MFLOPs of one sample's forward pass up to each exit (``sample``: one input,
    no batch dimension). Counted in eval mode on the real model."""
    was_training = model.training
    model.eval()
    costs = []
    with torch.no_grad():
        for k in range(1, model.num_exits + 1):
            with flop_counter() as counter:
                model(sample.unsqueeze(0), up_to_exit=k)
            costs.append(counter.get_total_flops() / 1e6)
    model.train(was_training)
    return costs
