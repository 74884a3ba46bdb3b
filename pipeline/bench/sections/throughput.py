"""Section `throughput`: training's own step on synthetic tensors, samples/s per configuration
(1 process × 1 thread, 1 × all cores, DDP 2 × 1), for the default CNN and a ResNet-8-sized one."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from pipeline.bench.harness import Progress, Targets, checker, interleave, run_json, summary
from pipeline.core.preflight import cores

ABOUT = "training samples/s: 1×1, 1×2 threads, DDP 2×1 (default CNN, ResNet-8-sized)"
MINUTES = 6


def _worker(model: str, threads: int, allreduce: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline.bench.throughput",
        "--model",
        model,
        "--threads",
        str(threads),
        "--allreduce",
        allreduce,
    ]


TARGET_DDP = "DDP 2 × 1 thread, 64 per worker"


GLOO_DDP = "DDP 2 × 1 thread, gloo TCP all-reduce, 64 per worker"


SPLIT_DDP = "DDP 2 × 1 thread, 64 split 32 + 32"


def _plans(model: str, n: int) -> dict[str, tuple[int, int, int, str]]:
    """(threads, processes, global batch, train.allreduce) per configuration.

    Every config steps 64 samples per worker, as DDP throughput is usually compared. The target
    row is DDP as training runs it (shared-memory all-reduce on one host); the gloo row is the
    same over gloo's TCP; the split row is the pipeline's own global batch of 64 cut in two,
    where fixed per-step costs weigh double (the last two are reported, not targets, and run for
    the default model only, to keep the bench under 20 minutes on 2 cores).
    """
    plans = {"1 proc × 1 thread": (1, 1, 64, "auto"), f"1 proc × {n} threads": (n, 1, 64, "auto")}
    if n >= 2:
        plans[TARGET_DDP] = (1, 2, 128, "auto")
        if model == "default":  # the comparisons, on the model where they matter most
            plans[GLOO_DDP] = (1, 2, 128, "backend")
            plans[SPLIT_DDP] = (1, 2, 64, "auto")
    return plans


def throughput(
    model: str, rounds: int, on_progress: Progress
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Samples/s per configuration, interleaved, and the all-reduce times the DDP rows saw."""
    n = cores()
    configs: dict[str, Callable[[], float]] = {}
    allreduce: dict[str, list[float]] = {}
    for name, (threads, procs, batch, how) in _plans(model, n).items():
        assert threads * procs <= n, "never more threads × processes than cores"

        def run(
            threads: int = threads, procs: int = procs, batch: int = batch, how: str = how
        ) -> float:
            cmd = [*_worker(model, threads, how), "--batch", str(batch)]
            got = run_json(cmd, threads, procs)
            for way, ms in (got["allreduce_ms"] or {}).items():
                allreduce.setdefault(way, []).append(ms)
            return float(got["samples_per_s"])

        configs[name] = run
    samples = interleave(configs, rounds, lambda s: on_progress(f"{model}: {s}"))
    return (
        {k: summary(v) for k, v in samples.items()},
        {k: summary(v) for k, v in allreduce.items()},
    )


def run(rounds: int, progress: Progress) -> dict[str, Any]:
    out: dict[str, Any] = {"throughput": {}, "allreduce_ms": {}}
    for model in ("default", "resnet8"):
        out["throughput"][model], allreduce = throughput(model, rounds, progress)
        if allreduce:
            out["allreduce_ms"][model] = allreduce
    return out


def targets(r: dict[str, Any]) -> Targets:
    out: list[dict[str, Any]] = []
    check, n = checker(out), r["machine"]["cores"]
    for model, t in r.get("throughput", {}).items():
        ddp = t.get(TARGET_DDP, {}).get("median")
        if ddp is None:
            continue
        one = t["1 proc × 1 thread"]["median"]
        multi = t[f"1 proc × {n} threads"]["median"]
        check(f"{model}: DDP 2×1 ÷ 1×1 ≥ 1.3", ddp / one, ddp / one >= 1.3)
        check(f"{model}: DDP 2×1 ÷ 1×{n} ≥ 0.85", ddp / multi, ddp / multi >= 0.85)
    return out
