"""Fixtures: real data, a real MLflow store and a real DVC project, each in a temporary folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import budget


def pytest_configure(config: pytest.Config) -> None:
    """The per-wing time report as a plugin of the whole session (tests/budget.py): a conftest's
    own hooks would miss the setup of session-scoped fixtures."""
    config.pluginmanager.register(budget, "tinyops-budget")


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


# One MCU (TFLite Micro) and one LiteRT device: enough to show another training path ends in
# bundles; every device of the catalogue is covered by the default pipeline's run.
TWO_DEVICES = ("stm32f746", "raspberry_pi_4")


def make_workspace(
    dest: Path,
    train_overrides: dict | None = None,
    model_overrides: dict | None = None,
    devices: tuple[str, ...] | None = None,
    sections: dict[str, dict] | None = None,
    preflight: bool = False,
) -> Path:
    """A copy of the project (code, params, dvc.yaml) in its own git repo, as a user's clone;
    `devices` keeps only those profiles; `sections` overlays keys of any section. Model
    preflight (seconds per first run) is on only where asked: the default run and its tests."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pipeline", "flows", "user_models", "data/raw", ".dvc"):
        shutil.copytree(
            REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache")
        )
    for name in ("dvc.yaml", ".dvcignore", "params.yaml"):
        shutil.copy2(REPO / name, dest / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(train_overrides or {})
    params["model"].update(model_overrides or {})
    params["orchestrate"]["preflight"] = preflight
    for name, keys in (sections or {}).items():
        params[name].update(keys)
    if params["tflm"]["source"]:  # relative to the project root: this clone lives elsewhere
        params["tflm"]["source"] = str((REPO / params["tflm"]["source"]).resolve())
    if devices is not None:
        params["devices"] = {name: params["devices"][name] for name in devices}
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / "mlflow").mkdir(exist_ok=True)
    shutil.copy2(_migrated_mlflow_db(), dest / "mlflow" / "mlflow.db")
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


_MLFLOW_DB: list[Path] = []


def _migrated_mlflow_db() -> Path:
    """An empty MLflow store with its schema migrated, made once per session: each workspace
    copies it instead of running MLflow's migrations again (about a second each)."""
    if not _MLFLOW_DB:
        import tempfile

        from mlflow.tracking import MlflowClient

        db = Path(tempfile.mkdtemp(prefix="tinyops-mlflow-")) / "mlflow.db"
        MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
        _MLFLOW_DB.append(db)
    return _MLFLOW_DB[0]


