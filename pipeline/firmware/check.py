"""The firmware check of one bundle on one core: the smallest arena that works in the C++ build,
then every sample run under QEMU and compared byte for byte with the Python TFLite Micro
interpreter's outputs, with flash, RAM and instructions measured from the ELF and the run."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.firmware import program, qemu
from pipeline.firmware.library import Library
from pipeline.firmware.toolchain import compiler_version, qemu_version


@dataclass(frozen=True)
class Build:
    """How the firmware is built: what the manifest records beside the figures."""

    core: str
    kernels: str
    build_type: str
    tflm_commit: str
    stack_bytes: int
    timeout_seconds: float


@dataclass(frozen=True)
class Figures:
    core: str
    kernels: str
    machine: str
    build_type: str
    compiler: str
    qemu: str
    tflm_commit: str
    samples: int
    identical: bool
    mismatch: str | None
    flash_bytes: int
    ram_bytes: int
    """.data + .bss (the reserved arena included) + the deepest stack the run reached."""
    static_ram_bytes: int
    stack_peak_bytes: int
    arena_bytes: int
    """The arena the bundle reserves (linked into .bss)."""
    arena_min_bytes: int
    """The smallest arena with which the C++ build allocates and runs (search to 16 B)."""
    instructions_per_inference: int
    """Median over the samples; QEMU counts instructions, not cycles."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _arena_runs(
    prog: program.Program, build: Build, sample: np.ndarray, out_bytes: int, arena: int, cache: Path
) -> qemu.Run:
    return qemu.run(
        prog.elf, prog.machine, sample, out_bytes, cache, arena, timeout=build.timeout_seconds
    )


def min_arena(
    prog: program.Program,
    build: Build,
    sample: np.ndarray,
    out_bytes: int,
    capacity: int,
    cache: Path,
    granularity: int = 16,
) -> int:
    """Binary search, as in Python: a larger arena never fails where a smaller one runs. Far too
    small an arena can fault the CPU (TFLite Micro keeps its own allocator in the arena), which
    reads as "does not fit"; one step below the minimum must fail cleanly in AllocateTensors."""
    first = _arena_runs(prog, build, sample, out_bytes, capacity, cache)
    if first.exit_code != 0:
        raise qemu.RunError(
            f"with the whole {capacity:,}-byte arena the C++ build stops: {first.reason}. {first.console}"
        )
    lo, hi = 0, capacity
    while hi - lo > granularity:
        mid = (lo + hi) // 2 // granularity * granularity
        if mid <= lo:
            break
        if _arena_runs(prog, build, sample, out_bytes, mid, cache).exit_code == 0:
            hi = mid
        else:
            lo = mid
    below = _arena_runs(prog, build, sample, out_bytes, hi - granularity, cache)
    if below.exit_code != qemu.ARENA_TOO_SMALL:
        raise qemu.RunError(
            f"one step below the smallest arena ({hi - granularity:,} B) the firmware did not fail "
            f"cleanly in AllocateTensors: {below.reason}"
        )
    return hi


def search_arena(
    bundle: Path,
    library: Library,
    build: Build,
    sample: np.ndarray,
    out_bytes: int,
    capacity: int,
    workdir: Path,
    cache: Path,
) -> int:
    """The C++ build's smallest arena, on a build of `bundle` with a `capacity`-byte arena."""
    defines = (f"-DTINYOPS_ARENA_CAPACITY={capacity}",)
    prog = program.build(bundle, library, build.core, workdir, cache, build.stack_bytes, defines)
    return min_arena(prog, build, sample, out_bytes, capacity, cache)


def first_mismatch(got: np.ndarray, expected: np.ndarray) -> str | None:
    differ = np.flatnonzero((got != expected).any(axis=1))
    if not len(differ):
        return None
    i = int(differ[0])
    return (
        f"sample {i} (of {len(got)}, {len(differ)} differ): firmware int8 logits {got[i].tolist()} "
        f"vs Python TFLite Micro {expected[i].tolist()}"
    )


def verify(
    bundle: Path,
    library: Library,
    build: Build,
    x: np.ndarray,
    expected: np.ndarray,
    arena_min: int,
    workdir: Path,
    cache: Path,
) -> Figures:
    """Build the bundle as it is, run every sample in `x`, compare and measure."""
    prog = program.build(bundle, library, build.core, workdir, cache, build.stack_bytes)
    out_bytes = int(np.prod(expected.shape[1:]))
    result = qemu.run(
        prog.elf, prog.machine, x, out_bytes, cache, count=True, timeout=build.timeout_seconds
    )
    if result.exit_code != 0 or result.outputs is None:
        raise qemu.RunError(f"the firmware stopped: {result.reason}. {result.console}")
    mismatch = first_mismatch(result.outputs, expected.reshape(len(expected), -1))
    stack = int(result.stack_peak_bytes or 0)
    return Figures(
        core=build.core,
        kernels=build.kernels,
        machine=prog.machine,
        build_type=build.build_type,
        compiler=compiler_version(),
        qemu=qemu_version(),
        tflm_commit=build.tflm_commit,
        samples=len(x),
        identical=mismatch is None,
        mismatch=mismatch,
        flash_bytes=prog.flash_bytes,
        ram_bytes=prog.static_ram_bytes + stack,
        static_ram_bytes=prog.static_ram_bytes,
        stack_peak_bytes=stack,
        arena_bytes=_reserved(bundle),
        arena_min_bytes=arena_min,
        instructions_per_inference=int(statistics.median(result.instructions)),
    )


def _reserved(bundle: Path) -> int:
    for line in (bundle / "tinyops_model.h").read_text().splitlines():
        if line.startswith("constexpr size_t kTensorArenaSize = "):
            return int(line.rsplit("=", 1)[1].strip(" ;"))
    raise ValueError(f"{bundle}/tinyops_model.h declares no kTensorArenaSize")
