"""train.parallelism pipeline and hybrid: the model cut into stages at block boundaries and run
by torch.distributed.pipelining's own schedules (GPipe, 1F1B, interleaved 1F1B), never a
hand-written one. hybrid replicates each pipeline dp times on a (pp, dp) DeviceMesh, with DDP on
the dp dimension of every stage.

Static shapes always (input_args/output_args): shape inference at run time silently corrupted
BatchNorm statistics of later stages in trials here. Each rank builds the full model from the
same seed, so its share starts with exactly the weights single-process training starts with,
then keeps only its blocks, under their original parameter names.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pipeline.core.parallel import balanced_split
from pipeline.models.architecture import (
    block_parameters,
    build_model,
    pipeline_stage,
    prune_to_blocks,
)
from pipeline.training.strategy import (
    Setting,
    Strategy,
    average_buffers,
    classify,
    make_optimizer,
    parameter_bytes,
    quiet_grad_stride_warning,
)

SCHEDULES = {
    "gpipe": "ScheduleGPipe",
    "1f1b": "Schedule1F1B",
    "interleaved_1f1b": "ScheduleInterleaved1F1B",
}


def _loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(output, target)


def boundary_shapes(model: nn.Module, ranges: list[range], input_shape: tuple[int, ...]) -> list:
    """The activation shape (batch of 1) entering each stage, and the logits' shape last, from a
    no-grad eval pass (no BatchNorm update, no dropout draw, so no side effect on the model)."""
    n_blocks = ranges[-1].stop
    shapes, x = [], torch.zeros((1, *input_shape))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for blocks in ranges:
            shapes.append(tuple(x.shape))
            x = pipeline_stage(model, blocks, n_blocks)(x)
    model.train(was_training)
    return [*shapes, tuple(x.shape)]


class PipelineParallel(Strategy):
    """Stages i, i + pp, … on pipeline rank i; pipelines replicated over the dp dimension."""

    name = "pipeline"

    @property
    def checkpoints(self) -> Any:
        """A shard per rank, cut per stage: it loads only at the world that wrote it."""
        from pipeline.training.checkpoint import ShardedCheckpoints

        return ShardedCheckpoints(reshards=False)

    def __init__(self, setting: Setting) -> None:
        super().__init__(setting)
        plan, arch = self.plan, setting.arch
        self.mesh = _mesh(setting.device, plan.pp, plan.dp)
        self.pp_group, self.dp_group = self.mesh["pp"].get_group(), self.mesh["dp"].get_group()
        self.pp_rank = dist.get_rank(self.pp_group)
        self.ranges = balanced_split(block_parameters(arch), plan.stages)
        self.mine = list(range(self.pp_rank, plan.stages, plan.pp))
        full = build_model(arch)
        self.key_order = list(full.state_dict())
        self._local: dict[int, torch.Tensor] = {}  # interleaved: activations between our stages
        self.shapes = boundary_shapes(full, self.ranges, arch.input_shape)
        owned = {b for i in self.mine for b in self.ranges[i]}
        self.model = prune_to_blocks(full, owned).to(setting.device)
        n_blocks = len(arch.channels)
        self.stage_modules = [
            pipeline_stage(self.model, self.ranges[i], n_blocks) for i in self.mine
        ]
        self.optimizer = make_optimizer(self.model, setting.lr, setting.weight_decay)
        self.schedule = self._schedule(setting.micro_size)

    def _schedule(self, micro: int) -> Any:
        from torch.distributed import pipelining

        stages = []
        for i, module in zip(self.mine, self.stage_modules, strict=True):
            x_in = torch.zeros((micro, *self.shapes[i][1:]), device=self.setting.device)
            x_in.requires_grad_(i > 0)
            out = torch.zeros((micro, *self.shapes[i + 1][1:]), device=self.setting.device)
            submod = (
                module if self.plan.dp == 1 else _ddp(module, self.setting.device, self.dp_group)
            )
            last = i == self.plan.stages - 1
            stages.append(
                pipelining.PipelineStage(
                    submod, i, self.plan.stages, self.setting.device,
                    input_args=x_in, output_args=out, group=self.pp_group,
                    # Without them a static stage expects no gradient back and fails.
                    output_grads=None if last else torch.zeros_like(out),
                    input_grads=torch.zeros_like(x_in) if i > 0 else None,
                )
            )  # fmt: skip
        cls = getattr(pipelining, SCHEDULES[self.plan.schedule or "1f1b"])
        first = stages if self.plan.stages_per_rank > 1 else stages[0]
        return cls(first, n_microbatches=self.plan.microbatches, loss_fn=_loss)

    @property
    def holds_first(self) -> bool:
        return 0 in self.mine

    @property
    def holds_last(self) -> bool:
        return self.plan.stages - 1 in self.mine

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, int]:
        """One schedule step over the microbatches (gradients summed, then divided by m)."""
        self.optimizer.zero_grad(set_to_none=True)
        losses: list[torch.Tensor] = []
        args = (xb,) if self.holds_first else ()
        target = yb if self.holds_last else None
        self.schedule.step(*args, target=target, losses=losses, return_outputs=False)
        self.optimizer.step()
        loss_sum = torch.zeros((), dtype=torch.float64, device=xb.device)
        for loss in losses:
            loss_sum += loss.detach().double() * (len(yb) // self.plan.microbatches)
        return loss_sum, len(yb) if self.holds_last else 0

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, int]:
        """This replica's share forwarded stage to stage (eval mode, no grad)."""
        replica, replicas = self.replica
        xs, ys = x[replica::replicas].to(self.setting.device), y[replica::replicas]
        self.model.eval()
        result = (0.0, 0.0, 0)
        with torch.no_grad():
            for i in range(self.plan.stages):
                owner = i % self.plan.pp
                if owner != self.pp_rank:
                    continue
                act = xs if i == 0 else self._receive(i, len(xs), owner)
                act = self.stage_modules[self.mine.index(i)](act)
                if i == self.plan.stages - 1:
                    result = classify(act, ys.to(act.device))
                else:
                    self._send(act, (i + 1) % self.plan.pp, i)
        return result

    def _receive(self, i: int, n: int, owner: int) -> torch.Tensor:
        buf = torch.empty((n, *self.shapes[i][1:]), device=self.setting.device)
        source = (i - 1) % self.plan.pp
        if source != owner:
            dist.recv(buf, group=self.pp_group, group_src=source)
            return buf
        return self._local.pop(i)

    def _send(self, act: torch.Tensor, dest: int, i: int) -> None:
        if dest == self.pp_rank:  # interleaved: the next stage is ours too
            self._local[i + 1] = act
        else:
            dist.send(act.contiguous(), group=self.pp_group, group_dst=dest)

    def end_epoch(self) -> None:
        average_buffers(self.model, self.dp_group)

    def sent_bytes_per_step(self, replica_batch: int) -> int:
        """Activations forward out of each of our stages but the last, their gradients back out
        of each but the first (fp32), and with dp > 1 a ring all-reduce of our stages' gradients."""
        sent = 0
        for i in self.mine:
            if i < self.plan.stages - 1:
                sent += replica_batch * _numel(self.shapes[i + 1]) * 4
            if i > 0:
                sent += replica_batch * _numel(self.shapes[i]) * 4
        dp = self.plan.dp
        return sent + 2 * (dp - 1) * parameter_bytes(self.model) // dp

    def compute_seconds(self, micro: int, repeats: int = 20) -> float:
        """Forward and backward of all our stages on one microbatch, no communication: the busy
        time the schedule has to fit m of (median of `repeats`)."""
        import statistics
        import time

        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for i, module in zip(self.mine, self.stage_modules, strict=True):
                shape = (micro, *self.shapes[i][1:])
                x = torch.randn(shape, device=self.setting.device, requires_grad=i > 0)
                out = module(x)
                out.backward(torch.ones_like(out))
            times.append(time.perf_counter() - start)
        self.optimizer.zero_grad(set_to_none=True)
        return statistics.median(times)

    def full_state(self, state: dict[str, torch.Tensor], writer: int) -> dict[str, torch.Tensor]:
        """Every stage's part, gathered on the writer: together they are the whole model."""
        parts: list[Any] = [None] * dist.get_world_size() if dist.get_rank() == writer else []
        dist.gather_object(
            {k: v.to("cpu") for k, v in state.items()},
            parts if dist.get_rank() == writer else None,
            dst=writer,
        )
        full: dict[str, torch.Tensor] = {}
        for part in parts:
            full.update(part)
        return {k: full[k] for k in self.key_order} if full else {}


def _numel(shape: tuple[int, ...]) -> int:
    """Elements per sample of an activation shape (batch of 1)."""
    n = 1
    for d in shape[1:]:
        n *= d
    return n


def _mesh(device: torch.device, pp: int, dp: int) -> Any:
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (pp, dp), mesh_dim_names=("pp", "dp"))


def _ddp(module: nn.Module, device: torch.device, group: Any) -> nn.Module:
    """A stage replicated over the dp dimension; the schedule holds its all-reduce back until
    the last microbatch's backward."""
    quiet_grad_stride_warning()
    return nn.parallel.DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        process_group=group,
        forward_sync_buffers=False,
    )
