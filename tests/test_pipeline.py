"""End to end on the default data: `tinyops run` → dvc repro → torchrun DDP → litert-torch →
LiteRT and TFLite Micro. The tests that rerun stages come last: they change the workspace."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import run_cmd, tree_digest, workspace_env

pytestmark = pytest.mark.slow

OUTPUTS = (
    "data/processed",
    "models/model.pt",
    "exports/model_fp32.tflite",
    "exports/model_int8.tflite",
)


def _metrics(ws: Path) -> dict:
    return json.loads((ws / "metrics/evaluate.json").read_text())


def _digests(ws: Path) -> dict[str, object]:
    """sha256 of every pipeline output (folders file by file)."""
    return {
        name: tree_digest(ws / name)
        if (ws / name).is_dir()
        else hashlib.sha256((ws / name).read_bytes()).hexdigest()
        for name in OUTPUTS
    }


def _mlflow(ws: Path):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=workspace_env(ws)["MLFLOW_TRACKING_URI"])


def test_default_run_meets_accuracy_and_size_targets(pipeline_ws: Path) -> None:
    m = _metrics(pipeline_ws)
    assert m["torch_fp32_accuracy"] >= 0.95
    for level in ("tflite_fp32_accuracy", "tflite_int8_accuracy", "tflm_int8_accuracy"):
        assert abs(m[level] - m["torch_fp32_accuracy"]) <= 0.01, level
    assert m["tflite_int8_bytes"] <= 0.30 * m["tflite_fp32_bytes"]
    assert 0 < m["tflm_arena_bytes"] < m["tflm_fp32_arena_bytes"]
    assert m["torch_tflite_fp32_max_logit_diff"] <= 1e-4
    assert m["tflm_samples"] == m["test_samples"] > 0


def test_training_ran_ddp_on_two_workers_and_rank0_wrote(pipeline_ws: Path) -> None:
    summary = json.loads((pipeline_ws / "metrics/train.json").read_text())
    assert summary["world_size"] == 2
    log = (pipeline_ws / "run.log").read_text()
    assert "train: 2 worker(s) × 1 thread(s), backend gloo" in log
    assert log.count("epoch   1/12") == 1, "only rank 0 prints"
    blob = torch.load(pipeline_ws / "models/model.pt", weights_only=True)
    assert blob["format"] == "tinyops.model/1" and blob["architecture"]["channels"] == [32, 64, 128]
    ckpts = sorted((pipeline_ws / "models/checkpoints").glob("epoch-*.pt"))
    assert len(ckpts) == 2 and ckpts[-1].name == f"epoch-{summary['epochs_run']:04d}.pt"
    history = (pipeline_ws / "metrics/train_history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_loss,val_loss,val_accuracy,lr"
    assert len(history) == summary["epochs_run"] + 1


def test_mlflow_holds_parent_with_stage_runs(pipeline_ws: Path) -> None:
    client = _mlflow(pipeline_ws)
    exp = client.get_experiment_by_name("tinyops")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mlflow.runName") == "pipeline"]
    assert len(parents) == 1
    parent = parents[0]
    children = {
        r.data.tags["tinyops.stage"]: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(children) == {"prepare", "train", "export", "evaluate"}
    meta = json.loads((pipeline_ws / "data/processed/meta.json").read_text())
    for run in [parent, *children.values()]:
        assert run.info.status == "FINISHED"
        assert run.data.tags["data_sha256"] == meta["data_sha256"]
        assert len(run.data.tags["git_commit"]) >= 7
    assert parent.data.metrics["tflm_int8_accuracy"] == _metrics(pipeline_ws)["tflm_int8_accuracy"]
    assert parent.data.params["train.epochs"] == "12"
    train_run = children["train"]
    assert train_run.data.params["model.channels"] == "[32, 64, 128]"
    curve = client.get_metric_history(train_run.info.run_id, "val_loss")
    assert [m.step for m in curve] == list(range(1, len(curve) + 1)), "one val_loss per epoch"
    assert {a.path for a in client.list_artifacts(children["export"].info.run_id, "tflite")} == {
        "tflite/model_fp32.tflite",
        "tflite/model_int8.tflite",
    }
    plots = {a.path for a in client.list_artifacts(children["evaluate"].info.run_id, "plots")}
    assert "plots/confusion_matrix.png" in plots
    assert (
        children["evaluate"].data.metrics["tflm_arena_bytes"]
        == _metrics(pipeline_ws)["tflm_arena_bytes"]
    )


def test_dvc_is_clean_and_a_rerun_does_nothing(pipeline_ws: Path) -> None:
    assert "up to date" in run_cmd(["dvc", "status"], pipeline_ws).stdout
    before = _digests(pipeline_ws)
    out = run_cmd(["dvc", "repro"], pipeline_ws).stdout
    assert "Running stage" not in out
    assert _digests(pipeline_ws) == before


def test_force_repro_reproduces_identical_bytes(pipeline_ws: Path) -> None:
    before = _digests(pipeline_ws)
    run_cmd(["dvc", "repro", "--force"], pipeline_ws)
    assert _digests(pipeline_ws) == before
    assert "up to date" in run_cmd(["dvc", "status"], pipeline_ws).stdout
    # A bare `dvc repro` still groups its stages under one parent run.
    client = _mlflow(pipeline_ws)
    runs = client.search_runs([client.get_experiment_by_name("tinyops").experiment_id])
    dvc_parents = [r for r in runs if r.data.tags.get("mlflow.runName") == "dvc repro"]
    assert len(dvc_parents) == 1
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == dvc_parents[0].info.run_id]
    assert sorted(r.data.tags["tinyops.stage"] for r in kids) == [
        "evaluate",
        "export",
        "prepare",
        "train",
    ]


def test_prefect_flow_runs_the_same_pipeline(pipeline_ws: Path, tmp_path: Path) -> None:
    """The flow calls the same pipeline: with nothing changed it completes without rerunning."""
    env = workspace_env(pipeline_ws) | {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "flows.retrain"],
        cwd=pipeline_ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "Flow run" in out and "Finished in state Completed()" in out
    assert "Running stage" not in out
    assert f"tflm_int8_accuracy={_metrics(pipeline_ws)['tflm_int8_accuracy']}" in out


def test_changing_epochs_reruns_train_and_after_but_not_prepare(pipeline_ws: Path) -> None:
    params_path = pipeline_ws / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["train"]["epochs"] = 10
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    processed = tree_digest(pipeline_ws / "data/processed")
    out = run_cmd(["dvc", "repro"], pipeline_ws).stdout
    assert "Stage 'prepare' didn't change, skipping" in out
    for stage in ("train", "export", "evaluate"):
        assert f"Running stage '{stage}'" in out
    assert tree_digest(pipeline_ws / "data/processed") == processed
    assert json.loads((pipeline_ws / "metrics/train.json").read_text())["epochs_run"] <= 10
