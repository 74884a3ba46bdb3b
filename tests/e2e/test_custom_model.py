"""Your own model end to end (issue 29): a factory in user_models/, in torch and in Keras,
through `tinyops run` to a verified MCU bundle whose firmware ran under QEMU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.deploy.bundle import verify_bundle
from pipeline.tflite.flatbuffer import check_full_int8
from tests.conftest import FAST_TRAIN, make_workspace, run_cmd, workspace_env
from tests.e2e.conftest import CUSTOM_MODULES, CUSTOM_TRAIN, custom_run

pytestmark = pytest.mark.slow  # trains, exports and builds firmware


@pytest.fixture(scope="module", params=sorted(CUSTOM_MODULES))
def custom_ws(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The torch model's own run; the Keras model's is the session's Keras run (one run fewer
    in CI), which test_keras.py reads too."""
    if request.param == "keras":
        return request.getfixturevalue("keras_run")
    dest = tmp_path_factory.mktemp("custom-torch")
    return custom_run(dest, "torch", ("raspberry_pi_pico",), CUSTOM_TRAIN)


def _devices(ws: Path) -> list[str]:
    return sorted(yaml.safe_load((ws / "params.yaml").read_text())["devices"])


def test_a_custom_model_ends_in_a_verified_mcu_bundle_with_its_firmware_run(
    custom_ws: Path,
) -> None:
    folder = custom_ws / "deploy/raspberry_pi_pico"
    assert (folder / "manifest.json").is_file(), (custom_ws / "run.log").read_text()[-3000:]
    manifest = verify_bundle(folder).dump()
    check_full_int8((folder / "model.tflite").read_bytes())
    checks = {c["name"]: c for c in manifest["checks"]}
    assert checks["firmware"]["passed"] and "byte-identical" in checks["firmware"]["reason"]
    assert checks["flash"]["reason"].startswith("measured"), checks["flash"]
    ops = json.loads((custom_ws / "metrics/variants.json").read_text())["int8"]["ops"]
    assert "DEPTHWISE_CONV_2D" in ops, ops  # the factory's network, not a bundled family


def test_the_run_is_named_after_the_module_and_counts_its_parameters(custom_ws: Path) -> None:
    from mlflow.tracking import MlflowClient

    summary = json.loads((custom_ws / "metrics/train.json").read_text())
    framework = summary["framework"]
    name = CUSTOM_MODULES[framework].split(":")[0].split(".")[-1]
    client = MlflowClient(tracking_uri=workspace_env(custom_ws)["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("tinyops").experiment_id])
    (parent,) = [r for r in runs if "tinyops.params_sha256" in r.data.tags]
    assert parent.info.run_name.startswith(f"digits-{name}-{framework}-ddp2 · ")
    assert parent.data.metrics["preflight_devices_fit"] == len(_devices(custom_ws))
    assert summary["parameters"] == 4_106, summary  # widths 16-32-64, 10 classes: both twins


def test_preflight_arena_is_the_trained_models_tflite_micro_arena(custom_ws: Path) -> None:
    """Sizes do not depend on weights: the untrained graph's arena is the trained one's with
    litert-torch. With TFLiteConverter it came out one 16-byte step smaller (reported in the
    issue's note, not hidden: the bench's target is about the bundled torch families)."""
    preflight = json.loads((custom_ws / "metrics/preflight.json").read_text())
    evaluated = json.loads((custom_ws / "metrics/evaluate.json").read_text())
    predicted, trained = preflight["graph"]["arena_bytes"], evaluated["tflm_arena_bytes"]
    if preflight["framework"] == "torch":
        assert predicted == trained, preflight["graph"]
    else:  # measured: TFLiteConverter's untrained graph needed 5,040 B, the trained one 5,056 B
        assert abs(predicted - trained) <= 16, (predicted, trained)  # one arena_granularity step
    assert sorted(preflight["fits"]) == _devices(custom_ws)


MCUS = ("arduino_nano_33_ble_sense", "raspberry_pi_pico", "esp32_s3", "stm32f746")


def test_a_gelu_model_is_refused_before_training_naming_layer_op_and_remedy(
    tmp_path: Path,
) -> None:
    ws = make_workspace(
        tmp_path / "ws",
        FAST_TRAIN,
        {"arch": "custom", "module": "user_models.gelu_transformer:build"},
        devices=MCUS,
        sections={"prepare": {"source": "basicmotions"}},
        preflight=True,
    )
    refused = run_cmd(["tinyops", "run"], ws, check=False)
    message = " ".join(refused.stderr.split())
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    for phrase in (
        "preflight: no device in params.yaml can take model user_models.gelu_transformer:build",
        "GELU (layer ffn.1): TensorFlow Lite Micro has no GELU kernel; use ReLU",
        "layer norm (MEAN,",
        "nn.LayerNorm stays a float island",
        "--ignore-preflight",
    ):
        assert phrase in message, f"{phrase!r} not in {message[-3000:]}"
    assert not (ws / "data/processed").exists() and not (ws / "models").exists(), "no stage ran"
    report = json.loads((ws / "metrics/preflight.json").read_text())
    assert report["fits"] == [] and set(report["devices"]) == set(MCUS)
    again = run_cmd(["tinyops", "preflight"], ws, check=False)
    assert again.returncode == 2 and "(cached)" in again.stdout, again.stdout[-2000:]
    warned = run_cmd(["tinyops", "preflight", "--warn-only"], ws, check=False)  # --ignore-preflight
    assert warned.returncode == 0, warned.stdout[-2000:] + warned.stderr[-2000:]
    assert warned.stderr.startswith("warning: preflight: no device in params.yaml can take")
    assert "Going on anyway (--ignore-preflight)." in warned.stderr
