"""Section `nodes`: the network's price. Data parallelism on 2 workers, side by side: 1 node × 2
processes through shared memory (the default on one host), the same over gloo's TCP on loopback,
and 2 nodes × 1 process over a veth link between two network namespaces (pipeline/core/hosts.py),
for the default CNN and the deeper one. Each row gives samples/s, the all-reduce time per step
and the bytes each rank sends per step; the link's effective rate is bytes ÷ all-reduce time."""

from __future__ import annotations

import functools
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
from pipeline.bench.sections.paradigms import _paradigm_cmd
from pipeline.core import hosts

ABOUT = "2 nodes × 1 process over a veth link against 1 node × 2 processes (shared memory)"
MINUTES = 3

ROWS = {  # name → (--allreduce, over the link)
    "1 node × 2 (shared memory)": ("auto", False),
    "1 node × 2 (gloo, loopback TCP)": ("backend", False),
    "2 nodes × 1 (gloo, veth)": ("backend", True),
}


def _measure(model: str, rounds: int, pair: Any, on_progress: Progress) -> dict[str, Any]:
    got: dict[str, list[dict[str, Any]]] = {}
    configs: dict[str, Callable[[], float]] = {}
    for name, (allreduce, linked) in ROWS.items():
        if linked and pair is None:
            continue
        cmd = [*_paradigm_cmd(model, "data", "1f1b", 1), "--allreduce", allreduce]
        job = functools.partial(run_json, cmd, 1, 2, list(pair) if linked else None)
        configs[name] = samples_per_s(job, got.setdefault(name, []))
    samples = interleave(configs, rounds, lambda s: on_progress(f"{model}: {s}"))
    return {name: _row(values, got[name][1:]) for name, values in samples.items()}


def _row(values: list[float], got: list[dict[str, Any]]) -> dict[str, Any]:
    import statistics

    allreduce = statistics.median(max(r["allreduce_s"] for r in g["ranks"]) for g in got)
    sent = max(r["sent_bytes"] for r in got[0]["ranks"])
    return {
        "plan": got[0]["plan"],
        "samples_per_s": summary(values),
        "allreduce_ms_per_step": 1000 * allreduce,
        "sent_bytes_per_step": sent,
        "effective_gbit_per_s": 8 * sent / allreduce / 1e9,
    }


def run(rounds: int, progress: Progress) -> dict[str, Any]:
    why = hosts.available()
    if why:
        progress(f"nodes: {why}; the veth row is left out")
        return {"nodes": {m: _measure(m, rounds, None, progress) for m in ("default", "deep")}}
    with hosts.TwoHosts() as pair:
        return {"nodes": {m: _measure(m, rounds, pair, progress) for m in ("default", "deep")}}


def targets(r: dict[str, Any]) -> Targets:
    """No pass mark: the issue asks for the price, and its explanation (docs/nodes.md)."""
    return []
