"""Federated against centralized training, side by side (`tinyops bench --only federated`): on
digits and on JapaneseVowels, over 3 seeds, centralized training and FedAvg at IID, Dirichlet
α = 0.5 and 0.1 and by-class, then FedProx and FedAvgM at α = 0.1, each through the real stages
(prepare → train → export → evaluate) in a scratch workspace on the Simulation Engine. Medians
over the seeds: the accuracy at every level down to TensorFlow Lite Micro int8, the rounds to
95 % of centralized accuracy, bytes and seconds per round, the engine's start-up, wall time.
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pipeline.bench.families import _stage
from pipeline.bench.harness import EXAMPLES, Targets, checker
from pipeline.core import catalog
from pipeline.core.config import with_example

SEEDS = (42, 43, 44)
LEVELS = ("framework_fp32", "tflite_fp32", "tflite_int8", "tflm_int8")
# dataset → its example (None: params.yaml's digits) and train.federated settings. Digits: 10
# clients, 20 rounds of 1 local epoch. JapaneseVowels' ~450 training series over 10 clients would
# leave α = 0.1 clients below min_samples, so 5; each then holds ~3 batches, and 20 rounds of 1
# local epoch are ~60 optimizer steps against centralized training's ~400: 30 rounds of 5 local
# epochs give the clients the same budget (with 1 epoch, FedAvg at IID reached 0.927 against 0.990).
DATASETS: dict[str, tuple[str | None, dict[str, int]]] = {
    "digits": (None, {"clients": 10}),
    "japanesevowels": (EXAMPLES["japanesevowels"], {"clients": 5, "rounds": 30, "local_epochs": 5}),
}
ALPHA_01 = {"partition": "dirichlet", "alpha": 0.1}
CONFIGS: dict[str, dict[str, Any] | None] = {
    "centralized": None,
    "fedavg iid": {"strategy": "fedavg", "partition": "iid"},
    "fedavg dirichlet 0.5": {"strategy": "fedavg", "partition": "dirichlet", "alpha": 0.5},
    "fedavg dirichlet 0.1": {"strategy": "fedavg", **ALPHA_01},
    "fedavg by_class": {"strategy": "fedavg", "partition": "by_class"},
    "fedprox dirichlet 0.1": {"strategy": "fedprox", **ALPHA_01},
    "fedavgm dirichlet 0.1": {"strategy": "fedavgm", **ALPHA_01},
}


def _workspace(root: Path, dataset: str, config: str, seed: int) -> Path:
    example, settings = DATASETS[dataset]
    ws = Path(tempfile.mkdtemp(prefix=f"{dataset}-{config.replace(' ', '-')}-{seed}-", dir=root))
    params = yaml.safe_load(Path("params.yaml").read_text())
    if example:
        params = with_example(params, yaml.safe_load(Path(example).read_text()), example, None)
    params["prepare"]["seed"] = params["train"]["seed"] = seed
    federated = CONFIGS[config]
    if federated is not None:
        del params["train"]["epochs"], params["train"]["patience"]
        params["train"]["paradigm"] = "federated"
        params["train"]["federated"].update({**settings, **federated})
    params["tflm"]["source"] = str(Path(params["tflm"]["source"]).resolve())
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return ws


def one(root: Path, dataset: str, config: str, seed: int) -> dict[str, Any]:
    """One cell through the real stages: its accuracies, curve, bytes and timings."""
    ws = _workspace(root, dataset, config, seed)
    _stage(ws, "prepare")
    started = time.perf_counter()
    _stage(ws, "train")
    wall = time.perf_counter() - started
    for stage in ("export", "evaluate"):
        _stage(ws, stage)
    m = json.loads((ws / catalog.EVALUATE_METRICS).read_text())
    info = json.loads((ws / catalog.TRAIN_METRICS).read_text())
    timing = json.loads((ws / catalog.TRAIN_TIMING).read_text())
    with (ws / catalog.TRAIN_HISTORY).open() as f:
        curve = [float(row["val_accuracy"]) for row in csv.DictReader(f)]
    steps = max(len(curve), 1)
    row = {
        "accuracy": {level: m[f"{level}_accuracy"] for level in LEVELS},
        "curve": curve,
        "steps": len(curve),
        "bytes_per_round": (info.get("bytes_sent_total", 0) + info.get("bytes_received_total", 0))
        / steps,
        "seconds_per_round": timing["train_seconds"] / steps,
        "startup_s": wall - timing["train_seconds"],
        "wall_s": wall,
    }
    shutil.rmtree(ws, ignore_errors=True)
    return row


def _rounds_to(curve: list[float], goal: float) -> int | None:
    return next((i + 1 for i, a in enumerate(curve) if a >= goal), None)


def _median(values: list[Any]) -> Any:
    found = [v for v in values if v is not None]
    return statistics.median(found) if found else None


def summarize(cells: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Medians over the seeds; rounds to 95 % of the same seed's centralized accuracy."""
    out: dict[str, Any] = {}
    central = cells.get("centralized", {})
    for config, seeds in cells.items():
        good = {s: r for s, r in seeds.items() if "error" in r or "accuracy" in r}
        rows = [r for r in good.values() if "accuracy" in r]
        errors = [r["error"] for r in good.values() if "error" in r]
        if not rows:
            out[config] = {"error": errors[0] if errors else "not run"}
            continue
        goal = {s: 0.95 * max(central[s]["curve"]) for s in central if "curve" in central[s]}
        out[config] = {
            "seeds": len(rows),
            "accuracy": {lvl: _median([r["accuracy"][lvl] for r in rows]) for lvl in LEVELS},
            "rounds_to_95pct": None if config == "centralized" else _median(
                [_rounds_to(r["curve"], goal[s]) for s, r in good.items() if s in goal and "curve" in r]),
            **{k: _median([r[k] for r in rows])
               for k in ("steps", "bytes_per_round", "seconds_per_round", "startup_s", "wall_s")},
        }  # fmt: skip
    return out


