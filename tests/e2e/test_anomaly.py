"""The autoencoder end to end on the bundled JapaneseVowels, through the real stages: trained on
one speaker alone, every other speaker an anomaly; AUC at every level down to TensorFlow Lite
Micro; a bundle whose header carries the validation threshold; production re-scored the
autoencoder's way."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_workspace, run_cmd

pytestmark = pytest.mark.slow  # trains or exports models: the fast tier stays under 3 minutes

LEVELS = (
    "framework_fp32",
    "tflite_fp32",
    "tflite_float16",
    "tflite_dynamic_int8",
    "tflite_int8",
    "tflm_int8",
)


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = make_workspace(
        tmp_path_factory.mktemp("autoencoder"),
        train_overrides={"epochs": 60, "patience": 10, "batch_size": 32},
        model_overrides={"arch": "autoencoder", "channels": [32, 8]},
        devices=("raspberry_pi_pico",),
        sections={
            "prepare": {"source": "japanesevowels", "sequence_length": 29},
            "export": {"calibration_samples": 256},
        },
    )
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["devices"]["raspberry_pi_pico"]["min_accuracy"] = 0.8  # a detector, not a classifier
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("prepare", "train", "export", "evaluate"):
        run_cmd(["tinyops", "stage", stage], ws)
    run_cmd(["tinyops", "stage", "deploy", "--device", "raspberry_pi_pico"], ws)
    return ws


def test_auc_at_every_level_and_int8_keeps_it(ae_run: Path) -> None:
    m = json.loads((ae_run / "metrics/evaluate.json").read_text())
    aucs = {lvl: m[f"{lvl}_auc"] for lvl in LEVELS}
    assert aucs["framework_fp32"] > 0.85, aucs  # speaker 1 against the other eight
    assert all(abs(a - aucs["framework_fp32"]) <= 0.02 for a in aucs.values()), aucs
    assert all(m[f"{lvl}_threshold"] > 0 for lvl in LEVELS), m
    assert m["tflm_samples"] == m["test_samples"]
    variants = json.loads((ae_run / "metrics/variants.json").read_text())
    int8 = variants["int8"]
    assert int8["task"] == {
        "kind": "reconstruction",
        "normal_class": 0,
        "threshold": m["tflm_int8_threshold"],
    }
    assert int8["tflm_auc"] == aucs["tflm_int8"] and "FULLY_CONNECTED" in int8["ops"]


def test_it_learns_the_normal_class_alone(ae_run: Path) -> None:
    from pipeline.data.prepare import load_processed

    y = load_processed(ae_run / "data/processed").y["train"]
    summary = json.loads((ae_run / "metrics/train.json").read_text())
    assert summary["training_samples"] == int((y == 0).sum()) < len(y) / 4, summary
    assert summary["val_accuracy"] > 0.5  # the share of normal windows rebuilt well


def test_the_bundle_carries_the_threshold_and_says_how_to_score(ae_run: Path) -> None:
    pico = ae_run / "deploy/raspberry_pi_pico"
    assert (pico / "manifest.json").is_file(), (pico / "rejected.json").read_text()
    manifest = json.loads((pico / "manifest.json").read_text())
    threshold = manifest["task"]["threshold"]
    assert manifest["labels"] == ["normal (1)", "anomaly"]
    header = (pico / "tinyops_model.h").read_text()
    assert f"constexpr float kAnomalyThreshold = {threshold!r}f;" in header
    assert "score > kAnomalyThreshold is an anomaly" in (pico / "README.md").read_text()
    firmware = manifest.get("firmware") or {}
    if os.environ.get("TINYOPS_REQUIRE_FIRMWARE") == "1":  # CI: the QEMU build must have run
        assert firmware.get("measured"), firmware
    if firmware.get("measured"):  # a bundle exists only when every check passed
        check = next(c for c in manifest["checks"] if c["name"] == "firmware")
        assert check["passed"] and "byte-identical" in check["reason"], check
    else:
        assert firmware.get("skipped"), firmware


def test_production_is_rescored_with_its_own_threshold(ae_run: Path) -> None:
    """Deploying again faces the production autoencoder: re-scored on the test split with the
    threshold its manifest carries, it scores what it was registered with."""
    run_cmd(["tinyops", "stage", "deploy", "--device", "raspberry_pi_pico"], ae_run)
    status = json.loads((ae_run / "metrics/deploy/raspberry_pi_pico.json").read_text())
    assert status["champion_accuracy"] == status["accuracy"], status
    run_cmd(["tinyops", "stage", "report"], ae_run)
    report = (ae_run / "report/deploy.md").read_text()
    assert "Test-split anomaly AUC per level:" in report
