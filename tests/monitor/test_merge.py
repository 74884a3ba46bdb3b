"""Labelled field samples go back into the raw data in raw units, and prepare splits them in."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from pipeline.bench.harness import example_params
from pipeline.core import catalog
from pipeline.core.errors import DataValidationError
from pipeline.data.datasets import load_dataset
from pipeline.field.store import FieldStore
from pipeline.monitor import demo
from pipeline.monitor.merge import merge_labelled


def test_labelled_field_samples_are_merged_in_raw_units_and_prepare_splits_them_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepare = example_params(None, "digits").prepare  # from the project's params.yaml
    monkeypatch.chdir(tmp_path)
    sc = demo.scenario(prepare, tmp_path / "processed")
    manifest = sc.manifest.model_copy(update={"device": "d1", "normalization": sc.normalization})
    catalog.write(catalog.DEPLOY_ROOT / "d1" / "manifest.json", manifest)
    x, y = sc.pool_x[:40], sc.pool_y[:40]
    labels = [int(v) for v in y[:32]] + [-1] * 8  # the last batch came back without labels
    store = FieldStore()
    for k in (0, 8, 16, 24, 32):
        store.ingest({
            "device": "d1", "batch_id": f"b{k}", "model_sha256": "0" * 64,
            "samples": demo.quantized(x[k:k + 8], manifest).tolist(),
            "outputs": demo.perfect_outputs(y[k:k + 8], sc.classes).tolist(),
            "labels": None if labels[k] < 0 else labels[k:k + 8],
        })  # fmt: skip
    assert merge_labelled() == 32
    first = hashlib.sha256(catalog.FIELD_LABELLED.read_bytes()).hexdigest()
    assert merge_labelled() == 32  # the same field data, the same bytes
    assert hashlib.sha256(catalog.FIELD_LABELLED.read_bytes()).hexdigest() == first
    base = load_digits_raw(x[:32], sc.normalization)
    ds = load_dataset(prepare)
    assert len(ds.x) == 1797 + 32 and ds.y[-32:].tolist() == labels[:32]
    step = manifest.input_scale * float(sc.normalization["std"][0])  # one int8 step, raw units
    assert np.abs(ds.x[-32:] - base).max() <= step / 2 + 1e-4


def load_digits_raw(x: np.ndarray, normalization: dict) -> np.ndarray:
    return x * np.float32(normalization["std"][0]) + np.float32(normalization["mean"][0])


def test_field_samples_of_another_shape_or_class_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepare = example_params(None, "digits").prepare  # from the project's params.yaml
    monkeypatch.chdir(tmp_path)
    catalog.FIELD_LABELLED.parent.mkdir(parents=True)
    np.savez(catalog.FIELD_LABELLED, x=np.zeros((2, 7, 8, 1)), y=np.zeros(2, int), classes=["0"])
    with pytest.raises(DataValidationError, match=r"shape \[7, 8, 1\]"):
        load_dataset(prepare)
    np.savez(catalog.FIELD_LABELLED, x=np.zeros((2, 8, 8, 1)), y=np.zeros(2, int), classes=["cat"])
    with pytest.raises(DataValidationError, match="'cat'"):
        load_dataset(prepare)
    catalog.FIELD_LABELLED.write_bytes(b"not a zip")
    with pytest.raises(DataValidationError, match=r"field_labelled\.npz: not the labelled field"):
        load_dataset(prepare)
    np.savez(catalog.FIELD_LABELLED, x=np.zeros((2, 8, 8, 1)), y=np.array([0, 3]), classes=["0"])
    with pytest.raises(DataValidationError, match="a class of `classes`"):
        load_dataset(prepare)
