"""`tinyops check` names the stores a run would use and whether each answers: the embedded
defaults, a DVC remote reached for real, and servers that are down, named without passwords."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.core.procs import free_ports
from pipeline.core.stores import redact, scrub
from tests.conftest import make_workspace, run_cmd


def test_a_password_never_leaves_redact_or_scrub() -> None:
    uri = "postgresql+psycopg2://tiny:s3cret@127.0.0.1:5432/mlflow"
    assert redact(uri) == "postgresql+psycopg2://tiny:***@127.0.0.1:5432/mlflow"
    assert redact("sqlite:///mlflow/mlflow.db") == "sqlite:///mlflow/mlflow.db"
    assert scrub(f"could not connect to {uri}: refused", uri).count("s3cret") == 0


def test_check_lists_the_stores_and_names_those_down_without_their_password(
    tmp_path: Path,
) -> None:
    ws = make_workspace(tmp_path / "ws")
    (tmp_path / "remote").mkdir()
    run_cmd(["dvc", "remote", "add", "-d", "store", str(tmp_path / "remote")], ws)
    quiet = {"PREFECT_API_URL": "", "PREFECT_HOME": str(tmp_path / "prefect")}  # no profile
    ok = run_cmd(["tinyops", "check"], ws, env=quiet)
    assert yaml.safe_load(ok.stdout)["train"]["epochs"] > 0, "stdout stays the params as YAML"
    lines = [" ".join(line.split()) for line in ok.stdout.splitlines() if line.startswith("#")]
    assert f"# MLflow tracking sqlite:///{ws}/mlflow/mlflow.db (answers, writable)" in lines
    assert "# Prefect API none (each run starts a temporary server)" in lines
    assert f"# DVC remote store: {tmp_path}/remote (answers: `dvc status --cloud` read it)" in lines

    mlflow_port, prefect_port = free_ports(2)  # nothing listens on either
    down = quiet | {
        "MLFLOW_TRACKING_URI": f"http://tiny:s3cret@127.0.0.1:{mlflow_port}",
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
    }
    refused = run_cmd(["tinyops", "check"], ws, check=False, env=down, timeout=120)
    message = " ".join(refused.stderr.split())
    assert refused.returncode == 8, refused.stdout[-2000:] + refused.stderr
    assert f"MLflow tracking at http://tiny:***@127.0.0.1:{mlflow_port}:" in message
    assert f"Prefect API at http://127.0.0.1:{prefect_port}/api: no answer" in message
    assert "s3cret" not in refused.stdout + refused.stderr
    run = run_cmd(["tinyops", "run"], ws, check=False, env=down, timeout=120)
    assert run.returncode == 8 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert f"no Prefect server answers at http://127.0.0.1:{prefect_port}/api" in run.stderr
    no_mlflow = quiet | {"MLFLOW_TRACKING_URI": down["MLFLOW_TRACKING_URI"]}
    run = run_cmd(["tinyops", "run"], ws, check=False, env=no_mlflow, timeout=120)
    message = " ".join(run.stderr.split())
    assert run.returncode == 8 and "Traceback" not in message, run.stderr[-3000:]
    assert f"the MLflow store http://tiny:***@127.0.0.1:{mlflow_port} is not reachable" in message
    assert "s3cret" not in run.stdout + run.stderr
