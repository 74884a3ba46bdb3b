"""One training interface, four parallelism strategies behind it (train.parallelism).

The worker's loop (pipeline/training/worker.py) knows only this interface: it hands a strategy
its replica's batch, asks for the loss, the evaluation share and the model state, and never
branches on which strategy it holds. Each strategy lives in its own module:

    data      data_parallel.py      DDP (shared-memory or backend all-reduce)
    fsdp      fsdp.py               FSDP2 fully_shard
    pipeline  pipeline_parallel.py  torch.distributed.pipelining stages and schedules
    hybrid    pipeline_parallel.py  the same pipelines, replicated with DDP on a (pp, dp) mesh

pipeline/training/strategies.py maps train.parallelism to its implementation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from pipeline.models.tasks import Classification, task_for

if TYPE_CHECKING:
    from pipeline.core.parallel import ParallelPlan
    from pipeline.models.architecture import Architecture


@dataclass(frozen=True)
class Setting:
    """What every strategy is built from."""

    plan: ParallelPlan
    arch: Architecture
    device: torch.device
    lr: float
    weight_decay: float
    allreduce: str = "auto"
    micro_size: int = 1  # samples per microbatch (pipelines need static shapes)


class Strategy(ABC):
    """A model placed on this rank and how one step, one evaluation and the state work."""

    name = ""
    model: nn.Module  # this rank's share, with the full model's parameter names
    optimizer: torch.optim.Optimizer

    def __init__(self, setting: Setting) -> None:
        self.setting = setting
        self.plan = setting.plan

    # placement -------------------------------------------------------------------------------
    @property
    def replica(self) -> tuple[int, int]:
        """(this rank's data-parallel replica, replicas): which slice of a global batch it takes."""
        return dist.get_rank() % self.plan.dp, self.plan.dp

    def describe(self) -> str:
        return self.plan.describe()

    def batches(self, n: int, seed: int, epoch: int, batch_size: int) -> list[torch.Tensor]:
        """This replica's sample indices for each step of `epoch`. One seeded permutation of the
        training set is cut into global batches (a last partial one is dropped: pipelines need
        static shapes) and replica r takes the r-th contiguous slice of each, so the replicas'
        microbatches are exactly those of single-process training with dp × m microbatches."""
        g = torch.Generator()
        g.manual_seed(seed + epoch)  # DistributedSampler's permutation with one replica
        order = torch.randperm(n, generator=g)
        replica, replicas = self.replica
        per = batch_size // replicas
        return [
            order[i * batch_size + replica * per : i * batch_size + (replica + 1) * per]
            for i in range(n // batch_size)
        ]

    # training --------------------------------------------------------------------------------
    def train(self) -> None:
        self.model.train()

    @abstractmethod
    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, int]:
        """One optimizer step on this replica's batch; this rank's (sum of losses as a float64
        tensor, samples) to add up over all ranks (ranks without a loss, e.g. early pipeline
        stages, give (0, 0))."""

    @abstractmethod
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, int]:
        """This rank's (loss sum, correct, samples) over its share of a split, in eval mode."""

    def end_epoch(self) -> None:  # noqa: B027 (a hook: nothing to do for one replica)
        """Average BatchNorm statistics over the replicas (each saw its own data)."""

    # state -----------------------------------------------------------------------------------
    @property
    def checkpoints(self) -> Any:
        """How this strategy's checkpoints are written: a shard per rank, unless overridden."""
        from pipeline.training.checkpoint import ShardedCheckpoints

        return ShardedCheckpoints()

    def state(self) -> dict[str, torch.Tensor]:
        """This rank's model state (a CPU copy): full, a shard, or a stage's part."""
        return {k: v.detach().to("cpu").clone() for k, v in self.model.state_dict().items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    @abstractmethod
    def full_state(self, state: dict[str, torch.Tensor], writer: int) -> dict[str, torch.Tensor]:
        """Collective: the whole model's state dict on `writer` (plain CPU tensors), from every
        rank's `state()`; other ranks get {}."""

    @abstractmethod
    def sent_bytes_per_step(self, replica_batch: int) -> int:
        """What this rank sends per optimizer step (logical payload of its collectives and
        point-to-point messages), for `tinyops bench`'s comparison of the paradigms."""

    def model_state_bytes(self) -> dict[str, int]:
        """This rank's parameters, gradients and optimizer state in bytes (local shards)."""

        def local(t: Any) -> torch.Tensor:
            return t.to_local() if hasattr(t, "to_local") else t

        params = [local(p) for p in self.model.parameters()]
        grads = [local(p.grad) for p in self.model.parameters() if p.grad is not None]
        opt = [
            local(v)
            for s in self.optimizer.state.values()
            for v in s.values()
            if isinstance(v, torch.Tensor) and v.dim() > 0
        ]
        size = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
        return {"parameters": size(params), "gradients": size(grads), "optimizer": size(opt)}


class Replicated(Strategy):
    """Data-parallel replicas (DDP, FSDP): each rank steps on its own share of the batch and
    evaluates its share of a split with a module every rank calls alike."""

    def _forward_module(self) -> nn.Module:
        return self.model

    def _sync(self, last: bool) -> Any:
        """A context holding the gradient reduction back on all but the last microbatch."""
        raise NotImplementedError

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, int]:
        self.optimizer.zero_grad(set_to_none=True)
        task = task_for(self.setting.arch)
        out = accumulate(
            self._forward_module(), xb, yb, self.plan.microbatches, self._sync, task.loss
        )
        self.optimizer.step()
        return out

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, int]:
        """Every rank runs one forward on its share (FSDP's all-gathers are collectives)."""
        self.model.eval()
        rank, world = self.replica
        with torch.no_grad():
            xs, ys = x[rank::world].to(self.setting.device), y[rank::world].to(self.setting.device)
            return task_for(self.setting.arch).evaluate(self.model(xs), xs, ys)

    def end_epoch(self) -> None:
        average_buffers(self.model)  # each replica ran BatchNorm on its own data


