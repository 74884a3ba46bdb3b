"""TensorFlow Lite Micro cross-compiled into a static library, cached outside any bundle and keyed
by (core, kernels, TFLite Micro commit, build type, compiler). Objects are compiled the first
time a model needs them (the framework, then each op's kernel) and kept: a rerun compiles
nothing, and a model with a new op compiles only that kernel. Flags follow TFLite Micro's own
Makefile for TARGET=cortex_m_generic."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pipeline.core import atomic
from pipeline.firmware.cores import CORES
from pipeline.firmware.source import TflmSource
from pipeline.firmware.toolchain import compiler_version

LIBRARY_FILE = "libtensorflow-microlite.a"
_KERNELS = "tensorflow/lite/micro/kernels"
_NOT_LIBRARY = re.compile(r"test_helper|mock_micro|fake_micro|recording_|micro/kernels/|_test\.cc$")
_ALWAYS = ("kernel_util.cc", "micro_tensor_utils.cc")
_CMSIS_SOURCE = "third_party/cmsis_nn/Source"
_DEFINITION = re.compile(r"^[A-Za-z_][\w \t*]*?\b(arm_\w+)\s*\([^;{]*\)\s*\{", re.M)
# Ops whose Register_ function is not defined in a file named after the op.
_REGISTER = re.compile(r"TFLMRegistration\s+Register_([A-Z0-9_]+)\(\)\s*\{")


@dataclass(frozen=True)
class Library:
    path: Path
    tree: Path
    flags: tuple[str, ...]
    """Compiler flags every object of a program linking the library must share."""
    compiled: int
    """Objects compiled by this call (0: all came from the cache)."""
    header: Path | None = None
    """A precompiled header of TFLite Micro's interpreter and resolver, for programs built with
    `flags`: GCC uses its .gch (about 4 s less per compile) or, if it does not match, the text."""


def cpu_flags(core: str) -> list[str]:
    return [*CORES[core].flags, "-mthumb"]


def common_flags(core: str, kernels: str, build_type: str) -> list[str]:
    flags = [
        *cpu_flags(core),
        "-mlittle-endian",
        "-funsigned-char",
        "-fomit-frame-pointer",
        "-fno-unwind-tables",
        "-fno-asynchronous-unwind-tables",
        "-ffunction-sections",
        "-fdata-sections",
        "-fmessage-length=0",
        "-DTF_LITE_STATIC_MEMORY",
        "-DTF_LITE_DISABLE_X86_NEON",
        "-DTF_LITE_MCU_DEBUG_LOG",
        "-DKERNELS_OPTIMIZED_FOR_SPEED",
        "-DPROJECT_GENERATION",
        "-DARM_NN_ENABLE_F16=0",
        "-DARM_NN_ENABLE_F32=0",
    ]
    if kernels == "cmsis_nn":
        flags.append("-DCMSIS_NN")
    if build_type == "release":
        flags += ["-DNDEBUG", "-DTF_LITE_STRIP_ERROR_STRINGS"]
    return flags


def include_flags(tree: Path) -> list[str]:
    third = tree / "third_party"
    dirs = [
        tree,
        third / "flatbuffers/include",
        third / "gemmlowp",
        third / "ruy",
        third / "cmsis",
        third / "cmsis/CMSIS/Core/Include",
        third / "cmsis_nn",
        third / "cmsis_nn/Include",
    ]
    return [f"-I{d}" for d in dirs]


CXX_FLAGS = ("-std=c++17", "-fno-rtti", "-fno-exceptions", "-fno-threadsafe-statics")


def compile_command(src: Path, obj: Path, flags: list[str], optimize: str) -> list[str]:
    if src.suffix == ".c":
        return ["arm-none-eabi-gcc", *flags, "-std=c17", optimize, "-c", str(src), "-o", str(obj)]
    return ["arm-none-eabi-g++", *flags, *CXX_FLAGS, optimize, "-c", str(src), "-o", str(obj)]


def _framework_sources(tree: Path) -> list[str]:
    found = [str(p.relative_to(tree)) for p in (tree / "tensorflow").rglob("*.cc")]
    sources = sorted(s for s in found if not _NOT_LIBRARY.search(s))
    return sources + [f"{_KERNELS}/{name}" for name in _ALWAYS]


def cmsis_definitions(tree: Path) -> dict[str, str]:
    """CMSIS-NN function name → the .c file defining it (int8/int16/int4 sources only)."""
    where: dict[str, str] = {}
    for path in sorted((tree / _CMSIS_SOURCE).rglob("*.c")):
        if not re.search(r"_f16\.c$|_f32\.c$|_flt\.c$", path.name):
            for name in _DEFINITION.findall(path.read_text(errors="replace")):
                where.setdefault(name, str(path.relative_to(tree)))
    return where


def undefined_symbols(objects: Iterable[Path]) -> set[str]:
    """What these objects call but do not define, read from the objects themselves (so calls
    made by CMSIS-NN's inline header functions count too)."""
    listing = subprocess.run(
        ["arm-none-eabi-nm", "-u", *map(str, objects)], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[-1] for line in listing.splitlines() if line.strip().startswith("U ")}


def _registrations(tree: Path, kernels: str) -> dict[str, str]:
    """Op name → the kernel source defining Register_<op>() (CMSIS-NN's file where it has one)."""
    where: dict[str, str] = {}
    dirs = [tree / _KERNELS] + ([tree / _KERNELS / "cmsis_nn"] if kernels == "cmsis_nn" else [])
    for folder in dirs:  # CMSIS-NN last: its files replace the reference ones
        for path in sorted(folder.glob("*.cc")):
            for op in _REGISTER.findall(path.read_text(errors="replace")):
                where[op.removesuffix("_INT8").removesuffix("_INT16")] = str(path.relative_to(tree))
    return where


def kernel_sources(tree: Path, kernels: str, ops: Iterable[str]) -> list[str]:
    """Each op's kernel file and its `<stem>_common.cc` helpers."""
    where = _registrations(tree, kernels)
    unknown = sorted(op for op in ops if op not in where)
    if unknown:
        raise ValueError(f"TFLite Micro at {tree} has no kernel for {', '.join(unknown)}")
    sources = set()
    for op in ops:
        src = where[op]
        sources.add(src)
        stem = Path(src).stem
        sources |= {str(p.relative_to(tree)) for p in (tree / _KERNELS).glob(f"{stem}*_common.cc")}
    return sorted(sources)


def shadowed(tree: Path, kernels: str) -> set[str]:
    """Reference kernels replaced by a CMSIS-NN file of the same name (never both in one library)."""
    if kernels != "cmsis_nn":
        return set()
    return {f"{_KERNELS}/{p.name}" for p in (tree / _KERNELS / "cmsis_nn").glob("*.cc")}


def library_dir(cache: Path, source: TflmSource, core: str, kernels: str, build_type: str) -> Path:
    flags = " ".join(common_flags(core, kernels, build_type))
    digest = hashlib.sha256(f"{compiler_version()}\n{flags}".encode()).hexdigest()[:10]
    return cache / "tflm-lib" / f"{core}-{kernels}-{build_type}-{source.commit[:12]}-{digest}"


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """One builder per library at a time (two deploys may share the cache)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _compile_one(tree: Path, rel: str, obj: Path, flags: list[str]) -> None:
    optimize = "-O2" if rel.startswith((_KERNELS, "third_party")) else "-Os"
    obj.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(obj) as tmp:
        cmd = compile_command(tree / rel, tmp, flags, optimize)
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {rel} failed:\n{done.stderr[-2000:]}")


def jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def is_warm(
    source: TflmSource, cache: Path, core: str, kernels: str, build_type: str, ops: Iterable[str]
) -> bool:
    """Whether `build` would only link: the library and every framework and kernel object the
    ops need are cached (CMSIS-NN's helpers follow from those, a few files at most)."""
    folder = library_dir(cache, source, core, kernels, build_type)
    tree = source.tree
    try:
        wanted = set(_framework_sources(tree) + kernel_sources(tree, kernels, ops))
    except ValueError:  # an op with no kernel: nothing to link
        return False
    wanted -= shadowed(tree, kernels)
    return (folder / LIBRARY_FILE).is_file() and all(_object(folder, s).is_file() for s in wanted)


def build(
    source: TflmSource, cache: Path, core: str, kernels: str, build_type: str, ops: Iterable[str]
) -> Library:
    """The library with the framework, the kernels of `ops` and, for CMSIS-NN, only the CMSIS-NN
    functions those kernels call (followed call by call), compiling only what is missing."""
    folder = library_dir(cache, source, core, kernels, build_type)
    tree = source.tree
    flags = common_flags(core, kernels, build_type) + include_flags(tree)
    wanted = sorted(set(_framework_sources(tree) + kernel_sources(tree, kernels, ops)))
    wanted = [s for s in wanted if s not in shadowed(tree, kernels)]
    with locked(folder):
        compiled = _compile(tree, folder, flags, wanted, f"{core} ({kernels}, {build_type})")
        if kernels == "cmsis_nn":
            compiled += _cmsis_closure(tree, folder, flags, wanted, core)
        library = folder / LIBRARY_FILE
        if compiled or not library.is_file():
            objects = sorted(str(p) for p in (folder / "obj").rglob("*.o"))
            with atomic.atomic_path(library) as tmp:
                tmp.unlink()
                subprocess.run(["arm-none-eabi-ar", "rcs", str(tmp), *objects], check=True)
        header = _precompiled_header(folder, flags)
    return Library(library, tree, tuple(flags), compiled, header)


def _object(folder: Path, source: str) -> Path:
    return folder / "obj" / f"{source}.o"


def _compile(tree: Path, folder: Path, flags: list[str], sources: list[str], what: str) -> int:
    """Compile the sources whose objects are not cached yet; how many were compiled."""
    todo = [s for s in sources if not _object(folder, s).is_file()]
    if todo:
        print(
            f"firmware: compiling {len(todo)} TensorFlow Lite Micro files for {what} into {folder}",
            file=sys.stderr,
            flush=True,
        )
        with ThreadPoolExecutor(jobs()) as pool:
            list(pool.map(lambda s: _compile_one(tree, s, _object(folder, s), flags), todo))
    return len(todo)


def _cmsis_closure(
    tree: Path, folder: Path, flags: list[str], sources: list[str], core: str
) -> int:
    """Compile the CMSIS-NN files the kernels call, then those they call, until nothing new:
    about a fifth of CMSIS-NN's 113 files for a small CNN, instead of all of them."""
    where = cmsis_definitions(tree)
    done: set[str] = set()
    frontier = [_object(folder, s) for s in sources]
    compiled = 0
    while frontier:
        needed = sorted({where[s] for s in undefined_symbols(frontier) if s in where} - done)
        compiled += _compile(tree, folder, flags, needed, f"{core} (CMSIS-NN functions)")
        done |= set(needed)
        frontier = [_object(folder, s) for s in needed]
    return compiled


PCH_INCLUDES = (
    "tensorflow/lite/micro/micro_mutable_op_resolver.h",
    "tensorflow/lite/micro/micro_interpreter.h",
    "tensorflow/lite/schema/schema_generated.h",
)


def _precompiled_header(folder: Path, flags: list[str]) -> Path:
    """The headers every bundle and harness file includes, precompiled once per library."""
    header = folder / "pch" / "tinyops_pch.h"
    gch = header.with_name(header.name + ".gch")
    if not gch.is_file():
        header.parent.mkdir(parents=True, exist_ok=True)
        header.write_text("".join(f'#include "{h}"\n' for h in PCH_INCLUDES))
        with atomic.atomic_path(gch) as tmp:
            cmd = ["arm-none-eabi-g++", *flags, *CXX_FLAGS, "-Os", "-x", "c++-header", str(header)]
            subprocess.run([*cmd, "-o", str(tmp)], check=True, capture_output=True)
    return header
