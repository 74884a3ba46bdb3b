"""The firmware check of a TFLite Micro candidate (pipeline/firmware/ does the building and
running): the bundle's sources are generated with Python's arena, the C++ build's smallest arena
is searched for under QEMU, the sources are generated again reserving that, and the final build
runs the test samples. The sources it measured are the ones the bundle ships."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config import Params
from pipeline.deploy.bundle import cpp_sources, reserved_arena
from pipeline.deploy.fit import Firmware
from pipeline.firmware import check, library, program, qemu, source, toolchain
from pipeline.firmware.cores import NO_TOOLCHAIN


def unavailable(params: Params, device: str) -> str | None:
    """Why this device gets no firmware check (it keeps the estimates), or None."""
    profile = params.devices[device]
    if not params.firmware.enabled:
        return "firmware.enabled is false"
    if profile.cpu is None:
        return f"devices.{device} names no cpu"
    if profile.cpu in NO_TOOLCHAIN:
        return NO_TOOLCHAIN[profile.cpu]
    gaps = toolchain.missing()
    return f"missing {', '.join(gaps)}" if gaps else None


def _write(folder: Path, sources: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in sources.items():
        (folder / name).write_text(text)
    return folder


def _say(device: str, text: str) -> None:
    print(f"firmware: {device}: {text}", file=sys.stderr, flush=True)


def skip_reason(params: Params, device: str) -> str | None:
    """Why this device gets no firmware check (said, and recorded; the estimates stand)."""
    reason = unavailable(params, device)
    if reason is None:
        try:
            source.resolve(params.tflm.source, source.cache_root(params.tflm.cache_dir))
        except source.SourceUnavailable as exc:
            reason = str(exc)
    if reason:
        _say(device, f"skipped, the estimates stand: {reason}")
    return reason


def prove(
    params: Params,
    device: str,
    model: bytes,
    info: dict[str, Any],
    x: np.ndarray,
    expected: np.ndarray,
) -> Firmware:
    """`info` is the bundle's C++ description with Python's arena; x the int8 test inputs and
    `expected` Python TFLite Micro's outputs for them. A build or run failure fails the check."""
    cache = source.cache_root(params.tflm.cache_dir)
    src = source.resolve(params.tflm.source, cache)
    profile = params.devices[device]
    assert profile.cpu is not None
    build = check.Build(
        profile.cpu,
        profile.kernels,
        params.tflm.build_type,
        src.commit,
        params.firmware.stack_bytes,
        params.firmware.timeout_seconds,
    )
    try:
        return measure(build, src, cache, device, model, info, x, expected)
    except (program.BuildError, qemu.RunError, RuntimeError, ValueError) as exc:
        _say(device, f"FAILED: {exc}")
        return Firmware(error=str(exc))


def measure(
    build: check.Build,
    src: source.TflmSource,
    cache: Path,
    device: str,
    model: bytes,
    info: dict[str, Any],
    x: np.ndarray,
    expected: np.ndarray,
) -> Firmware:
    lib = library.build(src, cache, build.core, build.kernels, build.build_type, info["ops"])
    sha = info["model_sha256"]
    out_bytes = int(np.prod(expected.shape[1:]))
    with tempfile.TemporaryDirectory(prefix="tinyops-firmware-") as tmp:
        work = Path(tmp)
        first = _write(work / "python-arena", cpp_sources(model, info, device, sha))
        capacity = reserved_arena(int(info["arena_measured"]))
        arena = check.search_arena(
            first, lib, build, x[:1], out_bytes, capacity, work / "search", cache
        )
        where = f"in the C++ build for {build.core} ({build.kernels})"
        final_info = info | {
            "arena_measured": arena,
            "arena_bytes": reserved_arena(arena),
            "arena_source": where,
        }
        sources = cpp_sources(model, final_info, device, sha)
        final = _write(work / "bundle", sources)
        figures = check.verify(final, lib, build, x, expected, arena, work / "final", cache)
    example = {name: program.harness_text(name) for name in ("main.cc", "tinyops_platform.h")}
    state = "byte-identical" if figures.identical else "DIFFERENT"
    _say(
        device,
        f"{build.core} ({build.kernels}) on QEMU {figures.machine}: {figures.samples} samples "
        f"{state}; flash {figures.flash_bytes:,} B, RAM {figures.ram_bytes:,} B, arena "
        f"{arena:,} B (Python {info['arena_measured']:,}), "
        f"{figures.instructions_per_inference:,} instructions/inference",
    )
    return Firmware(figures=figures, sources=sources | example)


WARM_OPS = (
    "ADD",
    "AVERAGE_POOL_2D",
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "DEQUANTIZE",
    "FULLY_CONNECTED",
    "MAX_POOL_2D",
    "MEAN",
    "QUANTIZE",
    "RESHAPE",
    "SOFTMAX",
    # the sequence families (conv1d, tcn, unrolled gru/lstm, transformer)
    "BATCH_MATMUL",
    "LOGISTIC",
    "MUL",
    "PAD",
    "RSQRT",
    "SLICE",
    "SUB",
    "TANH",
    "TRANSPOSE",
)
"""What `tinyops firmware` compiles by default: the ops of small int8 CNNs and of the sequence
families."""


def warm(params: Params, ops: tuple[str, ...] = WARM_OPS) -> list[str]:
    """Compile TensorFlow Lite Micro for every firmware-checked device's (core, kernels), so that
    deploy only links and runs; a line per device says what happened."""
    lines = []
    cache = source.cache_root(params.tflm.cache_dir)
    for device, profile in sorted(params.devices.items()):
        if profile.runtime != "tflm":
            continue
        reason = skip_reason(params, device)
        if reason or profile.cpu is None:
            lines.append(f"{device}: skipped: {reason}")
            continue
        src = source.resolve(params.tflm.source, cache)
        lib = library.build(src, cache, profile.cpu, profile.kernels, params.tflm.build_type, ops)
        lines.append(
            f"{device}: {profile.cpu} ({profile.kernels}): {lib.compiled} files compiled, {lib.path}"
        )
    return lines
