"""Crashes and interruptions: a killed DDP worker, SIGTERM during export and deploy, truncated
checkpoints, tampered bundles. Each must end with a clear outcome and every good output intact."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from pipeline.core.procs import wait_until
from tests.conftest import (
    FAST_TRAIN,
    make_workspace,
    run_cmd,
    train_killing_a_worker,
    tree_digest,
    workspace_env,
)

TINYOPS = str(Path(sys.executable).parent / "tinyops")


def test_a_truncated_checkpoint_is_skipped_for_the_one_before(tmp_path: Path) -> None:
    from pipeline.training.checkpoint import RUN_FILE, latest_checkpoint

    (tmp_path / RUN_FILE).write_text(json.dumps({"key": "k1", "complete": False}))
    for epoch in (4, 5):
        torch.save({"epoch": epoch, "key": "k1"}, tmp_path / f"epoch-{epoch:04d}.pt")
    good = (tmp_path / "epoch-0005.pt").read_bytes()
    (tmp_path / "epoch-0005.pt").write_bytes(good[: len(good) // 2])
    said: list[str] = []
    assert latest_checkpoint(tmp_path, "k1", said.append)["epoch"] == 4
    assert "epoch-0005.pt is unreadable" in said[0]
    assert latest_checkpoint(tmp_path, "other-params", said.append) is None
    (tmp_path / RUN_FILE).write_text(json.dumps({"key": "k1", "complete": True}))
    assert latest_checkpoint(tmp_path, "k1", said.append) is None, "a finished run starts afresh"


@pytest.mark.slow
def test_a_killed_worker_restarts_and_training_resumes_to_the_same_model(
    first_run: Path, tmp_path: Path
) -> None:
    """SIGKILL rank 1 in the middle of epoch 4: torchrun restarts the job, which resumes from the
    last checkpoint and, being deterministic, ends with the uninterrupted run's exact bytes."""
    ws = make_workspace(tmp_path / "ws", FAST_TRAIN)
    shutil.copytree(first_run / "data/processed", ws / "data/processed")
    code, out, killed = train_killing_a_worker(ws, "epoch   3/12")  # epoch 4 starts now
    assert code == 0, out[-4000:]
    assert killed, out[-2000:]
    resumed = re.search(r"resuming from checkpoint epoch (\d+) \(restart \d+\)", out)
    assert resumed and int(resumed.group(1)) >= 2, out[-4000:]
    assert out.count("epoch   1/12") == 1, "epochs before the checkpoint are not trained again"
    model = "models/trained/model.pt"
    assert (ws / model).read_bytes() == (first_run / model).read_bytes()
    kept = sorted((first_run / "models/checkpoints").glob("epoch-*.pt"))
    assert kept, "the uninterrupted run kept its last checkpoints"
    for ckpt in kept:  # DVC outputs too: no wall time or other run-to-run state inside
        assert (ws / "models/checkpoints" / ckpt.name).read_bytes() == ckpt.read_bytes(), ckpt.name
    summary = json.loads((ws / "metrics/train.json").read_text())
    first = json.loads((first_run / "metrics/train.json").read_text())
    assert summary == first


