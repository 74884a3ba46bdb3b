"""Run by tests/training/test_shm_allreduce.py under torchrun (2 workers): the shared-memory all-reduce
against the arithmetic it promises and against gloo inside DDP. Rank 0 prints one JSON line."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch import nn

from pipeline.training.data_parallel import make_ddp, train_step, use_shared_memory
from pipeline.training.shm_allreduce import SharedMemoryAllReduce
from pipeline.training.strategy import make_optimizer


def inputs(rank: int, n: int, dtype: torch.dtype, call: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * call + rank)
    return torch.randn(n, generator=g, dtype=dtype) * 10 ** (rank - 3)


def train(shared: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
    ddp, _ = make_ddp(model, torch.device("cpu"), shared)
    opt = make_optimizer(model, 1e-2, 1e-4)
    g = torch.Generator().manual_seed(dist.get_rank())
    for _ in range(10):
        train_step(
            ddp, opt, torch.randn(16, 20, generator=g), torch.randint(0, 5, (16,), generator=g)
        )
    return [p.detach().clone() for p in model.parameters()]


def fallback() -> None:
    """TINYOPS_SHM_DIR names a folder where set-up fails: DDP must fall back on every rank."""
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
    _, used = make_ddp(model, torch.device("cpu"), True)
    a, b = train(shared=True), train(shared=False)
    if dist.get_rank() == 0:
        equal = all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        print(json.dumps({"used_shared_memory": used, "equal_to_gloo": equal}), flush=True)


def main() -> None:
    dist.init_process_group("gloo")
    if sys.argv[1:] == ["fallback"]:
        fallback()
        dist.destroy_process_group()
        return
    rank, world = dist.get_rank(), dist.get_world_size()
    out: dict[str, object] = {
        "auto": use_shared_memory("auto"),
        "backend": use_shared_memory("backend"),
    }
    shm = SharedMemoryAllReduce(100_000 * 8, timeout_s=2.0)
    exact, same = True, True
    # Sizes and dtypes vary call to call, so both slot generations are reused many times.
    for call, (n, dtype) in enumerate(
        [(7, torch.float32), (100_000, torch.float64), (1, torch.float32), (94_186, torch.float32)]
        * 3
    ):
        t = inputs(rank, n, dtype, call)
        shm.allreduce_mean_(t)
        expected = inputs(0, n, dtype, call).clone()
        for r in range(1, world):
            expected.add_(inputs(r, n, dtype, call))
        exact &= torch.equal(t, expected.div_(world))
        gathered = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(gathered, t)
        same &= all(torch.equal(gathered[0], x) for x in gathered)
    out["exact"], out["same_on_every_rank"] = exact, same
    try:
        shm.allreduce_mean_(torch.zeros(100_001, dtype=torch.float64))
        out["too_big"] = "accepted"
    except ValueError as exc:
        out["too_big"] = str(exc)
    a, b = train(shared=True), train(shared=False)
    out["ddp_equal_to_gloo"] = all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    out["ddp_max_diff"] = max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))
    # Rank 1 skips a call: rank 0 must time out with a clear error, not hang.
    if rank == 0:
        try:
            shm.allreduce_mean_(torch.zeros(4))
            out["timeout"] = "returned"
        except TimeoutError as exc:
            out["timeout"] = str(exc)
    dist.barrier()
    if rank == 0:
        print(json.dumps(out), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
