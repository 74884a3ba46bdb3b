"""Runs shared by more than one e2e module: each full `tinyops run` costs a minute of CI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import make_workspace, run_cmd

# A model of the project's own (user_models/), in each framework.
CUSTOM_MODULES = {
    "torch": "user_models.mobilenet_tiny:build",
    "keras": "user_models.keras_mobilenet_tiny:build",
}
# An MCU, whose bundle the firmware check runs under QEMU, and a LiteRT device.
KERAS_DEVICES = ("raspberry_pi_pico", "raspberry_pi_4")
CUSTOM_TRAIN = {"epochs": 6, "patience": 4}  # 0.92 validation accuracy, both twins


def custom_run(dest: Path, framework: str, devices: tuple[str, ...], train: dict) -> Path:
    """`tinyops run` with the project's own model of `framework`, preflight on; the devices'
    min_accuracy is lowered to 0.85: these runs prove the path, not the accuracy."""
    model = {"arch": "custom", "framework": framework, "module": CUSTOM_MODULES[framework]}
    ws = make_workspace(dest, train, model, devices=devices, preflight=True)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    for profile in params["devices"].values():
        profile["min_accuracy"] = 0.85
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run_cmd(["tinyops", "run"], ws)
    (ws / "run.log").write_text(proc.stdout + proc.stderr)
    return ws


@pytest.fixture(scope="session")
def keras_run(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Path:
    """The Keras path end to end, on the project's own Keras model: test_keras.py reads it for
    the framework (2 workers, kill and resume, converter bytes), test_custom_model.py for the
    custom model. The bundled Keras families are checked layer for layer against torch in
    tests/export/test_keras_families.py."""
    return custom_run(tmp_path_factory.mktemp("keras"), "keras", KERAS_DEVICES, CUSTOM_TRAIN)
