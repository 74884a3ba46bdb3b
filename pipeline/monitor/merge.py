"""Labelled field data into the raw data: every device's samples whose labels came back, turned
back into raw units (the bundle's input scale, then its normalization undone) and written to
data/raw/field_labelled.npz, which prepare adds to the source. Rewritten whole from the field
store each time, in device and arrival order, so the same field data gives the same bytes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from pipeline.core import atomic, catalog
from pipeline.core.catalog import DEPLOY_ROOT, FIELD_DIR, FIELD_LABELLED, Manifest
from pipeline.field.store import stream
from pipeline.monitor.drift import dequantized


def raw_units(x: np.ndarray, manifest: Manifest) -> np.ndarray:
    """Normalized model inputs back in the units the source gives (per channel)."""
    norm = manifest.normalization
    if not norm.get("mean"):
        return x
    return x * np.asarray(norm["std"], dtype=np.float32) + np.asarray(
        norm["mean"], dtype=np.float32
    )


def merge_labelled(root: Path = FIELD_DIR, out: Path = FIELD_LABELLED) -> int:
    """Write every labelled field sample to `out`; how many (0: nothing written)."""
    xs, ys, classes = [], [], None
    for folder in sorted(p for p in root.glob("*") if p.is_dir()):
        data = stream(folder.name, root)
        if data is None:
            continue
        manifest = catalog.read(
            DEPLOY_ROOT / folder.name / "manifest.json", Manifest, f"deploy --device {folder.name}"
        )
        known = data[2] >= 0
        xs.append(raw_units(dequantized(data[0][known], manifest), manifest))
        ys.append(data[2][known].astype(np.int64))
        classes = manifest.labels
    count = sum(len(y) for y in ys)
    if not count:
        return 0
    buffer = io.BytesIO()
    np.savez(buffer, x=np.concatenate(xs), y=np.concatenate(ys), classes=np.asarray(classes))
    atomic.write_bytes(out, buffer.getvalue())
    return count
