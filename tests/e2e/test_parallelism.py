"""Model parallelism end to end: `tinyops run` with train.parallelism pipeline gives the same
kind of bundles as data parallelism, and a pipeline worker killed mid-epoch resumes from the
last sharded checkpoint to the uninterrupted run's exact bytes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    TWO_DEVICES,
    make_workspace,
    run_cmd,
    train_killing_a_worker,
    tree_digest,
    workspace_env,
)

pytestmark = pytest.mark.slow
PIPELINE = {"parallelism": "pipeline", "schedule": "1f1b", "microbatches": 4, "epochs": 4}


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Path:
    ws = make_workspace(  # proves the training path: the firmware check has its own tests
        tmp_path_factory.mktemp("pp"),
        PIPELINE,
        devices=TWO_DEVICES,
        sections={"firmware": {"enabled": False}},
    )
    proc = run_cmd(["tinyops", "run"], ws)
    (ws / "run.log").write_text(proc.stdout + proc.stderr)
    return ws


def test_tinyops_run_with_pipeline_parallelism_ends_in_bundles(pipeline_run: Path) -> None:
    summary = json.loads((pipeline_run / "metrics/train.json").read_text())
    assert summary["parallelism"] == "pipeline" and summary["mesh_pp"] == 2
    assert summary["strategy"] == "pipeline pp2 1f1b m4 (2 stages)"
    evaluation = json.loads((pipeline_run / "metrics/evaluate.json").read_text())
    assert evaluation["tflm_int8_accuracy"] > 0.9
    devices = yaml.safe_load((pipeline_run / "params.yaml").read_text())["devices"]
    for device in devices:
        folder = pipeline_run / "deploy" / device
        assert (folder / "manifest.json").is_file() or (folder / "rejected.json").is_file()
    assert (pipeline_run / "deploy/stm32f746/tinyops_model.cc").is_file()
    assert "pipeline pp2 1f1b m4" in (pipeline_run / "run.log").read_text()
    report = (pipeline_run / "report/deploy.md").read_text()
    assert "Trained with pipeline pp2 1f1b m4 (2 stages) on 2 worker(s)" in report
    assert "0.29 / 1.15 MiB (the whole model's: 1.44 MiB)" in report  # each holds its stage


def test_mlflow_records_the_strategy(pipeline_run: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=workspace_env(pipeline_run)["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("tinyops")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if "tinyops.params_sha256" in r.data.tags]
    assert parent.info.run_name.startswith("digits-cnn2d-torch-pp2 · ")
    (train,) = [r for r in runs if r.data.tags.get("tinyops.stage") == "train"]
    assert train.data.params["train.parallelism"] == "pipeline"
    assert train.data.params["train.schedule"] == "1f1b"
    assert train.data.tags["parallelism"] == "pipeline pp2 1f1b m4 (2 stages)"
    metrics = train.data.metrics
    assert metrics["mesh_pp"] == 2 and metrics["microbatches"] == 4
    assert metrics["model_state_bytes_rank0"] + metrics["model_state_bytes_rank1"] == 94_186 * 16
    assert metrics["peak_rss_mib_rank0"] > 0 and metrics["samples_per_second"] > 0


def test_a_killed_pipeline_worker_resumes_to_the_same_bytes(
    pipeline_run: Path, tmp_path: Path
) -> None:
    """SIGKILL the second stage's worker once epoch 2 is reported (while it checkpoints, or in
    epoch 3): torchrun restarts both workers, they load their shards of the last complete
    epoch's checkpoint (a half-written one is never used) and end with the uninterrupted run's
    bytes, checkpoints included."""
    ws = make_workspace(tmp_path / "ws", PIPELINE)
    shutil.copytree(pipeline_run / "data/processed", ws / "data/processed")
    code, out, killed = train_killing_a_worker(ws, "epoch   2/4")
    assert code == 0, out[-4000:]
    assert killed, out[-2000:]
    resumed = re.search(r"resuming from checkpoint epoch (\d+) \(restart \d+\)", out)
    assert resumed and int(resumed.group(1)) >= 1, out[-4000:]
    assert out.count("epoch   1/4") == 1, "epochs before the checkpoint are not trained again"
    model = "models/trained/model.pt"
    assert (ws / model).read_bytes() == (pipeline_run / model).read_bytes()
    kept = sorted((pipeline_run / "models/checkpoints").glob("epoch-*"))
    assert kept and all(k.is_dir() for k in kept)
    for folder in kept:  # DVC outputs: the shards and metadata come out byte for byte the same
        assert tree_digest(ws / "models/checkpoints" / folder.name) == tree_digest(folder)


def test_an_fsdp_checkpoint_resumes_at_another_world(pipeline_run: Path, tmp_path: Path) -> None:
    """FSDP on 2 workers, a worker SIGKILLed after epoch 2 with no restart left: the job fails.
    The same run on 1 worker resumes it: the run key leaves the world out for a checkpoint that
    reshards, and DCP loads the 2 shards of the model and optimizer into the one worker."""
    train = {"parallelism": "fsdp", "epochs": 4, "patience": 4, "max_restarts": 0}
    ws = make_workspace(tmp_path / "ws", train)
    shutil.copytree(pipeline_run / "data/processed", ws / "data/processed")
    code, out, killed = train_killing_a_worker(ws, "epoch   2/4")
    assert code != 0 and killed, out[-3000:]
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train"]["nproc_per_node"] = 1
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run_cmd(["tinyops", "stage", "train"], ws)
    out = proc.stdout + proc.stderr
    resumed = re.search(r"resuming from checkpoint epoch (\d+)", out)
    assert resumed and "world re-formed: 2 → 1 workers" in out, out[-3000:]
    epoch = int(resumed.group(1))
    summary = json.loads((ws / "metrics/train.json").read_text())
    assert summary["world_history"] == [
        {"from_epoch": 1, "world_size": 2},
        {"from_epoch": epoch + 1, "world_size": 1},
    ]
    assert summary["epochs_run"] == 4 and out.count("epoch   1/4") == 0