def workspace_env(ws: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TINYOPS_PARENT_RUN_ID",)}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{ws}/mlflow/mlflow.db"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cmd(
    args: list[str],
    ws: Path,
    check: bool = True,
    timeout: int = 900,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run a project command (tinyops, dvc) in the workspace; show its output when it fails."""
    exe = BIN / args[0]
    proc = subprocess.run(
        [str(exe) if exe.exists() else args[0], *args[1:]],
        cwd=ws,
        env={**workspace_env(ws), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{args} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def train_killing_a_worker(ws: Path, trigger: str, rank: str = "1") -> tuple[int, str, bool]:
    """`tinyops stage train` in `ws`, SIGKILLing the worker of `rank` at the first output line
    containing `trigger`: (exit code, output, whether it was killed)."""
    import threading

    import psutil

    proc = subprocess.Popen(
        [str(BIN / "tinyops"), "stage", "train"], cwd=ws, env=workspace_env(ws),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    watchdog = threading.Timer(480, os.killpg, (proc.pid, signal.SIGKILL))  # never hang CI
    watchdog.start()
    lines, killed = [], False
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if not killed and trigger in line:
                victim = next(
                    w for w in psutil.Process(proc.pid).children(recursive=True)
                    if _worker_rank(w) == rank
                )  # fmt: skip
                victim.kill()
                killed = True
    finally:
        watchdog.cancel()
    return proc.wait(timeout=600), "".join(lines), killed


def _worker_rank(proc: Any) -> str | None:
    """A training worker's rank: torchrun's RANK, or the index in a Keras worker's TF_CONFIG."""
    cmd = " ".join(proc.cmdline())
    if "pipeline.training.worker" in cmd:
        return proc.environ().get("RANK")
    if "pipeline.training.keras_worker" in cmd:
        return str(json.loads(proc.environ()["TF_CONFIG"])["task"]["index"])
    return None


IMPORT_LOG = "import_log"  # beside the session workspace: what each process of its run loaded


def import_recording(folder: Path) -> dict[str, str]:
    """Environment that makes every Python process record its project modules at exit
    (tests/import_recorder/sitecustomize.py), for tests/orchestration/test_dvc_deps.py."""
    folder.mkdir(parents=True, exist_ok=True)
    recorder = str(REPO / "tests" / "import_recorder")
    path = os.pathsep.join(p for p in (recorder, os.environ.get("PYTHONPATH", "")) if p)
    return {"TINYOPS_IMPORT_LOG": str(folder), "PYTHONPATH": path}


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server (`tinyops server`) for the session; every `tinyops run` of the
    tests reports to it (PREFECT_API_URL), so flow and task runs can be read back."""
    from pipeline.core.procs import free_port, start

    home = tmp_path_factory.mktemp("prefect")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in workspace_env(home).items() if k != "PREFECT_API_URL"}
    server = start(
        "Prefect server",
        [str(BIN / "tinyops"), "server", "--port", str(port)],
        home / "server.log",
        url=f"{url}/health",
        cwd=home,
        env=env,
    )
    mp = pytest.MonkeyPatch()
    mp.setenv("PREFECT_API_URL", url)  # subprocesses (tinyops run) inherit it via workspace_env
    yield url
    mp.undo()
    if "prefect.logging.handlers" in sys.modules:  # send in-process flow logs before it stops
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
    server.stop(grace=30)


@pytest.fixture()
def prefect_here(prefect_api: str) -> Iterator[object]:
    """This process's Prefect settings pointed at the session server (they are read at import)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        yield prefect_api


@pytest.fixture(scope="session")
def pipeline_ws(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Iterator[Path]:
    """One real end-to-end `tinyops run` (torchrun DDP, litert-torch, TFLite Micro) shared by the
    slow tests; they read its outputs, and the tests that rerun stages come last in their module."""
    ws = make_workspace(tmp_path_factory.mktemp("pipeline"), FAST_TRAIN, preflight=True)
    proc = run_cmd(["tinyops", "run"], ws, env=import_recording(ws / IMPORT_LOG))
    (ws / "run.log").write_text(proc.stdout + proc.stderr)
    first = {d.name: tree_digest(d) for d in sorted((ws / "deploy").iterdir()) if d.is_dir()}
    (ws / "first_deploy.json").write_text(json.dumps(first))
    for name in ("data/processed", "models", "exports", "metrics"):
        shutil.copytree(ws / name, ws / "first_run" / name)
    shutil.copytree(ws, _pristine(ws), ignore=shutil.ignore_patterns(IMPORT_LOG))
    yield ws


def _pristine(ws: Path) -> Path:
    return ws.with_name(f"{ws.name}-pristine")


@pytest.fixture()
def own_ws(pipeline_ws: Path, tmp_path: Path) -> Path:
    """This test's own copy of the workspace as the first run left it, to change at will.

    (The copy's MLflow store still names the first workspace's artifact folder, as a moved
    store would: artifacts logged from the copy land there, under their own run ids.)"""
    return Path(shutil.copytree(_pristine(pipeline_ws), tmp_path / "ws"))


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


@dataclass(frozen=True)
class TinyRun:
    """prepare → (seeded, untrained model) → export → evaluate on a tiny dataset, each stage's
    own function writing into one folder laid out like a workspace."""

    ws: Path
    params: object  # pipeline.core.config.Params
    int8: bytes
    fp32: bytes


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """The middle layer: stage functions on tiny real data, in-process, in about 30 s."""
    import numpy as np
    import torch

    from pipeline.core import catalog
    from pipeline.core.config import parse_params
    from pipeline.data.prepare import load_processed, prepare
    from pipeline.evaluation.evaluate import evaluate, write_outputs
    from pipeline.export.convert import export
    from pipeline.models.architecture import Architecture, build_model
    from pipeline.models.store import save_model

    ws = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = (rng.normal(size=(60, 6, 6, 1)) + y[:, None, None, None]).astype(np.float32)
    np.savez(ws / "tiny.npz", x=x, y=y, classes=np.array(["a", "b", "c"]))
    params = parse_params(
        {
            "prepare": {"source": "npz", "path": str(ws / "tiny.npz"), "min_samples_per_class": 5},
            "model": {"channels": [4, 8]},
            "export": {"calibration_samples": 16},
            "evaluate": {"arena_max_bytes": 65536},
        }
    )
    meta = prepare(params.prepare, ws / catalog.PROCESSED_DIR).meta
    arch = Architecture(tuple(meta.input_shape), meta.num_classes, (4, 8), 3, 0.0)  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = build_model(arch)
    save_model(ws / catalog.TRAINED_DIR, arch, model.state_dict(), meta.model_dump(), 1)
    data = load_processed(ws / catalog.PROCESSED_DIR)
    export(
        params.export, data.x["train"], 0, ws / catalog.TRAINED_DIR, ws / catalog.EXPORT_DIR,
        layers_file=ws / catalog.INT8_LAYERS,
    )  # fmt: skip
    result = evaluate(params.evaluate, data, ws / catalog.TRAINED_DIR, ws / catalog.EXPORT_DIR)
    write_outputs(
        result,
        ws / catalog.EVALUATE_METRICS,
        ws / catalog.PREDICTIONS_FILE,
        ws / catalog.VARIANTS_FILE,
    )
    read = (ws / catalog.variant_file("int8")).read_bytes
    return TinyRun(ws, params, read(), (ws / catalog.variant_file("fp32")).read_bytes())
