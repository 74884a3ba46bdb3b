"""Section `paradigms`: data, pipeline (GPipe, 1F1B), FSDP and hybrid parallelism trained through
the strategies themselves, side by side, on the default CNN and a deeper one."""

from __future__ import annotations

import functools
import statistics
import sys
from collections.abc import Callable
from typing import Any

from pipeline.bench.harness import (
    Progress,
    Targets,
    interleave,
    run_json,
    samples_per_s,
    summary,
)
from pipeline.core.preflight import cores

ABOUT = "data, pipeline (GPipe, 1F1B), FSDP and hybrid parallelism side by side"
MINUTES = 13

PARADIGM_BATCH = 128


OVERSUBSCRIBED = "(4 procs: oversubscribed)"


PARADIGMS: dict[str, tuple[int, str, str, int]] = {
    "1 × 1": (1, "data", "1f1b", 1),
    "data 2 × 1": (2, "data", "1f1b", 1),
    **{
        f"pipeline 2 stages {s} m{m}": (2, "pipeline", s, m)
        for s in ("gpipe", "1f1b")
        for m in (2, 4, 8)
    },
    "fsdp 2 × 1": (2, "fsdp", "1f1b", 1),
    f"hybrid dp2 × pp2 1f1b m2 {OVERSUBSCRIBED}": (4, "hybrid", "1f1b", 2),
}


def _paradigm_cmd(model: str, parallelism: str, schedule: str, m: int) -> list[str]:
    return [
        sys.executable, "-m", "pipeline.bench.paradigms", "--model", model,
        "--parallelism", parallelism, "--schedule", schedule, "--microbatches", str(m),
        "--batch", str(PARADIGM_BATCH),
    ]  # fmt: skip


def paradigms(model: str, rounds: int, on_progress: Progress) -> dict[str, Any]:
    """Samples/s of every paradigm, interleaved, with each one's per-rank model state, bytes
    sent per step and, for pipelines, busy time, communication and bubble against theory."""
    runs: dict[str, list[dict[str, Any]]] = {}
    configs: dict[str, Callable[[], float]] = {}
    for name, (procs, parallelism, schedule, m) in PARADIGMS.items():
        if procs > cores() and OVERSUBSCRIBED not in name:
            continue

        job = functools.partial(run_json, _paradigm_cmd(model, parallelism, schedule, m), 1, procs)
        configs[name] = samples_per_s(job, runs.setdefault(name, []))
    samples = interleave(configs, rounds, lambda s: on_progress(f"{model}: {s}"))
    return {name: _paradigm_row(values, runs[name][1:]) for name, values in samples.items()}


def _paradigm_row(values: list[float], got: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the measured rounds; per-rank figures reported for the busiest rank."""

    def worst(key: str) -> float:
        return statistics.median(max(r[key] for r in g["ranks"]) for g in got)

    row: dict[str, Any] = {
        "plan": got[0]["plan"],
        "samples_per_s": summary(values),
        "model_state_bytes_max_rank": worst("state_bytes"),
        "sent_bytes_per_step_max_rank": worst("sent_bytes"),
        "peak_rss_mib_max_rank": worst("peak_rss_mib"),
    }
    if "busy_s" in got[0]["ranks"][0]:
        busy, comm, step = worst("busy_s"), worst("comm_s"), worst("step_s")
        row |= {
            "step_ms": 1000 * step,
            "busy_ms": 1000 * busy,
            "comm_ms": 1000 * comm,
            "bubble_theory": got[0]["ranks"][0]["bubble_theory"],
            "bubble_and_overhead_measured": max(0.0, 1 - (busy + comm) / step),
            "ideal_samples_per_s": PARADIGM_BATCH / worst("ideal_step_s"),
        }
    return row


def run(rounds: int, progress: Progress) -> dict[str, Any]:
    return {"paradigms": {m: paradigms(m, rounds, progress) for m in ("default", "deep")}}


def targets(r: dict[str, Any]) -> Targets:
    """FSDP holds about 1/world of data parallelism's model state on each rank."""
    out = []
    for model, rows in r.get("paradigms", {}).items():
        data, fsdp = rows.get("data 2 × 1"), rows.get("fsdp 2 × 1")
        if data and fsdp:
            ratio = fsdp["model_state_bytes_max_rank"] / data["model_state_bytes_max_rank"]
            status = "PASS" if ratio <= 0.55 else "FAIL"
            out.append(
                {"target": f"{model}: fsdp 2×1 model state per rank ≤ 0.55 × data 2×1's",
                 "value": ratio, "status": status}
            )  # fmt: skip
    return out
