"""Section `latency`: LiteRT invoke time per variant (1 thread, batch 1) and TFLite Micro's int8
invoke, on this host."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.bench.harness import Progress, Targets, checker, interleave, summary

ABOUT = "LiteRT and TFLite Micro invoke time per variant on the host"
MINUTES = 1


def latency(rounds: int, on_progress: Progress) -> dict[str, Any]:
    """LiteRT invoke time per variant, 1 thread, batch 1, and TFLite Micro's int8 invoke on this
    host; interleaved per round."""
    from pipeline.core import catalog
    from pipeline.tflite.litert import measure_host_latency_ms
    from pipeline.tflite.tflm import measure_invoke_ms

    models = {
        v: catalog.variant_file(v).read_bytes() for v in ("fp32", "float16", "dynamic_int8", "int8")
    }
    arena = catalog.read(
        catalog.EVALUATE_METRICS, catalog.EvaluateMetrics, "evaluate"
    ).tflm_arena_bytes
    configs: dict[str, Callable[[], float]] = {
        v: (lambda b=b: measure_host_latency_ms(b, 500)) for v, b in models.items()
    }
    configs["tflm int8"] = lambda: measure_invoke_ms(models["int8"], arena, 200)
    samples = interleave(configs, rounds, on_progress)
    return {v: summary(t) for v, t in samples.items()}


def run(rounds: int, progress: Progress) -> dict[str, Any]:
    return {"latency_ms": latency(rounds, progress)}


def targets(r: dict[str, Any]) -> Targets:
    out: list[dict[str, Any]] = []
    lat = r["latency_ms"]["int8"]["median"] / r["latency_ms"]["fp32"]["median"]
    checker(out)("LiteRT int8 ≤ 1.33 × fp32 latency", lat, lat <= 1.33)
    return out
