"""train.parallelism fsdp: FSDP2 (`fully_shard`). Each rank keeps 1/world of the parameters,
gradients and AdamW state; a block's parameters are all-gathered just for its forward and
backward, and gradients are reduce-scattered back to their owners."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pipeline.models.architecture import build_model
from pipeline.training.strategy import Replicated, Setting, make_optimizer, parameter_bytes


class FullyShardedDataParallel(Replicated):
    """Every convolution and the classifier are their own FSDP unit, the rest (BatchNorm) the
    root's: only one unit's full parameters exist at a time beside the shards."""

    name = "fsdp"

    def __init__(self, setting: Setting) -> None:
        from torch.distributed.fsdp import fully_shard

        super().__init__(setting)
        model = build_model(setting.arch).to(setting.device)
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                fully_shard(module)
        self.model = fully_shard(model)
        self.optimizer = make_optimizer(self.model, setting.lr, setting.weight_decay)

    @contextlib.contextmanager
    def _sync(self, last: bool) -> Iterator[None]:
        """Reduce-scatter only after the last microbatch's backward."""
        self.model.set_requires_gradient_sync(last)  # type: ignore[operator]
        yield

    def sent_bytes_per_step(self, replica_batch: int) -> int:
        """All-gathers of the parameters for the forward and again for the backward, and a
        reduce-scatter of the gradients: 3 (n − 1) / n of the parameters' bytes."""
        n = dist.get_world_size()
        return 3 * (n - 1) * parameter_bytes(self.model) // n

    def state(self) -> dict[str, Any]:
        """This rank's shards (DTensors) and its copy of the buffers."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return {k: v.detach().clone() for k, v in get_model_state_dict(self.model).items()}

    def load_state(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(self.model, state)

    def full_state(self, state: dict[str, Any], writer: int) -> dict[str, torch.Tensor]:
        """All-gather each shard; only the writer keeps the full tensors."""
        full = {}
        for k, v in state.items():
            tensor = v.full_tensor() if hasattr(v, "full_tensor") else v
            if dist.get_rank() == writer:
                full[k] = tensor.detach().to("cpu").clone()
        return full
