"""The MLflow UI as a person sees it: `mlflow server` over the store the session's pipeline run
left, pages loaded in headless Chromium. The runs page shows the run by its name with its
datasets, and the registry shows a model per device."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.core.procs import free_port, start
from tests.conftest import BIN, workspace_env

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=30000",
    "--window-size=1800,900",
]


@pytest.fixture(scope="module")
def mlflow_ui(pipeline_ws: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); CI installs it")
    port = free_port()
    log = tmp_path_factory.mktemp("mlflow-ui") / "server.log"
    uri = workspace_env(pipeline_ws)["MLFLOW_TRACKING_URI"]
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", uri]
    url = f"http://127.0.0.1:{port}"
    argv = [*cmd, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with start("MLflow server", argv, log, url=f"{url}/health", cwd=pipeline_ws):
        yield url


def _page(url: str, tmp_path: Path, screenshot: Path | None = None) -> str:
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    extra = [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    proc = subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _experiment(pipeline_ws: Path):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=workspace_env(pipeline_ws)["MLFLOW_TRACKING_URI"])
    return client, client.get_experiment_by_name("tinyops")


def test_the_runs_page_shows_named_runs_and_their_datasets(
    mlflow_ui: str, pipeline_ws: Path, tmp_path: Path
) -> None:
    client, exp = _experiment(pipeline_ws)
    parent = next(
        r for r in client.search_runs([exp.experiment_id]) if "tinyops.params_sha256" in r.data.tags
    )
    url = f"{mlflow_ui}/#/experiments/{exp.experiment_id}/runs"
    dom = _page(url, tmp_path)
    assert parent.info.run_name in dom, dom[-2000:]
    assert "digits-train" in dom or "digits-test" in dom, "the Dataset column"
    shot = Path(__file__).resolve().parents[2] / "docs" / "mlflow-runs.png"
    if shot.parent.is_dir() and not shot.exists():  # refreshed by deleting it and rerunning
        _page(url, tmp_path, shot)


def test_the_registry_lists_a_model_per_device(mlflow_ui: str, tmp_path: Path) -> None:
    dom = _page(f"{mlflow_ui}/#/models", tmp_path)
    for device in ("esp32_s3", "stm32f746", "raspberry_pi_4"):
        assert f"tinyops-{device}" in dom, dom[-2000:]
