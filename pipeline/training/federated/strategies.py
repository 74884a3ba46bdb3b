"""train.federated.strategy → Flower's own strategy, used for what it computes: the message
each sampled client gets (configure_train) and the aggregate of their replies (aggregate_train).
Sampling, the order replies are aggregated in, and the round loop are the server's
(pipeline/training/federated/server.py): stock FedAvg samples at random and sums replies in arrival
order, and the same params must give the same weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, Strategy

from pipeline.core.config import FederatedParams

# The server's own sampling hands each strategy exactly the clients of the round.
_ALL = {"fraction_train": 1.0, "fraction_evaluate": 1.0, "min_train_nodes": 1,
        "min_evaluate_nodes": 1, "min_available_nodes": 1}  # fmt: skip

STRATEGIES: dict[str, Callable[[FederatedParams], Strategy]] = {
    "fedavg": lambda fp: FedAvg(**_ALL),
    "fedprox": lambda fp: FedProx(proximal_mu=fp.mu, **_ALL),
    "fedavgm": lambda fp: FedAvgM(
        server_learning_rate=fp.server_lr or 1.0 - fp.server_momentum,
        server_momentum=fp.server_momentum,
        **_ALL,
    ),
    "fedadam": lambda fp: FedAdam(eta=fp.server_lr or 0.01, **_ALL),
}

# The server-side state a strategy carries between rounds (FedAvgM's momentum, FedAdam's
# moments): saved in each round's checkpoint, so a resumed server aggregates as before.
STATE = ("current_arrays", "momentum_vector", "m_t", "v_t")


def make_strategy(fp: FederatedParams) -> Strategy:
    return STRATEGIES[fp.strategy](fp)


class Sampled:
    """A Grid as configure_train sees it: exactly this round's clients' nodes."""

    def __init__(self, nodes: Iterable[int]) -> None:
        self.nodes = list(nodes)

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def _plain(value: Any) -> Any:
    """Flower's records and numpy arrays as plain dicts and lists of arrays."""
    if value is None:
        return None
    if hasattr(value, "to_numpy_ndarrays"):  # an ArrayRecord
        return {"record": {k: value[k].numpy() for k in value}}
    if isinstance(value, dict):
        return {"dict": {k: np.asarray(v) for k, v in value.items()}}
    return {"list": [np.asarray(v) for v in value]}


def _restore(value: Any) -> Any:
    from flwr.app import Array, ArrayRecord

    if value is None:
        return None
    kind, content = next(iter(value.items()))
    if kind == "record":
        return ArrayRecord({k: Array(np.asarray(v)) for k, v in content.items()})
    return dict(content) if kind == "dict" else list(content)


def state_of(strategy: Strategy) -> dict[str, Any]:
    return {name: _plain(getattr(strategy, name)) for name in STATE if hasattr(strategy, name)}


def load_state(strategy: Strategy, state: dict[str, Any]) -> None:
    for name, value in state.items():
        setattr(strategy, name, _restore(value))
