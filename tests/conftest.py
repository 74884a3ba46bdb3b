"""Fixtures: real data, a real MLflow store and a real DVC project, each in a temporary folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The shipped device catalogue (params.yaml's devices).
CATALOGUE = (
    "arduino_nano_33_ble_sense",
    "raspberry_pi_pico",
    "esp32_s3",
    "stm32f746",
    "raspberry_pi_4",
    "android_phone",
)
# Small enough for CI, large enough that the accuracy targets mean something.
FAST_TRAIN = {"epochs": 12, "patience": 4}


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root (empty when root is missing): 'nothing changed' checks."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def make_workspace(dest: Path, train_overrides: dict | None = None) -> Path:
    """A copy of the project (code, params, dvc.yaml) in its own git repo, as a user's clone."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pipeline", "flows", "data/raw", ".dvc"):
        shutil.copytree(
            REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache")
        )
    for name in ("dvc.yaml", ".dvcignore", "params.yaml"):
        shutil.copy2(REPO / name, dest / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(train_overrides or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def workspace_env(ws: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TINYOPS_PARENT_RUN_ID",)}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{ws}/mlflow/mlflow.db"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cmd(
    args: list[str], ws: Path, check: bool = True, timeout: int = 900
) -> subprocess.CompletedProcess:
    """Run a project command (tinyops, dvc) in the workspace; show its output when it fails."""
    exe = BIN / args[0]
    proc = subprocess.run(
        [str(exe) if exe.exists() else args[0], *args[1:]],
        cwd=ws,
        env=workspace_env(ws),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{args} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def pipeline_ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One real end-to-end `tinyops run` (torchrun DDP, litert-torch, TFLite Micro) shared by the
    slow tests; they read its outputs, and the tests that rerun stages come last in their module."""
    ws = make_workspace(tmp_path_factory.mktemp("pipeline"), FAST_TRAIN)
    proc = run_cmd(["tinyops", "run"], ws)
    (ws / "run.log").write_text(proc.stdout + proc.stderr)
    first = {d.name: tree_digest(d) for d in sorted((ws / "deploy").iterdir()) if d.is_dir()}
    (ws / "first_deploy.json").write_text(json.dumps(first))
    for name in ("data/processed", "models", "exports"):  # later tests change these; keep the first
        shutil.copytree(ws / name, ws / "first_run" / name)
    yield ws


@pytest.fixture(scope="session")
def first_run(pipeline_ws: Path) -> Path:
    """The outputs of the workspace's first run (default model), untouched by later tests."""
    return pipeline_ws / "first_run"


@pytest.fixture()
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("TINYOPS_PARENT_RUN_ID", raising=False)
    return uri
