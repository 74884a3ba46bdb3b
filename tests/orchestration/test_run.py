"""One run path: `tinyops run` (the Prefect flow), the plain runner and a bare `dvc repro` leave
the MLflow parent run in the same state on success, on a failing stage and on SIGTERM.

Each case works on its own copy of the session's finished workspace and makes one stage stale:
success reruns `report`; failure points prepare at a corrupt .npz; SIGTERM lands while a LiteRT
deploy times 200,000 invokes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core.procs import wait_until
from tests.conftest import BIN, workspace_env

pytestmark = pytest.mark.slow

PLAIN = (
    "from pathlib import Path; from pipeline.orchestration.run import run_pipeline; "
    "run_pipeline(Path('params.yaml'))"
)
PATHS = {
    "tinyops run": [str(BIN / "tinyops"), "run"],
    "plain runner": [sys.executable, "-c", PLAIN],
    "dvc repro": [str(BIN / "dvc"), "repro"],
}


def _edit_params(ws: Path, section: str, **values: object) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params[section].update(values)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _runs(ws: Path) -> list:  # type: ignore[type-arg]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=workspace_env(ws)["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("tinyops")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])


def _new_parent(ws: Path, known: set[str]):  # type: ignore[no-untyped-def]
    parents = [
        r
        for r in _runs(ws)
        if "mlflow.parentRunId" not in r.data.tags and r.info.run_id not in known
    ]
    assert len(parents) == 1, [p.info.run_name for p in parents]
    return parents[0]


def _start(path: str, ws: Path) -> subprocess.Popen:
    return subprocess.Popen(
        PATHS[path],
        cwd=ws,
        env=workspace_env(ws),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, signalled as a whole
    )


@pytest.mark.parametrize("path", sorted(PATHS))
def test_success_ends_the_parent_finished(own_ws: Path, path: str) -> None:
    ws = own_ws
    (ws / "report/deploy.md").unlink()
    known = {r.info.run_id for r in _runs(ws)}
    out = _start(path, ws).communicate(timeout=600)[0]
    assert (ws / "report/deploy.md").is_file(), out[-3000:]
    parent = _new_parent(ws, known)
    assert parent.info.status == "FINISHED", out[-3000:]


@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_failing_stage_ends_the_parent_failed(own_ws: Path, path: str) -> None:
    ws = own_ws
    (ws / "data/raw/bad.npz").write_bytes(b"not a zip file")
    _edit_params(ws, "prepare", source="npz", path="data/raw/bad.npz")
    known = {r.info.run_id for r in _runs(ws)}
    proc = _start(path, ws)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode != 0, out[-3000:]
    assert "bad.npz" in out, out[-3000:]
    assert _new_parent(ws, known).info.status == "FAILED"


@pytest.mark.parametrize("path", sorted(PATHS))
def test_sigterm_ends_the_parent_killed(own_ws: Path, path: str) -> None:
    ws = own_ws
    known = {r.info.run_id for r in _runs(ws)}
    proc = _start_deploying(path, ws, known)
    os.killpg(proc.pid, signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, out[-3000:]
    assert _new_parent(ws, known).info.status == "KILLED", out[-3000:]


def _start_deploying(path: str, ws: Path, known: set[str]) -> subprocess.Popen:
    """`path` started on one stale LiteRT deploy that times 200,000 invokes, returned once that
    deploy's stage run is under way."""
    _edit_params(ws, "deploy", latency_runs=200_000)
    # The LiteRT device alone: no other deploy (firmware builds) runs before the signal lands.
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["devices"] = {"android_phone": params["devices"]["android_phone"]}
    params["orchestrate"]["preflight"] = False  # other devices: it would export the model again
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = _start(path, ws)

    def deploying() -> bool:  # the first deploy's stage run exists and is under way
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        return any(
            r.info.run_name == "deploy@android_phone" and r.info.status == "RUNNING"
            for r in _runs(ws)
            if r.info.run_id not in known
        )

    wait_until(deploying, 300, "deploy@android_phone to start", interval=0.2)
    return proc