def quiet_grad_stride_warning() -> None:
    """A 1-channel first conv's weight grad comes back with strides (9,1,3,1) against the
    parameter's (9,9,3,1): the same memory, since that dim has size 1. DDP warns anyway."""
    import warnings

    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of the whole parameters (DTensor shards counted at their full size)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with the fused kernel: one call per step instead of several ops per parameter."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)


def accumulate(
    model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, m: int, sync: Any, loss_fn: Any
) -> tuple[torch.Tensor, int]:
    """Forward and backward over m microbatches; gradients summed, then divided by m (what a
    pipeline schedule does), so every strategy computes the same step. `sync(last)` is a context
    that holds the gradient all-reduce back on all but the last microbatch; `loss_fn(out, x, y)`
    is the task's mean loss."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=xb.device)
    for i, (xm, ym) in enumerate(zip(xb.tensor_split(m), yb.tensor_split(m), strict=True)):
        with sync(i == m - 1):
            loss = loss_fn(model(xm), xm, ym)
            loss.backward()
        loss_sum += loss.detach().double() * len(ym)
    if m > 1:
        for p in model.parameters():
            if p.grad is not None:
                p.grad.div_(m)
    return loss_sum, len(yb)


def classify(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float, int]:
    """(loss sum, correct, samples) of class logits (the pipelines' families classify)."""
    return Classification().evaluate(logits, logits, y)


def average_buffers(model: nn.Module, group: Any = None) -> None:
    """Average the floating-point buffers (BatchNorm statistics) over `group`."""
    floats = [b for b in model.buffers() if b.is_floating_point()]
    size = dist.get_world_size(group)
    if not floats or size == 1:
        return
    flat = torch.cat([b.reshape(-1) for b in floats])
    dist.all_reduce(flat, group=group)
    flat /= size
    offset = 0
    for b in floats:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()
