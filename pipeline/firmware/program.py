"""The test firmware: the bundle's own tinyops_model.cc/.h, unchanged, linked with the harness
(main.cc), a minimal startup and semihosting, and the cached TFLite Micro library, into an ELF
laid out for the core's QEMU machine. Compiled objects are cached by content, so an unchanged
bundle is not recompiled (its 100 KB model array is most of the compile time)."""

from __future__ import annotations

import hashlib
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pipeline.core import atomic
from pipeline.firmware.cores import CORES, Machine
from pipeline.firmware.library import Library, compile_command, cpu_flags, jobs

HARNESS_FILES = ("main.cc", "startup.c", "semihost.c", "tinyops_platform.h")
HEAP_BYTES = 0  # TFLite Micro allocates only from the arena


class BuildError(Exception):
    """The firmware did not compile or link (or overflowed the QEMU machine's memory)."""


@dataclass(frozen=True)
class Program:
    elf: Path
    machine: str
    """The QEMU machine it is laid out for (and runs on)."""
    sections: dict[str, int]
    """Allocated section sizes from arm-none-eabi-size -A."""

    @property
    def flash_bytes(self) -> int:
        """What the chip stores: code, constants (the model), exception index, .data's image."""
        return sum(self.sections.get(s, 0) for s in (".text", ".ARM.exidx", ".data"))

    @property
    def static_ram_bytes(self) -> int:
        """.data + .bss: globals, the interpreter's statics and the tensor arena."""
        return self.sections.get(".data", 0) + self.sections.get(".bss", 0)


def harness_text(name: str) -> str:
    return resources.files("pipeline.firmware").joinpath("c", name).read_text()


def linker_script(machine: Machine, stack_bytes: int) -> str:
    c = machine
    values = {
        "MACHINE": c.name,
        "FLASH_ORIGIN": hex(c.flash[0]),
        "FLASH_BYTES": str(c.flash[1]),
        "RAM_ORIGIN": hex(c.ram[0]),
        "RAM_BYTES": str(c.ram[1]),
        "HEAP_BYTES": str(HEAP_BYTES),
        "STACK_BYTES": str(stack_bytes),
    }
    text = harness_text("link.ld.in")
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


def _compile_cached(
    src: Path,
    flags: list[str],
    local: list[str],
    headers: list[Path],
    cache: Path,
    pch: Path | None = None,
) -> Path:
    """Compile `src` unless an object of the same source, local headers and flags exists (the
    key leaves out the `local` include folders, which are temporary, but hashes their headers)."""
    digest = hashlib.sha256("\0".join(flags).encode())
    for path in (src, *headers):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    obj = cache / "objects" / f"{src.name}-{digest.hexdigest()[:20]}.o"
    if not obj.is_file():
        obj.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(obj) as tmp:
            cmd = compile_command(src, tmp, [*flags, *local], "-Os")
            if pch is not None and src.suffix == ".cc":
                cmd[1:1] = ["-include", str(pch)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise BuildError(f"compiling {src.name} failed:\n{done.stderr[-3000:]}")
    return obj


def _sections(elf: Path) -> dict[str, int]:
    out = subprocess.run(
        ["arm-none-eabi-size", "-A", str(elf)], capture_output=True, text=True, check=True
    )
    sizes = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return {k: v for k, v in sizes.items() if not k.startswith((".debug", ".comment", ".ARM.attr"))}


def _link(
    core: str,
    machine: Machine,
    objects: list[Path],
    library: Library,
    workdir: Path,
    stack_bytes: int,
) -> str | None:
    """Link for `machine`; the linker's errors, or None."""
    (workdir / "link.ld").write_text(linker_script(machine, stack_bytes))
    link = [
        "arm-none-eabi-g++", *cpu_flags(core), "-nostartfiles", "--specs=nano.specs",
        "--specs=nosys.specs", "-Wl,--gc-sections", f"-Wl,-Map={workdir / 'firmware.map'}",
        "-T", str(workdir / "link.ld"), *map(str, objects), str(library.path), "-lm",
        "-o", str(workdir / "firmware.elf"),
    ]  # fmt: skip
    done = subprocess.run(link, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return None
    return "\n".join(ln for ln in done.stderr.splitlines() if "will always fail" not in ln)


def build(
    bundle: Path,
    library: Library,
    core: str,
    workdir: Path,
    cache: Path,
    stack_bytes: int,
    defines: tuple[str, ...] = (),
) -> Program:
    """Compile the bundle and the harness for `core`, and link them with `library` for the first
    of the core's QEMU machines whose memory holds the program."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in HARNESS_FILES:
        (workdir / name).write_text(harness_text(name))
    flags, local = [*library.flags, *defines], [f"-I{bundle}", f"-I{workdir}"]
    headers = [*sorted(bundle.glob("*.h")), workdir / "tinyops_platform.h"]
    names = ("main.cc", "startup.c", "semihost.c")
    sources = [bundle / "tinyops_model.cc", *(workdir / n for n in names)]
    with ThreadPoolExecutor(jobs()) as pool:  # the model's array is most of the time
        objects = list(
            pool.map(
                lambda s: _compile_cached(s, flags, local, headers, cache, library.header), sources
            )
        )
    errors = ""
    for machine in CORES[core].machines:
        failed = _link(core, machine, objects, library, workdir, stack_bytes)
        if failed is None:
            elf = workdir / "firmware.elf"
            return Program(elf, machine.name, _sections(elf))
        errors = failed
        if "overflowed" not in failed and "will not fit" not in failed:
            break
    lines = errors.splitlines()[-30:]
    raise BuildError("linking the firmware failed:\n" + "\n".join(lines))
