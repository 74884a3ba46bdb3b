"""The shape of a training job: how the world of workers is cut into data-parallel replicas and
pipeline stages. Pure arithmetic, so params validation, the launcher's memory check, training and
`tinyops bench` all read one answer, and an impossible combination is an error before any work.

    data      every worker holds the whole model (DDP); dp = world
    fsdp      every worker holds 1/world of the model state (FSDP2 fully_shard); dp = world
    pipeline  the model is cut into stages at block boundaries, one worker per stage
              (two per worker with interleaved_1f1b); pp = world
    hybrid    a 2-D mesh: pp workers form one pipeline, replicated dp = world / pp times (DDP)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

Parallelism = Literal["data", "pipeline", "hybrid", "fsdp"]
Schedule = Literal["gpipe", "1f1b", "interleaved_1f1b"]
PIPELINED = ("pipeline", "hybrid")
AUTO_MICROBATCHES = 4  # pipeline and hybrid, when train.microbatches is auto


@dataclass(frozen=True)
class ParallelPlan:
    """dp × pp = world; `stages` model pieces, `stages_per_rank` of them on each pipeline rank."""

    parallelism: str
    world: int
    dp: int
    pp: int
    stages: int
    stages_per_rank: int
    microbatches: int
    schedule: str | None

    @property
    def pipelined(self) -> bool:
        return self.parallelism in PIPELINED

    def describe(self) -> str:
        """One phrase for logs, run names and the report, e.g. 'pipeline pp2 1f1b m4'."""
        if self.parallelism == "data":
            return f"data dp{self.dp}" + (f" m{self.microbatches}" if self.microbatches > 1 else "")
        if self.parallelism == "fsdp":
            return f"fsdp dp{self.dp}" + (f" m{self.microbatches}" if self.microbatches > 1 else "")
        mesh = f"dp{self.dp}×pp{self.pp}" if self.dp > 1 else f"pp{self.pp}"
        return (
            f"{self.parallelism} {mesh} {self.schedule} m{self.microbatches} ({self.stages} stages)"
        )

    def tag(self) -> str:
        """A short name for run names: ddp2, fsdp2, pp2, dp2pp2."""
        if self.parallelism == "data":
            return f"ddp{self.dp}"
        if self.parallelism == "fsdp":
            return f"fsdp{self.dp}"
        return f"pp{self.pp}" if self.dp == 1 else f"dp{self.dp}pp{self.pp}"


def make_plan(
    parallelism: str,
    world: int,
    *,
    blocks: int,
    pipeline_stages: int = 2,
    schedule: str = "1f1b",
    microbatches: int | str = "auto",
    batch_size: int | None = None,
) -> ParallelPlan:
    """The plan for `world` workers and a model of `blocks` splittable blocks, or a ValueError
    that names the params to change."""
    pipelined = parallelism in PIPELINED
    m = microbatches if isinstance(microbatches, int) else (AUTO_MICROBATCHES if pipelined else 1)
    if not pipelined:
        plan = ParallelPlan(parallelism, world, world, 1, 1, 1, m, None)
    else:
        plan = _pipeline_plan(parallelism, world, blocks, pipeline_stages, schedule, m)
    if batch_size is not None:
        _check_batch(plan, batch_size)
    return plan


def _pipeline_plan(
    parallelism: str, world: int, blocks: int, stages: int, schedule: str, m: int
) -> ParallelPlan:
    per_rank = 2 if schedule == "interleaved_1f1b" else 1
    if blocks < 2:
        raise ValueError(
            f"train.parallelism {parallelism} needs a model of at least 2 blocks to split; "
            f"model.channels has {blocks}. Add a block or use parallelism data or fsdp."
        )
    if stages > blocks:
        raise ValueError(
            f"train.pipeline_stages = {stages} is more stages than the model's {blocks} blocks "
            f"(model.channels); use at most {blocks}."
        )
    if stages % per_rank:
        raise ValueError(
            f"train.schedule interleaved_1f1b puts 2 stages on each pipeline worker: "
            f"train.pipeline_stages = {stages} must be even."
        )
    pp = stages // per_rank
    if pp < 2:
        raise ValueError(
            f"train.pipeline_stages = {stages} with schedule {schedule} makes a pipeline of one "
            "worker: nothing to pipeline. Use at least 2 pipeline workers."
        )
    if parallelism == "pipeline" and pp != world:
        raise ValueError(
            f"train.parallelism pipeline runs one pipeline over all {world} workers "
            f"(nproc_per_node × nnodes), but pipeline_stages = {stages} with schedule {schedule} "
            f"needs {pp}. Set train.pipeline_stages to {world * per_rank}, or nproc_per_node so "
            f"that the world is {pp}, or use parallelism hybrid."
        )
    if parallelism == "hybrid" and (world % pp or world // pp < 2):
        raise ValueError(
            f"train.parallelism hybrid needs a mesh dp × pp = world with dp ≥ 2: a world of "
            f"{world} workers cannot be factored over pp = {pp} pipeline workers. Use a world "
            f"that is a multiple of {2 * pp} (e.g. nproc_per_node {2 * pp}), or parallelism pipeline."
        )
    if m < pp:
        raise ValueError(
            f"train.microbatches = {m} is fewer than the {pp} pipeline workers: the schedule "
            f"would leave workers idle for the whole step. Use at least {pp} (4–8 is typical)."
        )
    return ParallelPlan(parallelism, world, world // pp, pp, stages, per_rank, m, schedule)


def _check_batch(plan: ParallelPlan, batch_size: int) -> None:
    unit = plan.dp * plan.microbatches
    if batch_size % unit:
        what = f"{plan.dp} replica(s)" + (
            f" × {plan.microbatches} microbatches" if plan.microbatches > 1 else ""
        )
        raise ValueError(
            f"train.batch_size = {batch_size} does not split evenly over {what}; "
            f"use a multiple of {unit}."
        )


# fp32 weights and gradients and AdamW's two moments: what each parameter costs a worker.
STATE_BYTES_PER_PARAM = 4 + 4 + 8


def worker_model_state_bytes(plan: ParallelPlan, block_params: list[int]) -> int:
    """The largest model state (parameters, gradients, optimizer) any one worker holds.

    data: the whole model; fsdp: 1/dp of it, plus one block's weights and gradients gathered in
    full while it runs; pipeline and hybrid: the heaviest pipeline worker's stages.
    """
    total = sum(block_params)
    if plan.parallelism == "data":
        return total * STATE_BYTES_PER_PARAM
    if plan.parallelism == "fsdp":
        return -(-total // plan.dp) * STATE_BYTES_PER_PARAM + max(block_params) * 8
    ranges = balanced_split(block_params, plan.stages)
    per_rank = [0] * plan.pp
    for i, blocks in enumerate(ranges):
        per_rank[i % plan.pp] += sum(block_params[b] for b in blocks)
    return max(per_rank) * STATE_BYTES_PER_PARAM


def balanced_split(costs: list[int], parts: int) -> list[range]:
    """Contiguous ranges of block indices, `parts` of them, minimising the largest sum of costs
    (a stage's memory is its blocks' parameters): every stage gets at least one block."""
    n = len(costs)
    best: dict[tuple[int, int], tuple[int, list[int]]] = {}

    def solve(start: int, k: int) -> tuple[int, list[int]]:
        if (start, k) in best:
            return best[(start, k)]
        if k == 1:
            result = (sum(costs[start:]), [n])
        else:
            result = (1 << 62, [])
            for end in range(start + 1, n - k + 2):
                rest, cuts = solve(end, k - 1)
                worst = max(sum(costs[start:end]), rest)
                if worst < result[0]:
                    result = (worst, [end, *cuts])
        best[(start, k)] = result
        return result

    cuts = [0, *solve(0, parts)[1]]
    return [range(a, b) for a, b in itertools.pairwise(cuts)]
