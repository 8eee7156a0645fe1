"""Compute accounting: FLOPs measured on the real model with PyTorch's ``FlopCounterMode``."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode


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
