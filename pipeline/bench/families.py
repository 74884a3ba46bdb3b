"""Model families side by side on the bundled sensor datasets (`tinyops bench --only families`):
for each example in examples/ and each sequence family, the real stages in a scratch workspace
(prepare → train → export → evaluate → deploy to every microcontroller of params.yaml), and
what docs/sequences.md's family table shows: fully int8 or not, the TFLite Micro ops, the int8 size,
the arena, accuracy at every level, and each MCU's verdict (bundled, or rejected and why).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pipeline.core import catalog
from pipeline.core.config import with_example
from pipeline.deploy.bundle import read_manifest

EXAMPLES = ("examples/basicmotions.yaml", "examples/japanesevowels.yaml")
FAMILIES = ("cnn1d", "dscnn1d", "tcn", "gru", "lstm", "transformer")
# (example, family): every classifier on both datasets, then the anomaly detector.
CELLS = (
    *((example, arch) for example in EXAMPLES for arch in FAMILIES),
    ("examples/japanesevowels_anomaly.yaml", "autoencoder"),
)
LEVELS = ("framework_fp32", "tflite_fp32", "tflite_int8", "tflm_int8")


def _workspace(root: Path, example: str, arch: str) -> Path:
    """This project's params.yaml with the example and arch overlaid; tflm.source made absolute
    (the workspace lives elsewhere)."""
    ws = Path(tempfile.mkdtemp(prefix=f"{Path(example).stem}-{arch}-", dir=root))
    base = yaml.safe_load(Path("params.yaml").read_text())
    params = with_example(base, yaml.safe_load(Path(example).read_text()), example, arch)
    if params["tflm"].get("source"):
        params["tflm"]["source"] = str(Path(params["tflm"]["source"]).resolve())
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return ws


def _stage(ws: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TINYOPS_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{ws}/mlflow.db"
    if "TINYOPS_CACHE" in os.environ:  # the firmware library cache is worth sharing
        env["TINYOPS_CACHE"] = os.environ["TINYOPS_CACHE"]
    tinyops = str(Path(sys.executable).with_name("tinyops"))
    proc = subprocess.run(
        [tinyops, "stage", *args], cwd=ws, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"`tinyops stage {' '.join(args)}` in {ws}:\n{proc.stderr[-3000:]}")


def _devices(ws: Path) -> dict[str, str]:
    """Each MCU's verdict: bundled (with the firmware's measured flash), or the rejection."""
    out = {}
    for folder in sorted((ws / "deploy").iterdir()):
        manifest, rejected = folder / "manifest.json", folder / "rejected.json"
        if manifest.is_file():
            fw = (read_manifest(manifest).firmware or {}).get("measured")
            out[folder.name] = f"bundled, flash {fw['flash_bytes']:,} B" if fw else "bundled"
        elif rejected.is_file():
            failed = {c["name"] for cand in json.loads(rejected.read_text())["candidates"]
                      for c in cand["checks"] if not c["passed"]}  # fmt: skip
            out[folder.name] = "rejected: " + ", ".join(sorted(failed))
    return out


def one(root: Path, example: str, arch: str, mcus: list[str]) -> dict[str, Any]:
    """One example × family through the real stages."""
    ws = _workspace(root, example, arch)
    for stage in ("prepare", "train", "export", "evaluate"):
        _stage(ws, stage)
    for device in mcus:
        _stage(ws, "deploy", "--device", device)
    m = json.loads((ws / catalog.EVALUATE_METRICS).read_text())
    info = json.loads((ws / catalog.TRAIN_METRICS).read_text())
    from pipeline.tflite.flatbuffer import check_full_int8

    int8 = check_full_int8(ws / catalog.variant_file("int8"), "int8")  # raises if not
    row = {
        "fully_int8": True,
        "ops": list(int8.op_names),
        "parameters": info["parameters"],
        "int8_bytes": m["tflite_int8_bytes"],
        "tflm_arena_bytes": m["tflm_arena_bytes"],
        "test_samples": m["test_samples"],
        "accuracy": {level: m[f"{level}_accuracy"] for level in LEVELS},
        "devices": _devices(ws),
    }
    if "tflm_int8_auc" in m:  # the autoencoder: its ranking, beside the detection accuracy
        row["auc"] = {level: m[f"{level}_auc"] for level in LEVELS}
    shutil.rmtree(ws, ignore_errors=True)
    return row


def families(on_progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Every cell (example, family); a failure is recorded for that cell and the rest still run."""
    params = yaml.safe_load(Path("params.yaml").read_text())
    mcus = sorted(n for n, d in params["devices"].items() if d["runtime"] == "tflm")
    root = Path(tempfile.mkdtemp(prefix="tinyops-bench-families-"))
    out: dict[str, Any] = {}
    try:
        for example, arch in CELLS:
            name = Path(example).stem
            on_progress(f"families: {name} × {arch}: prepare → train → export → evaluate → deploy")
            try:
                out.setdefault(name, {})[arch] = one(root, example, arch, mcus)
            except Exception as exc:
                out.setdefault(name, {})[arch] = {"error": f"{type(exc).__name__}: {exc}"[-800:]}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def family_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's bar: TFLite Micro int8 within 2 points of fp32, per dataset and family."""
    out = []
    for dataset, rows in (r.get("families") or {}).items():
        for arch, row in rows.items():
            if "error" in row:
                out.append({"target": f"families: {dataset} {arch} runs", "value": None,
                            "status": "FAIL"})  # fmt: skip
                continue
            key = "auc" if "auc" in row else "accuracy"
            acc = row[key]
            gap = acc["framework_fp32"] - acc["tflm_int8"]
            target = f"families: {dataset} {arch}: TFLite Micro int8 {key} within 2 points of fp32"
            out.append(
                {"target": target, "value": gap, "status": "PASS" if gap <= 0.02 else "FAIL"}
            )
    return out


def _quality(row: dict[str, Any]) -> str:
    """fp32 → TFLite Micro int8: accuracy; for the autoencoder AUC first, then its accuracy at
    the validation threshold."""
    parts = [("AUC ", row["auc"])] if "auc" in row else []
    parts.append(("accuracy " if parts else "", row["accuracy"]))
    shown = ", ".join(f"{k}{v['framework_fp32']:.4f} → {v['tflm_int8']:.4f}" for k, v in parts)
    return f"{shown} (n={row['test_samples']})"


def family_table(r: dict[str, Any]) -> str:
    """Markdown: dataset × family → int8, ops, size, arena, accuracy fp32 → TFLM int8, MCUs."""
    lines = [
        "| dataset | family | fully int8 | TFLite Micro ops | int8 size | arena "
        "| accuracy fp32 → TFLM int8 | MCUs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset, rows in (r.get("families") or {}).items():
        for arch, row in rows.items():
            if "error" in row:
                lines.append(f"| {dataset} | {arch} | failed: {row['error'][:120]} | | | | | |")
                continue
            fits = sum(v.startswith("bundled") for v in row["devices"].values())
            lines.append(
                f"| {dataset} | {arch} | yes | {', '.join(row['ops'])} | {row['int8_bytes']:,} B | "
                f"{row['tflm_arena_bytes']:,} B | {_quality(row)} | {fits}/{len(row['devices'])} |"
            )
    return "\n".join(lines)
