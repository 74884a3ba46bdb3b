"""Gradient all-reduce through shared memory when every DDP worker is on this host.

gloo moves a 2-worker all-reduce over TCP loopback as several messages, each handed between its
I/O thread and the worker by sleeping and waking. On a 2-core VM that cost more than the default
CNN's backward pass and slowed the forward pass running beside it (33 ms a step, against 16 ms
here; docs/performance-notes.md). Here each worker copies its bucket into its own slot of one shared
mapping, publishes a call counter, waits for the others' counters, and sums every slot in rank
order: all workers compute the same bytes, whatever the timing.

Used only where that is sound: gloo, every rank on this host, x86-64 (its store order makes the
counter publish the data written before it; elsewhere the backend's all-reduce is used). The
mapping is unlinked as soon as every worker has it open, so a killed job leaves nothing behind.

Its memory is reserved up front (posix_fallocate), so a full /dev/shm (Docker's default is
64 MiB) is an error at set-up rather than a SIGBUS mid-training. Any set-up failure on any rank
(no space, no /dev/shm, a failed open) is shared with every rank, and all of them fall back to
the backend's all-reduce together, with one warning naming the cause. TINYOPS_SHM_DIR names
another folder than /dev/shm (the tests use a tiny tmpfs).
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


SHM_DIR_ENV = "TINYOPS_SHM_DIR"


class SharedMemoryUnavailable(RuntimeError):
    """Set-up failed on some rank; every rank raises it with the same message."""


def _shm_dir() -> str:
    return os.environ.get(SHM_DIR_ENV) or "/dev/shm"


def _reserve(size: int) -> str:
    """Rank 0: create the file and reserve its memory (a sparse file would SIGBUS when full)."""
    fd, path = tempfile.mkstemp(prefix="tinyops-allreduce-", dir=_shm_dir())
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return path


def _map(path: str, size: int) -> mmap.mmap:
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def _rank_and_world(group) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    import torch.distributed as dist

    return dist.get_rank(group), dist.get_world_size(group)


def _map_on_every_rank(size: int, rank: int, world: int, group) -> mmap.mmap:  # type: ignore[no-untyped-def]
    """Rank 0 reserves the file, every rank maps it, all ranks agree on the outcome; the name is
    unlinked once every rank has it open (or has failed)."""
    import torch.distributed as dist

    src = dist.get_global_rank(group, 0) if group is not None else 0
    box: list[str | None] = [None, None]  # path, rank 0's error
    if rank == 0:
        try:
            box[0] = _reserve(size)
        except OSError as exc:
            box[1] = f"rank 0 could not reserve {size:,} B in {_shm_dir()}: {exc}"
    dist.broadcast_object_list(box, src=src, group=group)
    path, error, mapped = box[0], box[1], None
    if error is None:
        try:
            mapped = _map(str(path), size)
        except OSError as exc:
            error = f"rank {rank} could not map {path}: {exc}"
    errors: list[str | None] = [None] * world
    dist.all_gather_object(errors, error, group=group)  # also: every rank is past its open
    if rank == 0 and path:
        os.unlink(path)
    failed = [e for e in errors if e]
    if failed:
        if mapped is not None:
            mapped.close()
        raise SharedMemoryUnavailable(failed[0])
    assert mapped is not None
    return mapped


class SharedMemoryAllReduce:
    """One mapping shared by the workers: a counter per rank, then two generations (by call
    parity) of one slot per rank. A slot is rewritten only two calls later, by which time every
    worker has published the call in between, so it has finished reading this one."""

    def __init__(self, max_bytes: int, group=None, timeout_s: float = TIMEOUT_S) -> None:  # type: ignore[no-untyped-def]
        """Map the shared file on every rank of `group` (DDP's process group; default: the
        default group). Raises SharedMemoryUnavailable on every rank if any rank failed."""
        import numpy as np
        import torch

        self.rank, self.world = _rank_and_world(group)
        self.timeout_s = timeout_s
        self.slot_bytes = -(-max_bytes // LINE) * LINE
        header = LINE * self.world
        size = header + 2 * self.world * self.slot_bytes
        self._map = _map_on_every_rank(size, self.rank, self.world, group)
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
