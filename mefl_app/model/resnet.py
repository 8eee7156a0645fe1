"""Multi-exit ResNet for images, built from torchvision's ``BasicBlock``.

The block is torchvision's (``torchvision/models/resnet.py``), restated here rather than imported:
importing torchvision takes about 2 s per process (its ``ops`` import ``torch._dynamo``), and a
deployment starts a fresh ClientApp process for every message. Same names, so the same
``state_dict`` keys; a unit test checks that both compute the same.

The model returns the list of exit logits, shallowest first, and can stop at any exit
(``forward(x, up_to_exit=k)``) without computing a single layer past it: that is what lets a
weak device run only the front of the network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from ..settings import NORMS
from .exits import check_exit, check_exit_positions


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding, no bias (torchvision's ``conv3x3``)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias (torchvision's ``conv1x1``): the shortcut's projection."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual shortcut (He et al., CVPR 2016): torchvision's
    ``BasicBlock`` without its unused ``groups`` / ``base_width`` / ``dilation`` options."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


def make_norm_layer(norm: str, group_channels: int = 8):
    """Return a ``norm_layer(num_channels)`` factory for ``BasicBlock``.

    ``"group"`` (GroupNorm with ``group_channels`` channels per group) keeps no running
    statistics, so averaging weights across label-skewed clients cannot leave the global model
    with statistics that fit no client -- the failure BatchNorm shows under FedAvg
    (Hsieh et al., "The Non-IID Data Quagmire", ICML 2020).
    """
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "group":
        return lambda channels: nn.GroupNorm(max(1, channels // group_channels), channels)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


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
        exit_after = check_exit_positions(exit_after, len(widths), "block")
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
        last = check_exit(up_to_exit, self.num_exits)
        out, logits = self.stem(x), []
        for block_number, block in enumerate(self.blocks, start=1):
            out = block(out)
            if block_number in self.exit_after:
                logits.append(self.exits[len(logits)](out))
                if len(logits) == last:
                    break
        return logits
