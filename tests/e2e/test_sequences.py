"""A sensor model end to end: `tinyops run` on the bundled BasicMotions with the unrolled GRU,
through the real flow, DVC, MLflow, TFLite Micro and the firmware check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_workspace, run_cmd

pytestmark = pytest.mark.slow  # trains or exports models: the fast tier stays under 3 minutes


@pytest.fixture(scope="module")
def gru_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = make_workspace(
        tmp_path_factory.mktemp("gru"),
        train_overrides={"epochs": 50, "patience": 15, "batch_size": 16},
        model_overrides={"arch": "gru", "hidden_size": 32, "stride": 4, "channels": [32]},
        devices=("raspberry_pi_pico", "raspberry_pi_4"),
        sections={"prepare": {"source": "basicmotions"}, "export": {"calibration_samples": 56}},
    )
    proc = run_cmd(["tinyops", "run"], ws)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return ws


def test_gru_is_fully_int8_and_as_accurate_in_tflite_micro(gru_run: Path) -> None:
    m = json.loads((gru_run / "metrics/evaluate.json").read_text())
    assert m["test_samples"] == 12
    assert m["framework_fp32_accuracy"] - m["tflm_int8_accuracy"] <= 0.02, m
    ops = json.loads((gru_run / "metrics/variants.json").read_text())["int8"]["ops"]
    assert {"SLICE", "LOGISTIC", "TANH", "SUB", "MUL"} <= set(ops), ops


def test_streaming_step_model_agrees_with_the_unrolled_one(gru_run: Path) -> None:
    m = json.loads((gru_run / "metrics/evaluate.json").read_text())
    assert m["streaming_unrolled_agreement"] >= 0.9, m
    assert m["tflite_streaming_int8_bytes"] < m["tflite_int8_bytes"] / 4
    assert m["tflm_streaming_arena_bytes"] < m["tflm_arena_bytes"] / 4
    spec = json.loads((gru_run / "exports/streaming/streaming.json").read_text())
    assert spec["frames"] == 25 and spec["states"] == 1


def test_the_worst_int8_layer_is_named_in_metrics_and_report(gru_run: Path) -> None:
    layers = json.loads((gru_run / "metrics/int8_layers.json").read_text())
    worst = layers["worst"]
    assert worst["snr_db"] == min(r["snr_db"] for r in layers["layers"])
    assert layers["quantization"]["method"] == "ptq"
    report = (gru_run / "report/deploy.md").read_text()
    assert f"Worst layer: **{worst['name']}**" in report
    assert (gru_run / "report/int8_layers.png").stat().st_size > 1000


def test_every_device_is_bundled_or_rejected_and_the_bundle_states_its_window(
    gru_run: Path,
) -> None:
    for device in ("raspberry_pi_pico", "raspberry_pi_4"):
        folder = gru_run / "deploy" / device
        assert (folder / "manifest.json").is_file() or (folder / "rejected.json").is_file()
    pico = gru_run / "deploy/raspberry_pi_pico"
    manifest = json.loads((pico / "manifest.json").read_text())
    assert manifest["input_shape"] == [100, 6] and manifest["layout"] == "TC"
    assert manifest["channels"][:3] == ["accel_x", "accel_y", "accel_z"]
    header = (pico / "tinyops_model.h").read_text()
    assert "constexpr int kInputSteps = 100;" in header and "kInputHeight" not in header
    assert "a window of 100 steps × 6 channels" in (pico / "README.md").read_text()
