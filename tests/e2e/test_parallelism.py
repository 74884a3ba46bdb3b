"""Model parallelism end to end: `tinyops run` with train.parallelism pipeline gives the same
kind of bundles as data parallelism, and a pipeline worker killed mid-epoch resumes from the
last sharded checkpoint to the uninterrupted run's exact bytes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import make_workspace, run_cmd, tree_digest, workspace_env

pytestmark = pytest.mark.slow
TINYOPS = str(Path(sys.executable).parent / "tinyops")
PIPELINE = {"parallelism": "pipeline", "schedule": "1f1b", "microbatches": 4, "epochs": 6}


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Path:
    ws = make_workspace(tmp_path_factory.mktemp("pp"), PIPELINE)
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


def test_a_killed_pipeline_worker_resumes_to_the_same_bytes(
    pipeline_run: Path, tmp_path: Path
) -> None:
    """SIGKILL the second stage's worker once epoch 2 is reported (while it checkpoints, or in
    epoch 3): torchrun restarts both workers, they load their shards of the last complete
    epoch's checkpoint (a half-written one is never used) and end with the uninterrupted run's
    bytes, checkpoints included."""
    ws = make_workspace(tmp_path / "ws", PIPELINE)
    shutil.copytree(pipeline_run / "data/processed", ws / "data/processed")
    proc = subprocess.Popen(
        [TINYOPS, "stage", "train"], cwd=ws, env=workspace_env(ws), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    watchdog = threading.Timer(480, os.killpg, (proc.pid, signal.SIGKILL))  # never hang CI
    watchdog.start()
    lines, killed = [], False
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if not killed and "epoch   2/6" in line:
                workers = psutil.Process(proc.pid).children(recursive=True)
                victim = next(
                    w for w in workers
                    if "pipeline.training.worker" in " ".join(w.cmdline())
                    and w.environ().get("RANK") == "1"
                )  # fmt: skip
                victim.kill()
                killed = True
    finally:
        watchdog.cancel()
    out = "".join(lines)
    assert proc.wait(timeout=600) == 0, out[-4000:]
    assert killed, out[-2000:]
    resumed = re.search(r"resuming from checkpoint epoch (\d+) \(restart \d+\)", out)
    assert resumed and int(resumed.group(1)) >= 1, out[-4000:]
    assert out.count("epoch   1/6") == 1, "epochs before the checkpoint are not trained again"
    assert (ws / "models/model.pt").read_bytes() == (pipeline_run / "models/model.pt").read_bytes()
    kept = sorted((pipeline_run / "models/checkpoints").glob("epoch-*"))
    assert kept and all(k.is_dir() for k in kept)
    for folder in kept:  # DVC outputs: the shards and metadata come out byte for byte the same
        assert tree_digest(ws / "models/checkpoints" / folder.name) == tree_digest(folder)
