"""A torch model's state as Flower arrays and back, and the pieces client and server share:
the model the params describe, seeded streams. Only floating-point entries travel (a
BatchNorm's step counter is not averaged); keys go in sorted order so every message and every
aggregate is built the same way."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.core.config import Params
from pipeline.data.prepare import load_meta
from pipeline.models.architecture import Architecture, architecture_for, build_model


def architecture(params: Params, meta_dir: Any) -> Architecture:
    meta = load_meta(meta_dir)
    return architecture_for(params, meta.input_shape, meta.num_classes, meta.classes)


def initial_model(params: Params, arch: Architecture) -> torch.nn.Module:
    """The global model of round 0: the seed alone decides its weights."""
    torch.manual_seed(params.train.seed)
    return build_model(arch)


def to_arrays(model: torch.nn.Module) -> Any:
    from flwr.app import Array, ArrayRecord

    state = model.state_dict()
    return ArrayRecord({k: Array(state[k].detach().cpu().numpy().copy())
                        for k in sorted(state) if state[k].is_floating_point()})  # fmt: skip


def numpy_state(record: Any) -> dict[str, np.ndarray]:
    return {k: record[k].numpy() for k in sorted(record.keys())}


def load_arrays(model: torch.nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Copy the arrays into the model, cast to each entry's own dtype (a server optimiser may
    hand back float64)."""
    state = model.state_dict()
    with torch.no_grad():
        for k, value in arrays.items():
            state[k].copy_(torch.from_numpy(np.asarray(value)).to(state[k].dtype))


def record_bytes(record: Any) -> int:
    return sum(record[k].numpy().nbytes for k in record)


def stream_seed(*parts: int) -> int:
    """A seed for (train.seed, round, client, …): every client-round draws its own stream, so a
    resumed or re-sampled run draws the same numbers."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
