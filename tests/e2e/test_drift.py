"""The drift demo end to end, on the first run's workspace: a device streams labelled field data;
the clean stream retrains nothing; after its sensor shifts (gain 1.5×, offset +1σ), `tinyops field
monitor --retrain` confirms the drift, merges the labelled samples into the raw data and retrains,
and the device's champion check decides production."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.catalog import DEPLOY_ROOT, FIELD_DIR, Manifest
from pipeline.field.store import FieldStore
from pipeline.monitor import demo
from tests.conftest import run_cmd

pytestmark = pytest.mark.slow  # retrains the default pipeline (about a minute and a half)

DEVICE = "stm32f746"


def _send(ws: Path, x: np.ndarray, y: np.ndarray, first: int) -> None:
    """Batches of 32 into the workspace's field store, as the endpoint stores them."""
    manifest = Manifest.model_validate_json((ws / "deploy" / DEVICE / "manifest.json").read_text())
    q, out = demo.quantized(x, manifest), demo.perfect_outputs(y, len(manifest.labels))
    store = FieldStore(ws / FIELD_DIR, ws / DEPLOY_ROOT)
    for k in range(0, len(x), 32):
        store.ingest({
            "device": DEVICE, "batch_id": f"g{first + k}", "model_sha256": manifest.model_sha256,
            "samples": q[k:k + 32].tolist(), "outputs": out[k:k + 32].tolist(),
            "labels": y[k:k + 32].tolist(),
        })  # fmt: skip


def test_drift_triggers_a_retrain_that_the_champion_check_judges(own_ws: Path) -> None:
    ws = own_ws
    meta = json.loads((ws / "data/processed/meta.json").read_text())
    first_split = json.loads((ws / f"metrics/deploy/{DEVICE}.json").read_text())[
        "test_split_sha256"
    ]
    pool_x = np.concatenate([np.load(ws / f"data/processed/x_{s}.npy") for s in ("val", "test")])
    pool_y = np.concatenate([np.load(ws / f"data/processed/y_{s}.npy") for s in ("val", "test")])
    x, y = demo.intervals(pool_x, pool_y, 8, 32, seed=11)
    _send(ws, x[:96], y[:96], 0)
    quiet = run_cmd(["tinyops", "field", "monitor", "--retrain"], ws).stdout
    assert "no labelled drift confirmed: nothing to retrain" in quiet, quiet
    assert not (ws / "data/raw/field_labelled.npz").exists()
    _send(ws, demo.shifted(x[96:], meta["normalization"], 0), y[96:], 96)
    proc = run_cmd(["tinyops", "field", "monitor", "--retrain"], ws)
    out = proc.stdout + proc.stderr
    assert f"{DEVICE}: DRIFT confirmed at interval 4" in out, out[-4000:]
    assert "256 labelled field samples merged" in out and "Running stage 'train'" in out, out[
        -4000:
    ]
    assert (ws / "data/raw/field_labelled.npz.dvc").is_file()  # versioned by the flow's ingest
    after = json.loads((ws / "data/processed/meta.json").read_text())
    assert sum(after["splits"].values()) == sum(meta["splits"].values()) + 256
    assert (
        f"deploy@{DEVICE}" in out
        and "DRIFT" in (ws / f"report/drift/{DEVICE}/report.md").read_text()
    )
    status = json.loads((ws / f"metrics/deploy/{DEVICE}.json").read_text())
    assert status["version"] == 2 and status["status"] in ("promoted", "kept"), status
    assert status["test_split_sha256"] != first_split  # judged on the new split, field data in
    assert (
        f"on the test split production v1 was promoted on ({first_split[:12]})" in status["reason"]
    )
