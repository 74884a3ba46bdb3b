"""The monitor over a workspace: each device's stored field stream against the training split,
and its drift report in report/drift/ (a table, a picture, the figures as JSON), each written
atomically so a monitor stopped midway leaves the previous report whole."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pipeline.core import atomic, catalog
from pipeline.core.catalog import (
    DEPLOY_ROOT,
    DRIFT_DIR,
    DRIFT_JSON,
    DRIFT_MD,
    DRIFT_PNG,
    FIELD_DIR,
    Manifest,
)
from pipeline.core.config import MonitorParams, Params
from pipeline.data.prepare import load_processed
from pipeline.field.store import stream
from pipeline.monitor.drift import DeviceDrift, Reference, dequantized, monitor_stream


def monitor_workspace(params: Params, devices: list[str] | None = None) -> dict[str, DeviceDrift]:
    """Every device with field data (or those named), judged and reported: only the samples its
    deployed model saw, so that a retrain starts the watch afresh (older batches stay stored)."""
    names = devices or sorted(p.name for p in FIELD_DIR.glob("*") if p.is_dir())
    watched = {}
    for name in names:
        if not (FIELD_DIR / name).is_dir():
            continue
        manifest = catalog.read(
            DEPLOY_ROOT / name / "manifest.json", Manifest, f"deploy --device {name}"
        )
        data = stream(name, model_sha256=manifest.model_sha256)
        if data is not None:
            watched[name] = (manifest, data)
    if not watched:
        return {}
    splits = load_processed()
    meta = splits.meta
    ref = Reference.of(splits.x["train"], splits.y["train"], meta.num_classes, meta.channels)
    results = {}
    for device, (manifest, data) in watched.items():
        x = dequantized(data[0], manifest)
        results[device] = monitor_stream(ref, x, data[1], data[2], device, params.monitor)
        write_report(results[device], params.monitor)
    return results


def write_report(drift: DeviceDrift, params: MonitorParams, folder: Path = DRIFT_DIR) -> Path:
    """report/drift/<device>/ (report.md, drift.png, drift.json), swapped in whole: a monitor
    stopped midway leaves the previous report as it was."""
    body = {"device": drift.device, "confirmed_at": drift.confirmed_at,
            "pending_samples": drift.pending_samples, "params": params.model_dump(),
            "intervals": [dataclasses.asdict(i) for i in drift.intervals]}  # fmt: skip
    with atomic.atomic_dir(folder / drift.device) as tmp:
        (tmp / DRIFT_JSON).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        (tmp / DRIFT_MD).write_text(markdown(drift, params))
        _plot(drift, params, tmp / DRIFT_PNG)
    return folder / drift.device


def verdict(drift: DeviceDrift, params: MonitorParams) -> str:
    """One line: what the monitor concluded for the device."""
    n = len(drift.intervals)
    if drift.confirmed_at is not None:
        labelled = sum(
            i.labelled for i in drift.intervals[drift.confirmed_at - params.intervals + 1 :]
        )
        need = "" if labelled else "; no labels came back with it: label field data to retrain on"
        return (f"{drift.device}: DRIFT confirmed at interval {drift.confirmed_at} "
                f"({params.intervals} in a row below p {params.threshold:g}){need}")  # fmt: skip
    drifted = sum(i.drifted for i in drift.intervals)
    return f"{drift.device}: no drift confirmed ({n} intervals, {drifted} drifted alone)"


def markdown(drift: DeviceDrift, params: MonitorParams) -> str:
    lines = [f"# Drift: {drift.device}", "", verdict(drift, params), "",
             f"![p-value per interval]({DRIFT_PNG})", "",
             "| interval | samples | p (corrected) | drifted | most moved | joint p | class mix p | "
             "confidence | labelled | accuracy |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for i in drift.intervals:
        worst = min(i.feature_p, key=i.feature_p.__getitem__)
        acc = "-" if i.accuracy is None else f"{i.accuracy:.3f}"
        lines.append(f"| {i.index} | {i.samples} | {i.p_value:.2g} | {'yes' if i.drifted else ''} "
                     f"| {worst} ({i.feature_p[worst]:.2g}) | {i.joint_p:.2g} | {i.class_mix_p:.2g} | "
                     f"{i.confidence:.3f} | {i.labelled} | {acc} |")  # fmt: skip
    if drift.pending_samples:
        lines += ["", f"{drift.pending_samples} samples wait for the next interval."]
    return "\n".join(lines) + "\n"


def _plot(drift: DeviceDrift, params: MonitorParams, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.semilogy([i.index for i in drift.intervals], [max(i.p_value, 1e-300) for i in drift.intervals],
                marker="o", label="p (corrected)")  # fmt: skip
    ax.axhline(
        params.threshold, color="red", linestyle="--", label=f"threshold {params.threshold:g}"
    )
    ax.set_xlabel("monitor interval")
    ax.set_ylabel("p-value")
    ax.set_title(f"{drift.device}: drift per interval")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
