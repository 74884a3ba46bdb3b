"""train.parallelism data: every worker holds the whole model and DDP averages the gradients,
through shared memory on one host (shm_allreduce.py) or the backend's all-reduce."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pipeline.models.architecture import build_model
from pipeline.training import shm_allreduce
from pipeline.training.strategy import (
    Replicated,
    Setting,
    make_optimizer,
    parameter_bytes,
    quiet_grad_stride_warning,
)


def use_shared_memory(allreduce: str) -> bool:
    """train.allreduce resolved for this job (pipeline/training/shm_allreduce.py)."""
    if allreduce == "backend" or dist.get_world_size() == 1:
        return False
    reason = shm_allreduce.this_job_reason(dist.get_backend())
    if allreduce == "shared_memory" and reason:
        raise RuntimeError(f"train.allreduce is shared_memory, but {reason}")
    return reason is None


def make_ddp(
    model: nn.Module, device: torch.device, shared_memory: bool = False
) -> tuple[nn.parallel.DistributedDataParallel, bool]:
    """DDP as training and `tinyops bench` use it, and whether it averages through shared memory.

    No buffer broadcast before every forward (a collective per step that 2 CPU workers feel);
    average_buffers averages the BatchNorm statistics once per epoch instead. Gradients live in
    the all-reduce bucket itself, saving a copy per step. With shared_memory, the gradients are
    averaged through a mapping the workers share instead of gloo's TCP; if that cannot be set up
    on some rank, every rank keeps the backend's all-reduce and rank 0 says why.
    """
    ddp = nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False,
        gradient_as_bucket_view=True,
    )
    if not shared_memory:
        return ddp, False
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    try:
        state = shm_allreduce.SharedMemoryAllReduce(grad_bytes, group=ddp.process_group)
    except shm_allreduce.SharedMemoryUnavailable as exc:
        if dist.get_rank() == 0:
            warnings.warn(
                f"shared-memory all-reduce unavailable ({exc}); using the backend's all-reduce",
                RuntimeWarning,
                stacklevel=2,
            )
        return ddp, False
    ddp.register_comm_hook(state, shm_allreduce.comm_hook)
    return ddp, True


def train_step(
    ddp: nn.Module, optimizer: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor
) -> torch.Tensor:
    """One step on one batch: what `tinyops bench` times for DDP."""
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(ddp(xb), yb)
    loss.backward()
    optimizer.step()
    return loss.detach()


class DataParallel(Replicated):
    """DDP: the whole model on every rank; each rank steps on its own shard of the data."""

    name = "data"

    def __init__(self, setting: Setting) -> None:
        super().__init__(setting)
        self.model = build_model(setting.arch).to(setting.device)
        quiet_grad_stride_warning()
        self.ddp, self.shared_memory = make_ddp(
            self.model, setting.device, use_shared_memory(setting.allreduce)
        )
        self.optimizer = make_optimizer(self.model, setting.lr, setting.weight_decay)

    def describe(self) -> str:
        via = "shared memory" if self.shared_memory else dist.get_backend()
        return f"{self.plan.describe()} (all-reduce: {via})"

    @property
    def replica(self) -> tuple[int, int]:
        return dist.get_rank(), dist.get_world_size()

    def train(self) -> None:
        self.ddp.train()

    def batches(self, n: int, seed: int, epoch: int, batch_size: int) -> list[torch.Tensor]:
        """DistributedSampler's shard of the epoch's permutation, cut into this rank's batches
        (the last one may be short, unless microbatches need equal cuts)."""
        from torch.utils.data import DistributedSampler

        rank, world = self.replica
        sampler = DistributedSampler(
            range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed
        )
        sampler.set_epoch(epoch)
        per = batch_size // world
        out = list(torch.tensor(list(sampler), dtype=torch.long).split(per))
        if self.plan.microbatches > 1 and out and len(out[-1]) < per:
            out.pop()
        return out

    def _forward_module(self) -> nn.Module:
        return self.ddp

    def _sync(self, last: bool) -> Any:
        return contextlib.nullcontext() if last else self.ddp.no_sync()

    def sent_bytes_per_step(self, replica_batch: int) -> int:
        """A ring all-reduce of the gradients: 2 (n − 1) / n of their bytes."""
        n = dist.get_world_size()
        return 2 * (n - 1) * parameter_bytes(self.model) // n

    @property
    def checkpoints(self) -> Any:
        """Every replica is identical: the writer's one file per epoch is the whole state."""
        from pipeline.training.checkpoint import FileCheckpoints

        return FileCheckpoints()

    def full_state(self, state: dict[str, torch.Tensor], writer: int) -> dict[str, torch.Tensor]:
        """Every replica holds the same weights: the writer's own copy is the model."""
        return {k: v.to("cpu") for k, v in state.items()} if dist.get_rank() == writer else {}
