"""A .tflite trained elsewhere (model.arch tflite, issue 29 item 2) through `tinyops run`: the
session run's int8 model handed to a fresh workspace as a user's file goes through preflight,
evaluate, deploy with the firmware check, and the registry; the LiteRT device that would take
float variants says they were not exported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.deploy.bundle import verify_bundle
from tests.conftest import (
    IMPORT_LOG,
    REPO,
    import_recording,
    make_workspace,
    run_cmd,
    workspace_env,
)

pytestmark = pytest.mark.slow  # runs the pipeline and builds firmware

GIVEN = "user_models/digits_cnn.tflite"
DEVICES = ("raspberry_pi_pico", "raspberry_pi_4")


@pytest.fixture(scope="module")
def given_run(first_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = {"arch": "tflite", "path": GIVEN}
    ws = make_workspace(tmp_path_factory.mktemp("given"), None, model, DEVICES, preflight=True)
    (ws / GIVEN).write_bytes((first_run / "exports/model_int8.tflite").read_bytes())
    proc = run_cmd(["tinyops", "run"], ws, check=False, env=import_recording(ws / IMPORT_LOG))
    (ws / "run.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return ws


def test_the_given_model_ends_in_a_verified_mcu_bundle_with_its_firmware_run(
    given_run: Path,
) -> None:
    folder = given_run / "deploy/raspberry_pi_pico"
    manifest = verify_bundle(folder).dump()
    assert (folder / "model.tflite").read_bytes() == (given_run / GIVEN).read_bytes()
    checks = {c["name"]: c for c in manifest["checks"]}
    assert checks["firmware"]["passed"] and "byte-identical" in checks["firmware"]["reason"]
    assert checks["flash"]["reason"].startswith("measured"), checks["flash"]
    assert [p.name for p in (given_run / "exports").glob("*.tflite")] == ["model_int8.tflite"]


def test_it_scores_as_the_same_model_did_where_it_was_trained(
    given_run: Path, first_run: Path
) -> None:
    got = json.loads((given_run / "metrics/evaluate.json").read_text())
    there = json.loads((first_run / "metrics/evaluate.json").read_text())
    for key in ("tflite_int8_accuracy", "tflm_int8_accuracy", "tflm_arena_bytes"):
        assert got[key] == there[key], key
    assert got["framework"] == "tflite" and "framework_fp32_accuracy" not in got
    preflight = json.loads((given_run / "metrics/preflight.json").read_text())
    assert preflight["graph"]["arena_bytes"] == there["tflm_arena_bytes"]
    assert sorted(preflight["fits"]) == sorted(DEVICES)
    pico = json.loads((given_run / "deploy/raspberry_pi_pico/manifest.json").read_text())
    answer = preflight["devices"]["raspberry_pi_pico"]  # the very file: the very same firmware
    assert answer["sizes"].startswith("measured"), answer["sizes"]
    measured = pico["firmware"]["measured"]
    assert (answer["flash_bytes"], answer["ram_bytes"]) == (
        measured["flash_bytes"], measured["ram_bytes"],
    )  # fmt: skip


def test_a_litert_device_says_the_float_variants_were_not_exported(given_run: Path) -> None:
    status = json.loads((given_run / "metrics/deploy/raspberry_pi_4.json").read_text())
    assert status["status"] == "promoted" and status["variant"] == "int8", status
    missing = {c["variant"]: c for c in status["candidates"] if not c["fits"]}
    assert set(missing) == {"fp32", "float16", "dynamic_int8"}
    assert "was not exported" in missing["fp32"]["checks"][0]["reason"]


def test_the_run_is_named_after_the_file_and_records_no_training(given_run: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=workspace_env(given_run)["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("tinyops").experiment_id])
    (parent,) = [r for r in runs if "tinyops.params_sha256" in r.data.tags]
    assert parent.info.run_name.startswith("digits-digits_cnn-tflite · "), parent.info.run_name
    summary = json.loads((given_run / "metrics/train.json").read_text())
    assert summary["framework"] == "tflite" and summary["epochs_run"] == 0
    assert "adopted" in (given_run / "report/deploy.md").read_text()


def test_dvc_deps_cover_what_the_adopting_stages_load(given_run: Path) -> None:
    """The tflite path loads other modules (train: the flatbuffer audit and LiteRT) than the
    session run's: dvc.yaml's deps cover them too."""
    import yaml

    from tests.orchestration.test_dvc_deps import _records, loaded_by_stage, stage_deps, uncovered

    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    loaded = loaded_by_stage(_records(given_run / IMPORT_LOG), given_run)
    assert "pipeline/training/adopt.py" in loaded["train"], sorted(loaded["train"])
    missing = {t: uncovered(files, stage_deps(dvc_yaml, t)) for t, files in loaded.items()}
    assert not any(missing.values()), missing
