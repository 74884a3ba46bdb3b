"""Preflight's flash and RAM from the firmware itself where that costs seconds, not minutes.

The untrained int8 graph goes into the device's test firmware exactly as deploy builds it:
TensorFlow Lite Micro from the library cache, linked, then run once under QEMU for the C++
arena (searched as deploy searches it) and the stack's deepest use. Sizes do not depend on the
weights, so these are the trained model's figures (`tinyops bench --only preflight` checks
that to 1 %). Only where every TensorFlow Lite Micro object the graph needs is already cached:
compiling the library takes minutes, so a cold cache keeps the labelled estimates and says how
to warm it (`tinyops firmware`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.config import Params

# How a device's sizes say the library was cold: such an answer is never cached, so the first
# preflight after `tinyops firmware` (or deploy) warmed the library measures the firmware.
COLD_LIBRARY = "no TensorFlow Lite Micro library cached"


@dataclass(frozen=True)
class Measured:
    flash_bytes: int
    ram_bytes: int
    sizes: str  # how they were measured, for the table and preflight.json


def task_of(params: Params, shape: tuple[int, ...], classes: list[str]) -> dict[str, Any]:
    """What the bundle's header says the outputs are (a threshold only matters to firmware)."""
    from pipeline.models.spec import architecture_for
    from pipeline.models.tasks import task_for

    arch = architecture_for(params, shape, len(classes), classes)
    return task_for(arch).describe(0.0)


def cold_reason(params: Params, device: str, ops: list[str]) -> str | None:
    """Why this device's sizes stay estimates (None: the firmware can be built in seconds)."""
    from pipeline.deploy import mcu
    from pipeline.firmware import library, source

    profile = params.devices[device]
    if profile.runtime != "tflm":
        return "a LiteRT device: no firmware"
    reason = mcu.unavailable(params, device)
    if reason:
        return reason
    cache = source.cache_root(params.tflm.cache_dir)
    try:
        src = source.resolve(params.tflm.source, cache)
    except source.SourceUnavailable as exc:
        return str(exc)
    core, kernels = profile.cpu or "", profile.kernels
    if not library.is_warm(src, cache, core, kernels, params.tflm.build_type, ops):
        return f"{COLD_LIBRARY} for {core} ({kernels}): `tinyops firmware`"
    return None


def measure(
    params: Params,
    device: str,
    model: bytes,
    arena: int,
    spec: tuple[tuple[int, ...], list[str]],
    ops: list[str],
) -> Measured:
    """Build, link and run the device's firmware once on a random input (`spec`: the input
    shape and the classes)."""
    from pipeline.deploy import bundle, mcu
    from pipeline.deploy.device import cpp_info
    from pipeline.firmware import check, source
    from pipeline.tflite import tflm

    profile, (shape, classes) = params.devices[device], spec
    cache = source.cache_root(params.tflm.cache_dir)
    src = source.resolve(params.tflm.source, cache)
    task = task_of(params, shape, classes)
    info = cpp_info(model, "int8", arena, (list(shape), classes), ops, task)
    rng = np.random.default_rng(params.train.seed)
    xq = rng.integers(-128, 128, size=(1, *shape), dtype=np.int8)
    expected = tflm.predict(model, xq, bundle.reserved_arena(arena))
    build = check.Build(
        profile.cpu or "", profile.kernels, params.tflm.build_type, src.commit,
        params.firmware.stack_bytes, params.firmware.timeout_seconds,
    )  # fmt: skip
    figures = mcu.measure(build, src, cache, device, model, info, xq, expected).figures
    assert figures is not None
    what = (
        f"{figures.core}, {figures.kernels}, {figures.build_type} build on QEMU {figures.machine}"
    )
    return Measured(figures.flash_bytes, figures.ram_bytes, f"measured: firmware ({what})")
