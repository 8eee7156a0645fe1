"""What a strategy keeps between rounds, saved beside each round's checkpoint so that a stopped run
continues as it would have gone on (``resume-from``, resume.py).

The strategy and every strategy it wraps (``chain``) are asked in turn: a strategy whose class
says what it keeps through ``server_state()`` / ``load_server_state()`` (FedDyn's h, HypeMeFed's
hypernetworks, or a user's strategy) gives it; Flower's built-in ones are read through the
attributes their source keeps between rounds (``FLOWER_STATE``). The state is a tree of tensors,
numbers and strings (numpy arrays are stored as tensors), so ``torch.load(weights_only=True)``
reads it. Adaptive DP clipping's state is not saved (its clipping norm), so resume.py refuses such
a run; a custom strategy without those two methods is continued without whatever it keeps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.serverapp.strategy import FedAvgM, Strategy
from flwr.serverapp.strategy.fedopt import FedOpt

# Flower's strategies and the attributes they carry from one round to the next (flwr 1.42's
# serverapp/strategy sources): FedOpt's moments (FedAdam, FedYogi, FedAdagrad) and FedAvgM's
# momentum. Their ``current_arrays`` is reset from the global model in ``configure_train`` (FedOpt)
# or, when None, taken from it (FedAvgM), so the checkpoint restores it.
FLOWER_STATE: tuple[tuple[type[Strategy], tuple[str, ...]], ...] = (
    (FedOpt, ("m_t", "v_t")),
    (FedAvgM, ("momentum_vector",)),
)


WRAPPED = ("inner", "strategy")  # where a wrapping strategy keeps the one it wraps


def chain(strategy: Strategy) -> list[Strategy]:
    """``strategy`` and the strategies it wraps (mefl's wrappers hold theirs in ``inner``, Flower's
    DP wrappers in ``strategy``), outermost first."""
    found = [strategy]
    while True:
        attributes = vars(found[-1])
        wrapped = next((attributes[a] for a in WRAPPED if isinstance(attributes.get(a), Strategy)), None)
        if wrapped is None:
            return found
        found.append(wrapped)


def server_state(strategy: Strategy) -> dict[str, Any]:
    """The state of every strategy in ``strategy``'s chain that keeps one, by position and class."""
    state = {}
    for position, part in enumerate(chain(strategy)):
        own = _state_of(part)
        if own:
            state[f"{position}:{type(part).__name__}"] = to_torch(own)
    return state


def load_server_state(strategy: Strategy, state: dict[str, Any]) -> None:
    """Give each strategy in the chain its part of ``state`` (written by ``server_state`` for the
    same chain); a part that fits no strategy of this chain is an error, not silently dropped."""
    parts = {f"{position}:{type(part).__name__}": part for position, part in enumerate(chain(strategy))}
    unknown = sorted(set(state) - set(parts))
    if unknown:
        raise ValueError(f"server state for {', '.join(unknown)}, which this run's strategy chain lacks")
    for key, own in state.items():
        part = parts[key]
        if _own_protocol(part):
            part.load_server_state(to_numpy(own))
            continue
        for name, value in to_numpy(own).items():
            setattr(part, name, value)


def _own_protocol(strategy: Strategy) -> bool:
    """Whether the strategy's class says what it keeps (looked up on the class: a wrapper hands
    unknown attributes to the strategy it wraps, whose state is its own part of the chain)."""
    return hasattr(type(strategy), "server_state")


def class_keeps_state(cls: type[Strategy]) -> bool:
    """Whether strategies of ``cls`` keep state between rounds that ``server_state`` saves."""
    return hasattr(cls, "server_state") or issubclass(cls, tuple(c for c, _ in FLOWER_STATE))


def _state_of(strategy: Strategy) -> dict[str, Any]:
    if _own_protocol(strategy):
        return strategy.server_state()
    for cls, names in FLOWER_STATE:
        if isinstance(strategy, cls):
            return {name: getattr(strategy, name) for name in names}
    return {}


def to_torch(value: Any) -> Any:
    """numpy arrays in a tree of dicts, lists and tuples as tensors (what ``weights_only`` loads)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, dict):
        return {k: to_torch(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_torch(v) for v in value)
    return value


def to_numpy(value: Any) -> Any:
    """The inverse of ``to_torch``: every tensor of the tree as a numpy array."""
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: to_numpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_numpy(v) for v in value)
    return value
