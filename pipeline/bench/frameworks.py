"""torch and Keras side by side in `tinyops bench`: the same data (the workspace's prepared
split), the same architecture params, each framework's own engine and exporter.

Throughput is what a user's training gets: `tinyops stage train` with each framework at 1 × 1,
2 × 1 (DDP against MultiWorkerMirroredStrategy) and 1 × 2 (one process, two threads), a few
epochs each, interleaved over the rounds; samples/s is the trainer's own figure (all epochs,
the first one's tracing and warm-up included). Accuracy at every level, the int8 size, the
TFLite Micro arena and the export time come from one full train → export → evaluate per
framework with the workspace's params. Each run is a scratch workspace; its MLflow runs go to a
scratch store.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pipeline.core import catalog

FRAMEWORKS = ("torch", "keras")
SHAPES = {"1 × 1": (1, 1), "2 × 1": (2, 1), "1 × 2": (1, 2)}  # processes × threads
THROUGHPUT_EPOCHS = 6
LEVELS = ("framework_fp32", "tflite_fp32", "tflite_int8", "tflm_int8")


def _workspace(root: Path, framework: str, train: dict[str, Any]) -> Path:
    """A scratch workspace: this one's prepared data and params, with the framework and the
    train overrides set."""
    ws = Path(tempfile.mkdtemp(prefix=f"{framework}-", dir=root))
    shutil.copytree(catalog.PROCESSED_DIR, ws / catalog.PROCESSED_DIR)
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["model"]["framework"] = framework
    params["train"].update(train)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return ws


def _stage(ws: Path, stage: str) -> float:
    """`tinyops stage <stage>` in `ws`: its wall time (the process's imports included)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TINYOPS_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{ws}/mlflow.db"
    start = time.perf_counter()
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("tinyops")), "stage", stage],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench: `tinyops stage {stage}` in {ws} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def throughput(root: Path, rounds: int, on_progress: Callable[[str], None]) -> dict[str, Any]:
    """samples/s per framework and shape, the configurations interleaved in every round."""
    got: dict[str, dict[str, list[float]]] = {f: {s: [] for s in SHAPES} for f in FRAMEWORKS}
    for r in range(rounds):
        for shape, (procs, threads) in SHAPES.items():
            for framework in FRAMEWORKS:
                on_progress(f"frameworks: round {r + 1}/{rounds}, {framework} {shape}")
                train = {"nproc_per_node": procs, "threads_per_proc": threads,
                         "epochs": THROUGHPUT_EPOCHS, "patience": THROUGHPUT_EPOCHS}  # fmt: skip
                ws = _workspace(root, framework, train)
                _stage(ws, "train")
                timing = json.loads((ws / catalog.TRAIN_TIMING).read_text())
                got[framework][shape].append(float(timing["samples_per_second"]))
                shutil.rmtree(ws, ignore_errors=True)
    return {f: {s: _summary(v) for s, v in shapes.items()} for f, shapes in got.items()}


def levels(root: Path, on_progress: Callable[[str], None]) -> dict[str, Any]:
    """One full train → export → evaluate per framework with the workspace's params."""
    out = {}
    for framework in FRAMEWORKS:
        on_progress(
            f"frameworks: {framework} train → export → evaluate with the workspace's params"
        )
        ws = _workspace(root, framework, {})
        train_s = _stage(ws, "train")
        export_s = _stage(ws, "export")
        _stage(ws, "evaluate")
        m = json.loads((ws / catalog.EVALUATE_METRICS).read_text())
        trained = json.loads((ws / catalog.TRAIN_METRICS).read_text())
        out[framework] = {
            "accuracy": {level: m[f"{level}_accuracy"] for level in LEVELS},
            "int8_bytes": m["tflite_int8_bytes"],
            "fp32_bytes": m["tflite_fp32_bytes"],
            "tflm_arena_bytes": m["tflm_arena_bytes"],
            "export_seconds": export_s,
            "train_stage_seconds": train_s,
            "best_epoch": trained["best_epoch"],
            "epochs_run": trained["epochs_run"],
        }
        shutil.rmtree(ws, ignore_errors=True)
    return out


def frameworks(rounds: int, on_progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Both comparisons; needs the workspace's prepared data (run `tinyops run` first)."""
    catalog.read(catalog.META_FILE, catalog.DatasetMeta, "prepare")
    root = Path(tempfile.mkdtemp(prefix="tinyops-bench-frameworks-"))
    try:
        return {
            "throughput": throughput(root, rounds, on_progress),
            "levels": levels(root, on_progress),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def framework_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Keras int8 within 1.0 point of Keras fp32 at every level (the issue's bar); the MWMS
    2 × 1 ÷ 1 × 1 ratio is reported beside DDP's, with no bar: it is explained, not judged."""
    fw = r.get("frameworks")
    if not fw:
        return []
    out = []
    for framework, row in fw["levels"].items():
        acc = row["accuracy"]
        gap = max(acc["framework_fp32"] - acc[level] for level in LEVELS[1:])
        out.append({"target": f"{framework}: int8 within 1.0 point of {framework} fp32 at every level",
                    "value": gap, "status": "PASS" if gap <= 0.01 else "FAIL"})  # fmt: skip
    for framework, shapes in fw["throughput"].items():
        ratio = shapes["2 × 1"]["median"] / shapes["1 × 1"]["median"]
        engine = "MultiWorkerMirroredStrategy" if framework == "keras" else "DDP"
        out.append({"target": f"{framework}: {engine} 2×1 ÷ 1×1 training throughput (reported)",
                    "value": ratio, "status": "REPORTED"})  # fmt: skip
    return out


def framework_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The table's rows: samples/s per shape (ratio to the framework's 1 × 1, and Keras to
    torch), then accuracy per level, int8 size, arena and export time (ratio Keras ÷ torch)."""
    fw = r.get("frameworks")
    if not fw:
        return []
    rows = []
    thr = fw["throughput"]
    for framework, shapes in thr.items():
        base = shapes["1 × 1"]["median"]
        for shape, s in shapes.items():
            vs = s["median"] / thr["torch"][shape]["median"]
            rows.append((f"{framework}: train {shape} (samples/s)", f"{s['median']:,.0f}",
                         f"{s['min']:,.0f}–{s['max']:,.0f}",
                         f"{s['median'] / base:.2f}× own 1×1, {vs:.2f}× torch"))  # fmt: skip
    lv = fw["levels"]
    for key in ("int8_bytes", "tflm_arena_bytes", "export_seconds"):
        t, k = lv["torch"][key], lv["keras"][key]
        rows.append(
            (f"torch / keras: {key}", f"{t:,.1f} / {k:,.1f}", "", f"{k / t:.2f}× keras ÷ torch")
        )
    for level in LEVELS:
        t, k = lv["torch"]["accuracy"][level], lv["keras"]["accuracy"][level]
        rows.append((f"torch / keras: {level} accuracy", f"{t:.4f} / {k:.4f}", "", f"{k - t:+.4f}"))
    return rows
