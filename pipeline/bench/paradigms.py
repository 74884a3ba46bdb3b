"""One configuration of the paradigm comparison in `tinyops bench`: data, fsdp, pipeline and
hybrid parallelism through training's own strategies (pipeline/training/), on synthetic tensors.

Started as N ranks by the bench (torchrun's environment, no agent). Rank 0 prints one JSON line:
samples/s over a steady-state window, each rank's model state (parameters, gradients, AdamW)
and the bytes it sends per step; for pipelines also the busy time (every microbatch's forward
and backward of the rank's stages, timed without communication), the one-way time of an
activation message, the measured bubble and the theoretical one, (p − 1) / (v·m + p − 1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from typing import Any

import torch
import torch.distributed as dist

from pipeline.bench.throughput import MODELS, _steady_state
from pipeline.core.parallel import make_plan
from pipeline.training.strategies import make_strategy
from pipeline.training.strategy import Setting


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(MODELS), default="default")
    parser.add_argument(
        "--parallelism", choices=["data", "fsdp", "pipeline", "hybrid"], default="data"
    )
    parser.add_argument("--schedule", default="1f1b")
    parser.add_argument("--microbatches", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128, help="global batch")
    parser.add_argument("--allreduce", choices=["auto", "backend"], default="auto")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--seconds", type=float, default=2.0)
    return parser.parse_args(argv)


def _init() -> None:
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    else:  # 1 × 1: a group of one, so the strategies run unchanged
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def _one_way_seconds(strategy: Any, micro: int) -> float:
    """Median one-way time of a boundary activation between pipeline ranks 0 and 1 (ping-pong)."""
    shape = (micro, *strategy.shapes[1][1:])
    buf, group, me = torch.zeros(shape), strategy.pp_group, strategy.pp_rank
    times = []
    for _ in range(20):
        dist.barrier(group=group)
        start = time.perf_counter()
        if me == 0:
            dist.send(buf, group=group, group_dst=1)
            dist.recv(buf, group=group, group_src=1)
        elif me == 1:
            dist.recv(buf, group=group, group_src=0)
            dist.send(buf, group=group, group_dst=0)
        times.append((time.perf_counter() - start) / 2)
    return statistics.median(times[5:])


def _allreduce_seconds(strategy: Any) -> float:
    """Median time of one all-reduce of the model's gradients, by the path the step uses
    (shared memory, or the backend over TCP)."""
    from pipeline.training import shm_allreduce

    grads = torch.randn(sum(p.numel() for p in strategy.model.parameters()))
    if strategy.shared_memory:
        shm = shm_allreduce.SharedMemoryAllReduce(grads.numel() * grads.element_size())
        reduce: Any = shm.allreduce_mean_
    else:
        reduce = dist.all_reduce
    times = []
    for _ in range(25):
        dist.barrier()
        start = time.perf_counter()
        reduce(grads)
        times.append(time.perf_counter() - start)
    return statistics.median(times[5:])


def _pipeline_figures(strategy: Any, plan: Any, micro: int, step_s: float) -> dict[str, Any]:
    busy = strategy.compute_seconds(micro) * plan.microbatches
    one_way = _one_way_seconds(strategy, micro)
    v = plan.stages_per_rank
    messages = 2 * plan.microbatches * v  # per boundary a rank sits on: activations + gradients
    theory = (plan.pp - 1) / (v * plan.microbatches + plan.pp - 1)
    return {
        "busy_s": busy,
        "comm_s": messages * one_way,
        "bubble_theory": theory,
        "ideal_step_s": busy / (1 - theory),
        "step_s": step_s,
    }


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    torch.set_num_threads(1)
    _init()
    world = dist.get_world_size()
    arch = MODELS[args.model]
    plan = make_plan(
        args.parallelism, world, blocks=len(arch.channels),
        schedule=args.schedule, microbatches=args.microbatches, batch_size=args.batch,
    )  # fmt: skip
    micro = args.batch // (plan.dp * plan.microbatches)
    torch.manual_seed(0)
    setting = Setting(plan, arch, torch.device("cpu"), 1e-3, 1e-4, args.allreduce, micro)
    strategy = make_strategy(setting)
    per_replica = args.batch // plan.dp
    x = torch.randn(per_replica, *arch.input_shape)
    y = torch.randint(0, arch.num_classes, (per_replica,))
    strategy.train()
    steps, seconds = _steady_state(lambda: strategy.step(x, y), args, True)
    mine: dict[str, Any] = {
        "state_bytes": sum(strategy.model_state_bytes().values()),
        "sent_bytes": strategy.sent_bytes_per_step(per_replica),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if plan.pipelined:
        mine |= _pipeline_figures(strategy, plan, micro, seconds / steps)
    if plan.parallelism == "data" and world > 1:
        mine["allreduce_s"] = _allreduce_seconds(strategy)
    rows: list[Any] = [None] * world
    dist.all_gather_object(rows, mine)
    if dist.get_rank() == 0:
        line = {
            "samples_per_s": steps * args.batch / seconds,
            "plan": plan.describe(),
            "ranks": rows,
        }
        print(json.dumps(line), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
