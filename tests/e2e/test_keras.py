"""The second framework end to end: `tinyops run` with model.framework keras trains with
MultiWorkerMirroredStrategy on 2 worker processes, exports with TFLiteConverter and goes through
the same evaluate, deploy (with the firmware check) and report stages; a Keras worker killed
after epoch 2 makes the group restart and resume from the last checkpoint, to the uninterrupted
run's exact bytes; exporting the same model again gives the same .tflite bytes.

The run (tests/e2e/conftest.py) trains the project's own Keras model, so it serves
test_custom_model.py too; the bundled Keras families are compared with torch's layer for layer
in tests/export/test_keras_families.py."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cmd, train_killing_a_worker, tree_digest
from tests.e2e.conftest import CUSTOM_TRAIN, KERAS_DEVICES

pytestmark = pytest.mark.slow


def test_both_workers_trained_on_half_of_each_batch(keras_run: Path) -> None:
    summary = json.loads((keras_run / "metrics/train.json").read_text())
    assert summary["framework"] == "keras" and summary["world_size"] == 2
    assert summary["strategy"] == "keras MultiWorkerMirroredStrategy 2×1"
    assert summary["replica_batch"] == 32
    steps = summary["epochs_run"] * (1257 // 64)  # the digits' training split, whole batches
    assert summary["samples_rank0"] == summary["samples_rank1"] == steps * 32
    assert summary["parameters"] == 4_106  # user_models/keras_mobilenet_tiny.py's
    assert "MultiWorkerMirroredStrategy over 2 worker(s)" in (keras_run / "run.log").read_text()


def test_keras_runs_end_to_end_with_int8_within_a_point_at_every_level(keras_run: Path) -> None:
    m = json.loads((keras_run / "metrics/evaluate.json").read_text())
    assert m["framework"] == "keras"
    assert m["framework_fp32_accuracy"] >= 0.85  # the devices' min_accuracy in this run
    for level in ("tflite_fp32", "tflite_int8", "tflm_int8"):
        assert abs(m[f"{level}_accuracy"] - m["framework_fp32_accuracy"]) <= 0.01, level
    assert m["framework_tflite_fp32_max_logit_diff"] <= 1e-4
    assert m["tflm_arena_bytes"] > 0
    ops = json.loads((keras_run / "metrics/variants.json").read_text())["int8"]["ops"]
    assert "SHAPE" not in ops and "DEQUANTIZE" not in ops, ops
    devices = yaml.safe_load((keras_run / "params.yaml").read_text())["devices"]
    assert sorted(devices) == sorted(KERAS_DEVICES)
    for device in devices:  # both fit and pass min_accuracy: a verified bundle each
        assert (keras_run / "deploy" / device / "manifest.json").is_file(), device
    assert (keras_run / "deploy/raspberry_pi_pico/tinyops_model.cc").is_file()
    report = (keras_run / "report/deploy.md").read_text()
    assert "keras_fp32 " in report and "Trained with keras MultiWorkerMirroredStrategy" in report
    assert sorted(p.name for p in (keras_run / "models/trained").iterdir()) == [
        "model.json",
        "model.weights.npz",
    ]


def test_a_killed_keras_worker_resumes_from_the_last_epoch_to_the_same_bytes(
    keras_run: Path,
) -> None:
    """The run above finished, so `tinyops stage train` trains afresh; worker 1 is SIGKILLed
    once epoch 2 is reported. The group restarts, resumes at epoch 3, and ends with the same
    model and checkpoint bytes as the uninterrupted run (what the README claims)."""
    before = {name: tree_digest(keras_run / "models" / name) for name in ("trained", "checkpoints")}
    shutil.rmtree(keras_run / "models/trained")
    code, out, killed = train_killing_a_worker(keras_run, f"epoch   2/{CUSTOM_TRAIN['epochs']}")
    assert killed, out[-2000:]
    assert code == 0, out[-3000:]
    assert re.search(r"keras worker 1 exited with status -9; restarting all workers", out), out
    assert "resuming from checkpoint epoch 2" in out, out[-3000:]
    assert "continuing at epoch 3" in out
    after = {name: tree_digest(keras_run / "models" / name) for name in ("trained", "checkpoints")}
    assert after == before


def test_the_converter_gives_the_same_tflite_bytes_for_the_same_model(keras_run: Path) -> None:
    exports = tree_digest(keras_run / "exports")
    run_cmd(["tinyops", "stage", "export"], keras_run)
    assert tree_digest(keras_run / "exports") == exports
