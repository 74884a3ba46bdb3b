"""Steady-state training throughput of one configuration, for `tinyops bench`.

Run plainly (one process) or under torchrun (DDP, gloo or NCCL). The step is training's own
(make_ddp, make_optimizer, train_step from pipeline/training/worker.py) on synthetic tensors of the
model's input shape, so only the training step is measured: no data loading, no start-up. The
timed window is long enough (--seconds) to be a steady state on a noisy machine. Rank 0 prints
one JSON line: samples/s over the timed steps, and the median all-reduce time of a buffer the size
of the model's gradients, through gloo and (where training would use it) shared memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from pipeline.models.architecture import Architecture, build_model, count_parameters
from pipeline.training.data_parallel import make_ddp, train_step, use_shared_memory
from pipeline.training.shm_allreduce import SharedMemoryAllReduce
from pipeline.training.strategy import make_optimizer

MODELS = {
    # The default pipeline's CNN on 8×8 digits.
    "default": Architecture((8, 8, 1), 10, (32, 64, 128), 3, 0.1),
    # ResNet-8-sized (MLPerf Tiny image classification: ~80k parameters) on 32×32×3.
    "resnet8": Architecture((32, 32, 3), 10, (32, 64, 128), 3, 0.1),
    # Deeper and heavier per sample (4 blocks, 390k parameters): the paradigm comparison's
    # second model, where a pipeline stage has more compute per microbatch to hide its bubble.
    "deep": Architecture((32, 32, 3), 10, (32, 64, 128, 256), 3, 0.1),
}


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(MODELS), default="default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64, help="global batch")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of warm-up, at least")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed window, at least")
    parser.add_argument(
        "--allreduce", choices=["auto", "backend"], default="auto", help="as train.allreduce"
    )
    return parser.parse_args(argv)


def _most(value: float, distributed: bool) -> float:
    """Every rank must run the same number of steps (each one is a collective): the largest of
    the ranks' values."""
    if not distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _steady_state(
    step: Callable[[], None], args: argparse.Namespace, distributed: bool
) -> tuple[int, float]:
    """Warm up for a time, not a step count (a ResNet-8 step is 10× a default one); the warm-up
    steps' own time sizes the timed window. Returns (steps, seconds)."""

    def timed(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            step()
        return (time.perf_counter() - start) / n

    timed(3)
    per_step = _most(timed(3), distributed)
    per_step = timed(max(1, int(args.warmup / per_step)))
    steps = int(_most(max(10, int(args.seconds / per_step) + 1), distributed))
    if distributed:
        dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if distributed:
        dist.barrier()
    return steps, time.perf_counter() - start


def _allreduce_ms(parameters: int, shared: bool) -> dict[str, float]:
    """Median time to all-reduce a gradient-sized buffer, gloo and (where used) shared memory."""
    grads = torch.zeros(parameters)
    ways = {"gloo": dist.all_reduce}
    if shared:
        ways["shared memory"] = SharedMemoryAllReduce(grads.numel() * 4).allreduce_mean_
    result = {}
    for way, fn in ways.items():
        times = []
        dist.barrier()
        for _ in range(30):
            t = time.perf_counter()
            fn(grads)
            times.append((time.perf_counter() - t) * 1000)
        result[way] = statistics.median(times[5:])
    return result


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    torch.set_num_threads(args.threads)
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    world = dist.get_world_size() if distributed else 1
    torch.manual_seed(0)
    arch = MODELS[args.model]
    model = build_model(arch)
    net, shared = (
        make_ddp(model, torch.device("cpu"), use_shared_memory(args.allreduce))
        if distributed
        else (model, False)
    )
    opt = make_optimizer(model, lr=1e-3, weight_decay=1e-4)
    per_rank = args.batch // world
    x = torch.randn(per_rank, *arch.input_shape)
    y = torch.randint(0, arch.num_classes, (per_rank,))
    steps, seconds = _steady_state(lambda: train_step(net, opt, x, y), args, distributed)
    allreduce_ms = _allreduce_ms(count_parameters(model), shared) if distributed else {}
    if not distributed or dist.get_rank() == 0:
        line = {
            "samples_per_s": int(steps) * args.batch / seconds,
            "allreduce_ms": allreduce_ms or None,
            "allreduce": "shared memory" if shared else ("gloo" if distributed else None),
            "parameters": count_parameters(model),
        }
        print(json.dumps(line), flush=True)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
