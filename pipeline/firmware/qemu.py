"""Run the test firmware on the core's QEMU machine model, with semihosting for its files and an
instruction-counting TCG plugin (built from icount.c once per QEMU version) for its cost."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core import atomic
from pipeline.firmware.program import harness_text
from pipeline.firmware.toolchain import qemu_version

MAGIC = 0x53504F54  # "TOPS", both ways
EXIT_CODES = {
    0: "ok",
    3: "semihosting I/O failed",
    4: "the model's schema version differs from the library's",
    5: "RegisterOps failed",
    6: "AllocateTensors failed: the arena is too small",
    7: "the model's input or output is not int8",
    8: "Invoke failed",
    9: "the CPU faulted",
}
ARENA_TOO_SMALL = 6


class RunError(Exception):
    """The firmware did not run to completion under QEMU."""


@dataclass(frozen=True)
class Run:
    exit_code: int
    outputs: np.ndarray | None
    """int8 outputs, one row per sample (None unless the run completed)."""
    arena_used_bytes: int | None
    stack_peak_bytes: int | None
    instructions: list[int]
    """Instructions executed by each Invoke()."""
    console: str

    @property
    def reason(self) -> str:
        return EXIT_CODES.get(self.exit_code, f"exit code {self.exit_code}")


def plugin(cache: Path) -> Path:
    """The instruction counter as a host shared library, built once per source and QEMU."""
    text = harness_text("icount.c")
    key = hashlib.sha256((text + qemu_version()).encode()).hexdigest()[:16]
    lib = cache / "qemu-plugin" / f"icount-{key}.so"
    if not lib.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "icount.c"
            src.write_text(text)
            lib.parent.mkdir(parents=True, exist_ok=True)
            with atomic.atomic_path(lib) as out:
                subprocess.run(
                    ["cc", "-shared", "-fPIC", "-O2", str(src), "-o", str(out)], check=True
                )
    return lib


def mark_address(elf: Path) -> int:
    out = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "tinyops_mark":
            return int(parts[0], 16) & ~1
    raise RunError(f"{elf} has no tinyops_mark symbol")


def _parse(raw: bytes, samples: int, output_bytes: int) -> tuple[np.ndarray, int, int]:
    size = samples * output_bytes
    if len(raw) != size + 12:
        raise RunError(f"the firmware wrote {len(raw)} bytes, expected {size + 12}")
    magic, arena, stack = struct.unpack("<III", raw[size:])
    if magic != MAGIC:
        raise RunError("the firmware's output trailer is corrupt")
    out = np.frombuffer(raw[:size], dtype=np.int8).reshape(samples, output_bytes)
    return out, arena, stack


def run(
    elf: Path,
    machine: str,
    inputs: np.ndarray,
    output_bytes: int,
    cache: Path,
    arena_bytes: int = 0,
    count: bool = False,
    timeout: float = 300.0,
) -> Run:
    """Feed int8 `inputs` (one row per sample) to the firmware; arena_bytes 0 = the whole arena."""
    x = np.ascontiguousarray(inputs, dtype=np.int8).reshape(len(inputs), -1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "tinyops_in.bin").write_bytes(
            struct.pack("<III", MAGIC, arena_bytes, len(x)) + x.tobytes()
        )
        cmd = [
            "qemu-system-arm",
            "-M",
            machine,
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            "none",
            "-semihosting-config",
            "enable=on,target=native",
            "-kernel",
            str(elf),
        ]
        if count:
            marks = work / "marks.txt"
            cmd += ["-plugin", f"{plugin(cache)},mark={mark_address(elf):#x},out={marks}"]
        try:
            done = subprocess.run(
                cmd, cwd=work, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise RunError(f"QEMU ({machine}) did not finish within {timeout:g} s") from None
        console = (done.stdout + done.stderr).strip()
        if done.returncode != 0:
            return Run(done.returncode, None, None, None, [], console)
        outputs, arena, stack = _parse(
            (work / "tinyops_out.bin").read_bytes(), len(x), output_bytes
        )
        counts = [int(v) for v in (work / "marks.txt").read_text().split()] if count else []
    per_invoke = [b - a for a, b in zip(counts[0::2], counts[1::2], strict=True)]
    return Run(0, outputs, arena, stack, per_invoke, console)
