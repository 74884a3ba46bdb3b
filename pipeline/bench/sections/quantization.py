"""Section `quantization`: accuracy per level, int8/fp32 agreement, sizes and arenas of the
workspace's last run, and the ResNet-8-sized model through the export stage's function."""

from __future__ import annotations

import sys
from typing import Any

from pipeline.bench.harness import Progress, Targets, checker, run_json

ABOUT = "accuracy per level, sizes, arenas of the last run; ResNet-8-sized export"
MINUTES = 1


def quantization() -> dict[str, Any]:
    """Accuracy per level, int8/fp32 agreement, sizes and arenas of the workspace's last run."""
    import numpy as np

    from pipeline.core import catalog
    from pipeline.data.prepare import load_processed
    from pipeline.tflite.litert import run_batch

    m = catalog.read(catalog.EVALUATE_METRICS, catalog.EvaluateMetrics, "evaluate").model_dump()
    variants = catalog.read(catalog.VARIANTS_FILE, catalog.Variants, "evaluate")
    x = load_processed().x["test"]
    fp32, _ = run_batch(catalog.variant_file("fp32").read_bytes(), x)
    int8, _ = run_batch(catalog.variant_file("int8").read_bytes(), x)
    agreement = float(np.mean(fp32.argmax(1) == int8.argmax(1)))
    bundles, mcu_ms = {}, {}
    for f in sorted(catalog.DEPLOY_STATUS_DIR.glob("*.json")):
        d = catalog.read(f, catalog.DeployStatus, "deploy")
        if d.arena_bytes:
            bundles[d.device] = d.arena_bytes / m["tflm_arena_bytes"]
        if d.runtime == "tflm" and d.latency_ms is not None:
            mcu_ms[d.device] = d.latency_ms
    return {
        "accuracy": {
            k: m[k]
            for k in (
                "framework_fp32_accuracy",
                "tflite_fp32_accuracy",
                "tflite_int8_accuracy",
                "tflm_int8_accuracy",
            )
        },
        "int8_fp32_agreement": agreement,
        "max_logit_diff": m["framework_tflite_fp32_max_logit_diff"],
        "bytes": {v: d.bytes for v, d in variants.items()},
        "arena_bytes": {"int8": m["tflm_arena_bytes"], "fp32": m["tflm_fp32_arena_bytes"]},
        "bundled_arena_over_need": bundles,
        "mcu_estimated_latency_ms": mcu_ms,
    }


def run(rounds: int, progress: Progress) -> dict[str, Any]:
    progress("resnet8: exporting fp32 and int8, measuring TFLite Micro arenas")
    heavy = run_json([sys.executable, "-m", "pipeline.bench.heavy_export"], 1)
    return {"quantization": quantization(), "resnet8_export": heavy}


def targets(r: dict[str, Any]) -> Targets:
    out: list[dict[str, Any]] = []
    check = checker(out)
    q = r["quantization"]
    acc = q["accuracy"]
    drop = max(
        acc["framework_fp32_accuracy"] - acc["tflite_int8_accuracy"],
        acc["framework_fp32_accuracy"] - acc["tflm_int8_accuracy"],
        acc["tflite_fp32_accuracy"] - acc["tflite_int8_accuracy"],
    )
    check("int8 within 1.0 point of fp32 at every level (points)", 100 * drop, drop <= 0.01)
    agree = q["int8_fp32_agreement"]
    check("int8/fp32 prediction agreement ≥ 98%", agree, agree >= 0.98)
    diff = q["max_logit_diff"]
    check("torch vs tflite fp32 max logit diff ≤ 1e-4", diff, diff <= 1e-4)
    heavy = r.get("resnet8_export", {})
    size = heavy["bytes"]["fp32"] / heavy["bytes"]["int8"] if heavy else None
    check("resnet8: fp32 ÷ int8 .tflite ≥ 3.0", size, size is not None and size >= 3.0)
    arena = heavy["arena_bytes"]["fp32"] / heavy["arena_bytes"]["int8"] if heavy else None
    check("resnet8: fp32 ÷ int8 arena ≥ 3.0", arena, arena is not None and arena >= 3.0)
    worst = max(q["bundled_arena_over_need"].values(), default=None)
    check("bundled arena ≤ 1.25 × need", worst, worst is not None and worst <= 1.25)
    return out
