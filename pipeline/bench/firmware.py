"""The firmware check side by side: the workspace's int8 model built with TensorFlow Lite Micro
for each Cortex-M core with reference and CMSIS-NN kernels, run under QEMU. Flash, RAM and
instruction counts are deterministic, so one build each is the measurement (no rounds)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import catalog
from pipeline.core.catalog import Variants
from pipeline.core.config import load_params
from pipeline.data.prepare import load_meta, load_processed
from pipeline.deploy import bundle, device, mcu
from pipeline.firmware import check, library, program, source, toolchain
from pipeline.tflite import tflm
from pipeline.tflite.litert import quantize_input

CORES = ("cortex-m0plus", "cortex-m4+fp", "cortex-m7+fp")
KERNELS = ("reference", "cmsis_nn")
SAMPLES = 50


def _inputs(variants: Variants) -> tuple[bytes, dict[str, Any], np.ndarray, np.ndarray]:
    int8 = variants.int8
    model = catalog.variant_file("int8", catalog.EXPORT_DIR).read_bytes()
    x = load_processed().x["test"][:SAMPLES]
    xq = quantize_input(x, int8.input_scale or 1.0, int8.input_zero_point or 0)
    arena = int8.tflm_arena_bytes or 0
    expected = tflm.predict(model, xq, bundle.reserved_arena(arena))
    meta = load_meta()
    info = device.cpp_info(
        model,
        "int8",
        arena,
        (meta.input_shape, meta.classes),
        list(int8.ops or []),
        getattr(int8, "task", None),
    )
    return model, info, xq, expected


def _generic_flash(
    build: check.Build, src: source.TflmSource, cache: Path, model: bytes, info: dict[str, Any]
) -> int:
    """Flash with the general kernels (AddConv2D()) instead of the int8-only ones."""
    lib = library.build(src, cache, build.core, build.kernels, build.build_type, info["ops"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bundle"
        folder.mkdir()
        generic = info | {"int8_kernels": False}
        for name, text in bundle.cpp_sources(model, generic, "bench", info["model_sha256"]).items():
            (folder / name).write_text(text)
        return program.build(
            folder, lib, build.core, Path(tmp) / "work", cache, build.stack_bytes
        ).flash_bytes


def firmware(on_progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Per core and kernels: flash, RAM, arena and instructions; CMSIS-NN's general-kernel flash.
    Without the toolchain or the TFLite Micro source: {"skipped": why} (targets NOT MEASURED)."""
    params = load_params()
    cache = source.cache_root(params.tflm.cache_dir)
    gaps = toolchain.missing()
    try:
        if gaps:
            raise source.SourceUnavailable(f"missing {', '.join(gaps)}")
        src = source.resolve(params.tflm.source, cache)
    except source.SourceUnavailable as exc:
        on_progress(f"firmware: skipped: {exc}")
        return {"skipped": str(exc)}
    variants = catalog.read(catalog.VARIANTS_FILE, Variants, "evaluate")
    model, info, xq, expected = _inputs(variants)
    rows: dict[str, Any] = {}
    for core in CORES:
        for kernels in KERNELS:
            on_progress(f"firmware: {core} with {kernels} kernels")
            build = check.Build(core, kernels, params.tflm.build_type, src.commit, 4096, 300.0)
            result = mcu.measure(build, src, cache, "bench", model, info, xq, expected)
            if result.figures is None:
                raise RuntimeError(f"firmware bench: {core} {kernels}: {result.error}")
            rows[f"{core} {kernels}"] = result.figures.to_dict()
    cmsis = check.Build("cortex-m4+fp", "cmsis_nn", params.tflm.build_type, src.commit, 4096, 300.0)
    return {
        "samples": SAMPLES,
        "python_arena_bytes": variants.int8.tflm_arena_bytes,
        "builds": rows,
        "cortex-m4+fp cmsis_nn general kernels flash_bytes": _generic_flash(
            cmsis, src, cache, model, info
        ),
    }


def firmware_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Byte-identical everywhere and a C++ arena within Python's (bars); CMSIS-NN ÷ reference
    instructions per core (reported: the issue asks for the ratio, not a bar)."""
    fw = r.get("firmware")
    if not fw:
        return []
    if "skipped" in fw:
        return [{"target": "firmware: every core × kernels byte-identical to Python's TFLite Micro",
                 "value": None, "status": "NOT MEASURED"}]  # fmt: skip
    builds = fw["builds"].values()
    same = all(b["identical"] for b in builds)
    worst = max(b["arena_min_bytes"] for b in builds) / fw["python_arena_bytes"]
    out = [
        {"target": "firmware: every core × kernels byte-identical to Python's TFLite Micro",
         "value": float(same), "status": "PASS" if same else "FAIL"},
        {"target": "firmware: C++ arena ÷ Python arena ≤ 1 (worst build)",
         "value": worst, "status": "PASS" if worst <= 1 else "FAIL"},
    ]  # fmt: skip
    for core in CORES:
        ratio = (fw["builds"][f"{core} cmsis_nn"]["instructions_per_inference"]
                 / fw["builds"][f"{core} reference"]["instructions_per_inference"])  # fmt: skip
        out.append({"target": f"firmware: {core} CMSIS-NN ÷ reference instructions (reported)",
                    "value": ratio, "status": "REPORTED"})  # fmt: skip
    return out


def firmware_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    fw = r.get("firmware")
    if not fw or "skipped" in fw:
        return []
    rows = []
    for name, b in fw["builds"].items():
        ref = fw["builds"][f"{b['core']} reference"]
        arena = b["arena_min_bytes"]
        rows.append((
            f"firmware {name}: flash / RAM (B)", f"{b['flash_bytes']:,} / {b['ram_bytes']:,}", "",
            f"arena {arena:,} B = {arena / fw['python_arena_bytes']:.2f}× Python's",
        ))  # fmt: skip
        rows.append((
            f"firmware {name}: instructions per inference", f"{b['instructions_per_inference']:,}", "",
            f"{b['instructions_per_inference'] / ref['instructions_per_inference']:.2f}× reference",
        ))  # fmt: skip
    generic = fw["cortex-m4+fp cmsis_nn general kernels flash_bytes"]
    int8 = fw["builds"]["cortex-m4+fp cmsis_nn"]["flash_bytes"]
    rows.append(("firmware cortex-m4+fp cmsis_nn: flash, general kernels (B)", f"{generic:,}", "",
                 f"int8-only kernels save {generic - int8:,} B"))  # fmt: skip
    return rows
