"""The drift demo end to end, on the first run's workspace: a device streams labelled field data;
the clean stream retrains nothing; after its sensor shifts (gain 1.5×, offset +1σ), `tinyops field
monitor --retrain` confirms the drift, merges the labelled samples into the raw data and retrains,
and the device's champion check decides production."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.bench.harness import example_params
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
    assert (ws / "data/field.dvc").is_file()  # the field data itself, by the monitor
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


def test_with_a_server_drift_hands_the_retrain_to_its_deployment(
    prefect_api: str, tmp_path: Path
) -> None:
    """On a Prefect server with a retrain deployment (a work pool's: nothing runs it here), the
    monitor emits `tinyops.drift.confirmed` and starts a run of that deployment instead of
    retraining in its own process; a missing deployment is refused before any work."""
    from pipeline.core.procs import wait_until
    from tests.conftest import make_workspace

    ws = make_workspace(tmp_path / "ws", devices=(DEVICE,))
    sc = demo.scenario(example_params(None, "digits").prepare, ws / "data/processed")
    manifest = sc.manifest.model_copy(update={"device": DEVICE, "normalization": sc.normalization})
    (ws / "deploy" / DEVICE).mkdir(parents=True)
    (ws / "deploy" / DEVICE / "manifest.json").write_text(manifest.model_dump_json())
    x, y = demo.intervals(sc.pool_x, sc.pool_y, 4, 32, seed=2)
    _send(ws, np.concatenate([x[:64], demo.shifted(x[64:], sc.normalization, 0)]), y, 0)
    missing = run_cmd(["tinyops", "field", "monitor", "--retrain", "--deployment", "retrain/nope"],
                      ws, check=False)  # fmt: skip
    assert missing.returncode == 2 and "retrain/nope is not on the Prefect server" in missing.stderr
    assert not (ws / "data/raw/field_labelled.npz").exists()
    run_cmd(
        ["tinyops", "schedule", "--pool", "drift", "--name", "ondrift", "--cron", "0 3 * * *"], ws
    )
    said = run_cmd(
        ["tinyops", "field", "monitor", "--retrain", "--deployment", "retrain/ondrift"], ws
    )
    out = said.stdout + said.stderr
    assert "retraining handed to retrain/ondrift: flow run" in out, out[-3000:]
    assert (ws / "data/raw/field_labelled.npz").is_file() and "Running stage" not in out
    wait_until(  # the server stores events a moment after they arrive
        lambda: any(e["payload"]["deployment"] == "retrain/ondrift" for e in _post(
            f"{prefect_api}/events/filter",
            {"filter": {"event": {"name": ["tinyops.drift.confirmed"]}}},
        )["events"]), 30, "the tinyops.drift.confirmed event",
    )  # fmt: skip
    runs = _post(f"{prefect_api}/flow_runs/filter", {"flow_runs": {"tags": {"all_": ["drift"]}}})
    assert [r["state_type"] for r in runs] == ["SCHEDULED"], runs


def _post(url: str, body: dict) -> Any:
    import urllib.request

    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())