def _mlflow_run(ws: Path, stage: str):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=workspace_env(ws)["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("tinyops")
    if exp is None:
        return client, None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`tinyops.stage` = '{stage}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return client, (runs[0] if runs else None)


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process and all its descendants so far."""

    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
    return total


def _terminate_once_running(args: list[str], ws: Path, stage: str, after: float) -> str:
    """Start a command, wait until its MLflow stage run exists, then SIGTERM it once it has spent
    `after` more CPU-seconds."""
    _, before = _mlflow_run(ws, stage)
    proc = subprocess.Popen(
        args,
        cwd=ws,
        env=workspace_env(ws),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def started() -> bool:
        assert proc.poll() is None, proc.communicate()[0]
        _, run = _mlflow_run(ws, stage)
        return run is not None and (before is None or run.info.run_id != before.info.run_id)

    wait_until(started, 120, f"the {stage} stage's MLflow run", 0.2)
    # Into the stage's work by CPU spent, not wall time, so a slow machine changes nothing.
    spent = _cpu_seconds(proc.pid)

    def busy() -> bool:
        assert proc.poll() is None, "finished before the signal: the test proves nothing"
        return _cpu_seconds(proc.pid) >= spent + after

    wait_until(busy, 600, f"{after} s of CPU in the {stage} stage")
    assert proc.poll() is None, "finished before the signal: the test proves nothing"
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out[-3000:]
    assert "terminated (signal 15); earlier outputs are unchanged" in out
    _, run = _mlflow_run(ws, stage)
    assert run.info.status == "KILLED", "the MLflow run is not left RUNNING"
    return out


@pytest.fixture()
def deployed_ws(first_run: Path, tmp_path: Path) -> Path:
    """A workspace holding the first run's outputs and esp32_s3's production bundle v1."""
    ws = make_workspace(tmp_path / "ws", FAST_TRAIN)
    for name in ("data/processed", "models", "exports", "metrics"):
        shutil.copytree(first_run / name, ws / name)
    run_cmd(["tinyops", "stage", "deploy", "--device", "esp32_s3"], ws)
    return ws


@pytest.mark.slow
def test_sigterm_during_export_and_deploy_changes_nothing_and_the_next_run_succeeds(
    deployed_ws: Path,
) -> None:
    ws = deployed_ws
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["export"]["calibration_samples"] = 256  # the new int8 model would differ
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    exports = tree_digest(ws / "exports")
    _terminate_once_running([TINYOPS, "stage", "export"], ws, "export", after=3.0)
    assert tree_digest(ws / "exports") == exports, "no export replaced, none half-written"
    run_cmd(["tinyops", "stage", "export"], ws)
    assert tree_digest(ws / "exports") != exports

    # A LiteRT device, timed with many invokes so that the signal lands mid-deploy.
    device = "raspberry_pi_4"
    deploy = [TINYOPS, "stage", "deploy", "--device", device]
    run_cmd(deploy, ws)  # v1 in production
    client, _ = _mlflow_run(ws, f"deploy@{device}")
    alias = client.get_model_version_by_alias(f"tinyops-{device}", "production").version
    bundle = tree_digest(ws / "deploy" / device)
    params["deploy"]["latency_runs"] = 200_000
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _terminate_once_running(deploy, ws, f"deploy@{device}", after=1.0)
    assert tree_digest(ws / "deploy" / device) == bundle
    assert client.get_model_version_by_alias(f"tinyops-{device}", "production").version == alias
    assert not [p for p in (ws / "deploy").iterdir() if p.name.startswith(".")], "no temp left"
    params["deploy"]["latency_runs"] = 50
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "promoted" in run_cmd(deploy, ws).stdout


@pytest.mark.slow
def test_a_tampered_bundle_is_refused_by_promotion_and_rollback(deployed_ws: Path) -> None:
    ws = deployed_ws
    client, _ = _mlflow_run(ws, "deploy")
    run_cmd(["tinyops", "stage", "deploy", "--device", "esp32_s3"], ws)  # v2, promoted
    name = "tinyops-esp32_s3"
    assert client.get_model_version_by_alias(name, "production").version == 2
    v1 = client.get_model_version(name, "1")
    stored = Path(client.get_run(v1.run_id).info.artifact_uri.removeprefix("file://")) / "bundle"
    bundle = tree_digest(ws / "deploy/esp32_s3")
    for victim in ("model.tflite", "tinyops_model.cc"):
        original = (stored / victim).read_bytes()
        (stored / victim).write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit
        for args in (["rollback", "esp32_s3"], ["promote", "esp32_s3", "1"]):
            proc = run_cmd(["tinyops", *args], ws, check=False)
            assert proc.returncode == 9, proc.stdout + proc.stderr
            assert "does not match the sha256" in proc.stderr or "is not the one registered" in (
                proc.stderr
            ), proc.stderr
            assert "Refusing" in proc.stderr or "refusing" in proc.stderr
            assert client.get_model_version_by_alias(name, "production").version == 2
            assert tree_digest(ws / "deploy/esp32_s3") == bundle
        (stored / victim).write_bytes(original)
    assert "production v2 → v1" in run_cmd(["tinyops", "rollback", "esp32_s3"], ws).stdout
    assert "production v1 → v2" in run_cmd(["tinyops", "promote", "esp32_s3", "2"], ws).stdout
    assert tree_digest(ws / "deploy/esp32_s3") == bundle
    assert os.listdir(ws / "deploy") == ["esp32_s3"]


def _fresh(tmp_path: Path) -> Path:
    return make_workspace(tmp_path / "ws")


def test_run_stops_in_seconds_when_the_mlflow_store_is_unusable(tmp_path: Path) -> None:
    ws = _fresh(tmp_path)
    env = workspace_env(ws) | {"MLFLOW_TRACKING_URI": "sqlite:////proc/no-such-dir/mlflow.db"}
    started = time.monotonic()
    proc = subprocess.run([TINYOPS, "run"], cwd=ws, env=env, capture_output=True, text=True)
    assert proc.returncode == 8, proc.stderr
    assert "MLflow store sqlite:////proc/no-such-dir/mlflow.db is not reachable" in proc.stderr
    assert "Check MLFLOW_TRACKING_URI" in proc.stderr
    assert "Starting temporary server" not in proc.stdout + proc.stderr, "before Prefect starts"
    assert not (ws / "data/processed").exists()
    assert time.monotonic() - started < 60


def test_run_refuses_more_threads_than_cores_before_any_stage(tmp_path: Path) -> None:
    ws = _fresh(tmp_path)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train"] |= {"nproc_per_node": (os.cpu_count() or 1) + 1, "threads_per_proc": 1}
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    store = tree_digest(ws / "mlflow")  # the workspace's empty, migrated MLflow store
    proc = run_cmd(["tinyops", "run"], ws, check=False)
    assert proc.returncode == 2 and "oversubscribing only slows training" in proc.stderr
    assert not (ws / "data/processed").exists() and tree_digest(ws / "mlflow") == store


def test_run_refuses_to_start_on_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk cannot be made in a second on any machine; disk_usage is the one stand-in."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    ws = _fresh(tmp_path)
    monkeypatch.chdir(ws)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=100 * 2**20))
    result = CliRunner().invoke(app, ["run"])
    assert result.exit_code == 8, result.stderr
    assert "only 100 MiB free" in result.stderr and "dvc gc" in result.stderr
    assert not (ws / "data/processed").exists()


def test_secrets_in_the_environment_are_never_logged_to_mlflow(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    ws = _fresh(tmp_path)
    secret = "sekrit-7f3a9c"
    env = workspace_env(ws) | {
        "AWS_SECRET_ACCESS_KEY": secret,
        "HF_TOKEN": secret,
        "DATABASE_URL": f"postgresql://admin:{secret}@db.internal/prod",
    }
    proc = subprocess.run(
        [TINYOPS, "stage", "prepare"], cwd=ws, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("tinyops").experiment_id])
    assert runs
    for run in runs:
        logged = {**run.data.params, **run.data.tags}
        assert not [k for k, v in logged.items() if secret in v], logged