def federated(
    on_progress: Callable[[str], None] = print, seeds: tuple[int, ...] = SEEDS
) -> dict[str, Any]:
    """Every (dataset, config, seed); a failing cell is recorded and the rest still run."""
    root = Path(tempfile.mkdtemp(prefix="tinyops-bench-federated-"))
    out: dict[str, Any] = {}
    try:
        for dataset in DATASETS:
            cells: dict[str, dict[int, dict[str, Any]]] = {}
            for config in CONFIGS:
                for seed in seeds:
                    on_progress(f"federated: {dataset} × {config} × seed {seed}")
                    try:
                        cells.setdefault(config, {})[seed] = one(root, dataset, config, seed)
                    except Exception as exc:
                        cells.setdefault(config, {})[seed] = {
                            "error": f"{type(exc).__name__}: {exc}"[-800:]
                        }
            out[dataset] = summarize(cells)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def _acc(row: dict[str, Any], level: str = "tflm_int8") -> float | None:
    return (row.get("accuracy") or {}).get(level)


def federated_targets(r: dict[str, Any]) -> Targets:
    """The issue's four targets, per dataset."""
    out: Targets = []
    check = checker(out)
    for dataset, rows in (r.get("federated") or {}).items():
        central, half = rows.get("centralized", {}), rows.get("fedavg dirichlet 0.5", {})
        gaps = [(_acc(central, lvl) or 0) - (_acc(half, lvl) or 0) for lvl in LEVELS
                if _acc(central, lvl) is not None and _acc(half, lvl) is not None]  # fmt: skip
        check(f"{dataset}: FedAvg α=0.5 within 3 points of centralized at every level (worst gap)",
              max(gaps) if gaps else None, max(gaps) <= 0.03 if gaps else None)  # fmt: skip
        base, c = _acc(rows.get("fedavg dirichlet 0.1", {})), _acc(central)
        best = max(filter(None, [_acc(rows.get("fedprox dirichlet 0.1", {})),
                                 _acc(rows.get("fedavgm dirichlet 0.1", {}))]), default=None)  # fmt: skip
        measured = None not in (base, c, best)
        recovered = (
            (best - base) / (c - base)
            if measured and c - base > 1e-9
            else (1.0 if measured else None)
        )  # type: ignore[operator]
        check(f"{dataset}: at α=0.1 FedProx or FedAvgM recovers ≥ half of FedAvg's loss (share)",
              recovered, recovered >= 0.5 if recovered is not None else None)  # fmt: skip
        drops = [abs(_acc(row, "framework_fp32") - _acc(row)) for name, row in rows.items()  # type: ignore[operator]
                 if name != "centralized" and _acc(row) is not None]  # fmt: skip
        check(f"{dataset}: int8 (TFLite Micro) within 1 point of the federated fp32 model (worst)",
              max(drops) if drops else None, max(drops) <= 0.01 if drops else None)  # fmt: skip
    iid = (r.get("federated") or {}).get("digits", {}).get("fedavg iid", {})
    secs = iid.get("seconds_per_round")
    check("a simulated round of 10 clients (default CNN, 1 local epoch) under 10 s on 2 cores",
          secs, secs < 10 if secs is not None else None)  # fmt: skip
    return out


def federated_table(r: dict[str, Any]) -> str:
    """docs/performance.md's federated table."""
    lines = ["| dataset | run | fp32 | TFLM int8 | rounds | to 95 % | bytes/round | s/round | start-up s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for dataset, rows in (r.get("federated") or {}).items():
        for name, row in rows.items():
            if "error" in row:
                lines.append(f"| {dataset} | {name} | error: {row['error'][:80]} |||||||")
                continue
            to95 = row["rounds_to_95pct"]
            lines.append(
                f"| {dataset} | {name} | {row['accuracy']['framework_fp32']:.4f} | "
                f"{row['accuracy']['tflm_int8']:.4f} | {row['steps']:g} | "
                f"{'-' if to95 is None else f'{to95:g}'} | {row['bytes_per_round'] / 1e6:.2f} MB | "
                f"{row['seconds_per_round']:.2f} | {row['startup_s']:.1f} |"
            )
    return "\n".join(lines)
