"""Gradient all-reduce through shared memory when every DDP worker is on this host.

gloo moves a 2-worker all-reduce over TCP loopback as several messages, each handed between its
I/O thread and the worker by sleeping and waking. On a 2-core VM that cost more than the default
CNN's backward pass and slowed the forward pass running beside it (33 ms a step, against 16 ms
here; README, Performance). Here each worker copies its bucket into its own slot of one shared
mapping, publishes a call counter, waits for the others' counters, and sums every slot in rank
order: all workers compute the same bytes, whatever the timing.

Used only where that is sound: gloo, every rank on this host, x86-64 (its store order makes the
counter publish the data written before it; elsewhere the backend's all-reduce is used). The
mapping is unlinked as soon as every worker has it open, so a killed job leaves nothing behind.
"""

from __future__ import annotations

import mmap
import os
import platform
import tempfile
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

LINE = 64  # bytes: counters on separate cache lines, slots aligned for any dtype
SPIN_CALLS = 20_000  # polls before yielding the core (a few ms: the usual gap between workers)
TIMEOUT_S = 1800.0  # as gloo's default: a worker that never arrives is an error, not a hang


def unavailable_reason(backend: str, world: int, local_world: int, machine: str) -> str | None:
    """Why shared memory cannot carry this job's all-reduce, or None when it can."""
    if backend != "gloo":
        return f"backend is {backend}"
    if world < 2:
        return "a single worker has nothing to reduce"
    if local_world != world:
        return f"{world} workers span several hosts ({local_world} on this one)"
    if machine.lower() not in ("x86_64", "amd64"):
        return f"{machine} may reorder stores; only x86-64 is supported"
    return None


def this_job_reason(backend: str) -> str | None:
    """unavailable_reason for the running torchrun job."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return unavailable_reason(backend, world, local, platform.machine())


def _shm_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class SharedMemoryAllReduce:
    """One mapping shared by the workers: a counter per rank, then two generations (by call
    parity) of one slot per rank. A slot is rewritten only two calls later, by which time every
    worker has published the call in between, so it has finished reading this one."""

    def __init__(self, max_bytes: int, timeout_s: float = TIMEOUT_S) -> None:
        import numpy as np
        import torch
        import torch.distributed as dist

        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.timeout_s = timeout_s
        self.slot_bytes = -(-max_bytes // LINE) * LINE
        header = LINE * self.world
        size = header + 2 * self.world * self.slot_bytes
        name: list[str | None] = [None]
        if self.rank == 0:
            fd, name[0] = tempfile.mkstemp(prefix="tinyops-allreduce-", dir=_shm_dir())
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
        dist.broadcast_object_list(name, src=0)
        path = str(name[0])
        try:
            fd = os.open(path, os.O_RDWR)
            try:
                self._map = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        finally:
            dist.barrier()  # every worker has it mapped (or has failed): the name can go
            if self.rank == 0:
                os.unlink(path)
        self._seq: np.ndarray = np.frombuffer(self._map, dtype=np.int64, count=header // 8)[
            :: LINE // 8
        ]
        self._slots = torch.frombuffer(
            self._map, dtype=torch.uint8, offset=header, count=2 * self.world * self.slot_bytes
        ).view(2, self.world, self.slot_bytes)
        self.calls = 0

    def allreduce_mean_(self, t: torch.Tensor) -> torch.Tensor:
        """Replace `t` (contiguous, CPU) by the mean of every worker's `t`, summed in rank order."""
        nbytes = t.numel() * t.element_size()
        if nbytes > self.slot_bytes:
            raise ValueError(f"all-reduce of {nbytes:,} B exceeds the {self.slot_bytes:,} B slot")
        self.calls += 1
        call = self.calls
        slots = self._slots[call % 2, :, :nbytes].view(t.dtype)
        flat = t.view(-1)
        slots[self.rank].copy_(flat)
        self._seq[self.rank] = call  # after the data: x86 keeps stores in order
        self._wait(call)
        flat.copy_(slots[0])
        for r in range(1, self.world):
            flat.add_(slots[r])
        return t.div_(self.world)

    def _wait(self, call: int) -> None:
        seq = self._seq
        for r in range(self.world):
            polls = 0
            start = 0.0
            while seq[r] < call:
                polls += 1
                if polls < SPIN_CALLS:
                    continue
                now = time.monotonic()
                if not start:
                    start = now
                elif now - start > self.timeout_s:
                    raise TimeoutError(
                        f"rank {self.rank}: rank {r} did not reach all-reduce {call} "
                        f"within {self.timeout_s:g} s"
                    )
                # A worker far behind (a slow epoch-end, a busy machine): give the core away.
                if now - start < 0.05:
                    os.sched_yield()
                else:
                    time.sleep(2e-4)


def comm_hook(state, bucket):  # type: ignore[no-untyped-def]
    """DDP communication hook: the bucket's mean over the workers, done when it returns.

    Unannotated on purpose: DDP compares the annotations with dist.GradBucket and
    Future[Tensor] themselves, which this module's postponed (string) annotations never equal.
    """
    import torch

    fut = torch.futures.Future()
    fut.set_result(state.allreduce_mean_(bucket.buffer()))
    return fut
