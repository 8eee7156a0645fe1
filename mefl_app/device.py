"""Where and how a process computes: the torch device and the number of torch threads."""

from __future__ import annotations

import torch

from .settings import RunSettings


def select_device(settings: RunSettings) -> torch.device:
    if settings.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch sees no CUDA device on this machine")
    return torch.device(settings.device)


def apply_thread_setting(settings: RunSettings) -> None:
    """Pin torch's intra-op threads; with N clients sharing N cores, 1 thread each avoids
    oversubscription (``torch-threads = 0`` keeps torch's own default)."""
    if settings.torch_threads and torch.get_num_threads() != settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
