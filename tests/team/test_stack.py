"""The team stack for real: `tinyops stack up` starts PostgreSQL, Swift (S3), MLflow's tracking
server (basic auth, artifacts proxied to Swift) and Prefect's server (auth string), and a
`tinyops run` lands in them; a teammate's clone pulls the outputs from the S3 remote and
reproduces them. Where PostgreSQL is missing these tests skip saying so (CI installs it and sets
TINYOPS_REQUIRE_STACK, which fails instead)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, make_workspace, run_cmd, tree_digest

pytestmark = pytest.mark.slow  # starts four servers and runs the pipeline against them

LOCAL_ONLY = ("mlflow/", ".tinyops/", "run.log")  # what a teammate's clone never gets from git
DEVICE = "stm32f746"  # one device: these tests prove the stores, the deploy tests the rest


def _tinyops(
    *args: str, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(BIN / "tinyops"), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"tinyops {args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def _has_postgres() -> bool:
    from pipeline.core.errors import ConfigError
    from pipeline.team import postgres

    try:
        postgres.bin_dir()
        postgres.run_as()
    except ConfigError:
        return False
    return True


def _stack_processes(folder: Path) -> list[str]:
    """Command lines of live processes that belong to the stack in `folder`."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if str(folder) in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(cmd)
    return found


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Path, dict[str, str]]]:
    """A stack in a folder of its own (PostgreSQL, run as its own user, must be able to enter
    it), its client environment; stopped at the end, and nothing of it may outlive that."""
    if not _has_postgres():
        if os.environ.get("TINYOPS_REQUIRE_STACK"):
            pytest.fail("PostgreSQL is missing: .ci/run installs postgresql-15")
        pytest.skip("PostgreSQL is missing (apt-get install postgresql-15)")
    folder = Path(tempfile.mkdtemp(prefix="tinyops-stack-"))
    folder.chmod(0o755)
    try:
        _tinyops("stack", "up", "--dir", str(folder))
        exports = _tinyops("stack", "env", "--dir", str(folder)).stdout
        env = dict(shlex.split(line)[1].split("=", 1) for line in exports.splitlines())
        yield folder, env
    finally:
        _tinyops("stack", "down", "--dir", str(folder), check=False)
        left = _stack_processes(folder)
        shutil.rmtree(folder, ignore_errors=True)
        assert not left, f"still running after `tinyops stack down`: {left}"


def _call(url: str, auth: tuple[str, str] | None, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def test_the_stack_is_up_and_refuses_unauthenticated_clients(
    stack: tuple[Path, dict[str, str]],
) -> None:
    folder, env = stack
    status = _tinyops("stack", "status", "--dir", str(folder)).stdout
    assert status.count(" up\n") == 7, status
    mlflow = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search"
    prefect = f"{env['PREFECT_API_URL']}/flow_runs/filter"
    user = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    admin = tuple(env["PREFECT_API_AUTH_STRING"].split(":", 1))
    assert _call(mlflow, None, {"max_results": 1})[0] == 401
    assert _call(mlflow, (user[0], "wrong"), {"max_results": 1})[0] == 401
    assert _call(mlflow, user, {"max_results": 1})[0] == 200
    assert _call(prefect, None, {})[0] == 401
    assert _call(prefect, admin, {})[0] == 200  # type: ignore[arg-type]
    for secret in ("stack.json", "swift/proxy-server.conf", "mlflow/basic_auth.ini"):
        mode = (folder / secret).stat().st_mode & 0o777
        assert mode == 0o600, (secret, oct(mode))  # secrets: the owner's alone


@pytest.fixture(scope="module")
def team_run(
    stack: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess]:
    """`tinyops run` with the stack's environment (no S3 keys: MLflow proxies the artifacts)
    and its bucket as the DVC remote; one device, firmware off, a smaller calibration and TFLite
    Micro sample: this proves the stores (tests/e2e proves the rest). The tracking server is
    restarted as the train stage starts (a fault a team meets): the run must end as if nothing
    had happened."""
    folder, env = stack
    ws = make_workspace(
        tmp_path_factory.mktemp("team"), {"epochs": 4, "patience": 4}, devices=(DEVICE,),
        sections={
            "firmware": {"enabled": False}, "export": {"calibration_samples": 64},
            "evaluate": {"tflm_samples": 64},
        },
    )  # fmt: skip
    _tinyops("stack", "remote", "--dir", str(folder), cwd=ws)
    assert not any(key.startswith("AWS_") for key in env)
    proc = _run_restarting_mlflow(ws, env, folder)
    (ws / "run.log").write_text(proc.stdout)
    return ws, proc


def _run_restarting_mlflow(
    ws: Path, env: dict[str, str], folder: Path
) -> subprocess.CompletedProcess:
    import signal
    import threading

    from tests.conftest import workspace_env

    argv = [str(BIN / "tinyops"), "run"]
    proc = subprocess.Popen(
        argv, cwd=ws, env={**workspace_env(ws), **env}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    watchdog = threading.Timer(480, os.killpg, (proc.pid, signal.SIGKILL))  # never hang CI
    watchdog.start()
    lines, restarted = [], ""
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if not restarted and "Running stage 'train'" in line:
                _stop_service(folder, "mlflow")
                restarted = _tinyops("stack", "up", "--dir", str(folder)).stdout
    finally:
        watchdog.cancel()
    assert "mlflow: up" in restarted, restarted + "".join(lines)[-4000:]
    return subprocess.CompletedProcess(argv, proc.wait(timeout=60), "".join(lines), "")


def _mlflow_get(env: dict[str, str], path: str, body: dict | None = None) -> dict:
    user = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    status, answer = _call(f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/{path}", user, body)
    assert status == 200, (path, status)
    return answer


def test_runs_datasets_models_and_aliases_are_read_back_through_the_rest_api(
    stack: tuple[Path, dict[str, str]], team_run: tuple[Path, subprocess.CompletedProcess]
) -> None:
    env = stack[1]
    proc = team_run[1]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    experiment = _mlflow_get(env, "experiments/get-by-name?experiment_name=tinyops")
    ids = [experiment["experiment"]["experiment_id"]]
    runs = _mlflow_get(env, "runs/search", {"experiment_ids": ids, "max_results": 200})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    (parent,) = [r for r, t in zip(runs, tags, strict=True) if "mlflow.parentRunId" not in t]
    assert "-cnn2d-torch-" in parent["info"]["run_name"], parent["info"]["run_name"]
    assert parent["info"]["status"] == "FINISHED"
    children = {
        r["info"]["run_name"] for r, t in zip(runs, tags, strict=True)
        if t.get("mlflow.parentRunId") == parent["info"]["run_id"]
    }  # fmt: skip
    assert {"train", "export", "evaluate", f"deploy@{DEVICE}"} <= children, children
    assert any(r.get("inputs", {}).get("dataset_inputs") for r in runs), "no dataset logged"
    models = _mlflow_get(env, "logged-models/search", {"experiment_ids": ids})["models"]
    assert models, "no LoggedModel"
    alias = _mlflow_get(env, f"registered-models/alias?name=tinyops-{DEVICE}&alias=production")
    assert alias["model_version"]["version"] == "1"
    assert "dvc push to 'team' (s3://tinyops-dvc/cache): " in proc.stdout + proc.stderr
    assert "Finished in state Completed()" in proc.stdout.split("Running stage 'train'")[1]
    assert "failed" not in (proc.stdout + proc.stderr).split("dvc push to 'team'")[1][:200]


def test_artifacts_live_in_the_object_store_and_the_champion_downloads_through_the_server(
    stack: tuple[Path, dict[str, str]],
    team_run: tuple[Path, subprocess.CompletedProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3

    from pipeline.core import tracking
    from pipeline.deploy import registry

    folder, env = stack
    ws, _ = team_run
    secrets = json.loads((folder / "stack.json").read_text())
    s3 = boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{secrets['ports']['proxy']}",
        aws_access_key_id="tinyops:team", aws_secret_access_key=secrets["s3_key"],
        region_name="us-east-1",
    )  # fmt: skip
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="tinyops-mlflow").get("Contents", [])]
    assert any(k.endswith("manifest.json") for k in keys), keys[:20]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    client = tracking.client()
    version = registry.production(client, DEVICE)
    manifest = registry.download_bundle(client, version, tmp_path)  # verified against its sha256
    bundle = registry.bundle_folder(tmp_path)
    deployed = ws / "deploy" / DEVICE
    assert tree_digest(bundle) == tree_digest(deployed), manifest


def test_two_teammates_racing_to_promote_through_the_server_never_both_win(
    stack: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.deploy.test_registry import race_two_deploys

    for key, value in stack[1].items():
        monkeypatch.setenv(key, value)
    race_two_deploys(tmp_path)


def test_a_teammates_clone_pulls_from_the_s3_remote_and_reproduces_the_same_bytes(
    stack: tuple[Path, dict[str, str]],
    team_run: tuple[Path, subprocess.CompletedProcess],
    tmp_path: Path,
) -> None:
    folder, env = stack
    ws, _ = team_run
    (ws / ".gitignore").write_text("\n".join(LOCAL_ONLY) + "\n")
    git = ["git", "-c", "user.name=tinyops", "-c", "user.email=ci@tinyops.invalid"]
    subprocess.run([*git, "add", "-A"], cwd=ws, check=True)
    subprocess.run([*git, "commit", "-qm", "a run against the team stack"], cwd=ws, check=True)
    assert (
        "secret_access_key"
        not in subprocess.run(
            ["git", "show", "HEAD:.dvc/config"], cwd=ws, capture_output=True, text=True, check=True
        ).stdout
    )  # the keys stay in .dvc/config.local
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ws), str(clone)], check=True)
    _tinyops("stack", "remote", "--dir", str(folder), cwd=clone)  # the teammate's own keys
    run_cmd(["dvc", "pull"], clone, env=env)
    for name in ("data/processed", "models/trained", "exports", "deploy"):
        assert tree_digest(clone / name) == tree_digest(ws / name), name
    assert "Data and pipelines are up to date" in run_cmd(["dvc", "status"], clone).stdout
    assert "in sync" in run_cmd(["dvc", "status", "--cloud"], clone).stdout
    nothing = run_cmd(["dvc", "repro"], clone, env=env).stdout
    assert "Data and pipelines are up to date" in nothing and "Running stage" not in nothing
    run_cmd(["dvc", "repro", "--force", "--single-item", "train"], clone, env=env)
    assert tree_digest(clone / "models/trained") == tree_digest(ws / "models/trained")


def test_a_worker_killed_mid_run_is_settled_and_the_next_run_through_a_pool_lands(
    stack: tuple[Path, dict[str, str]],
    team_run: tuple[Path, subprocess.CompletedProcess],
    tmp_path: Path,
) -> None:
    """`tinyops schedule --pool` deploys for a process pool and returns; `prefect worker start`
    picks up a manual run. The first worker is SIGKILLed with its flow run mid-stage (a box that
    dies): nothing can end that run. A second worker's run finds it through the workspace lock,
    marks the flow run Crashed and its MLflow parent KILLED, then completes and lands in the
    stack's MLflow."""
    from pipeline.core.procs import wait_until

    env = stack[1]
    ws, _ = team_run
    cron = ["--cron", "0 3 * * *", "--name", "nightly"]
    said = run_cmd(["tinyops", "schedule", "--pool", "team", *cron], ws, env=env).stdout
    assert "prefect worker start --pool team" in said, said
    (ws / "report/deploy.md").unlink()  # one stale stage: short runs
    with contextlib.ExitStack() as workers:
        first = _worker(ws, env, tmp_path / "worker1.log", workers)
        killed = _deployment_run(env)
        claimed = ("PENDING", "RUNNING")
        wait_until(lambda: _state(env, killed) in claimed, 120, "the first worker's claim")
        second = _worker(ws, env, tmp_path / "worker2.log", workers)  # starts as the run goes
        wait_until(lambda: "> tinyops stage report" in first.log_tail(20000), 300, "report")
        _kill_tree(first.pid)
        run_id = _deployment_run(env)
        assert _ended(env, run_id) == "COMPLETED", second.log_tail()
    assert _ended(env, killed) == "CRASHED"
    log = second.log_tail(50000)
    assert f"its Prefect flow run {killed} is now Crashed" in log, log[-3000:]
    parent = _parents(env, killed)
    assert [r["info"]["status"] for r in parent] == ["KILLED"], parent
    assert [r["info"]["status"] for r in _parents(env, run_id)] == ["FINISHED"]


def _worker(ws: Path, env: dict[str, str], log: Path, stack: contextlib.ExitStack) -> Any:
    """A worker of the pool, stopped when `stack` closes, on every path (a Prefect worker takes
    its first signal as a request: the short grace ends it)."""
    from pipeline.core.procs import start
    from tests.conftest import workspace_env

    argv = [str(BIN / "prefect"), "worker", "start", "--pool", "team"]
    worker = start(
        "Prefect worker", argv, log, healthy=lambda: "started!" in log.read_text(), cwd=ws,
        env={**workspace_env(ws), **env, "PREFECT_WORKER_QUERY_SECONDS": "1"},  # default 10
    )  # fmt: skip
    stack.callback(worker.stop, grace=2)
    return worker


def _deployment_run(env: dict[str, str]) -> str:
    """A manual run of retrain/nightly, through the REST API (the CLI takes seconds to import)."""
    admin = tuple(env["PREFECT_API_AUTH_STRING"].split(":", 1))
    api = env["PREFECT_API_URL"]
    status, deployment = _call(f"{api}/deployments/name/retrain/nightly", admin)  # type: ignore[arg-type]
    assert status == 200, status
    status, run = _call(f"{api}/deployments/{deployment['id']}/create_flow_run", admin, {})  # type: ignore[arg-type]
    assert status in (200, 201), status
    return str(run["id"])


def _state(env: dict[str, str], run_id: str) -> str:
    """The flow run's state type now."""
    admin = tuple(env["PREFECT_API_AUTH_STRING"].split(":", 1))
    url = f"{env['PREFECT_API_URL']}/flow_runs/{run_id}"
    return str((_call(url, admin)[1].get("state") or {}).get("type") or "")  # type: ignore[arg-type]


def _ended(env: dict[str, str], run_id: str) -> str:
    """The flow run's final state type, waited for."""
    from pipeline.core.procs import wait_until

    final = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
    return wait_until(
        lambda: state if (state := _state(env, run_id)) in final else None,
        300, f"flow run {run_id} to end",
    )  # fmt: skip


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant, as a machine that dies would."""
    import psutil

    root = psutil.Process(pid)
    for proc in [*root.children(recursive=True), root]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def _parents(env: dict[str, str], flow_run_id: str) -> list[dict]:
    experiment = _mlflow_get(env, "experiments/get-by-name?experiment_name=tinyops")
    ids = [experiment["experiment"]["experiment_id"]]
    query = f"tags.`prefect.flow_run_id` = '{flow_run_id}'"
    return _mlflow_get(env, "runs/search", {"experiment_ids": ids, "filter": query})["runs"]


def _stop_service(folder: Path, name: str) -> None:
    """Stop one service of the stack as a crash or an admin would, from outside."""
    import signal

    from pipeline.core.procs import stop_group

    pid = json.loads((folder / "running.json").read_text())[name]
    stop_group(pid, signal.SIGINT if name == "postgres" else signal.SIGTERM)


def test_the_object_store_down_during_push_is_said_and_retryable(
    stack: tuple[Path, dict[str, str]],
    team_run: tuple[Path, subprocess.CompletedProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The push after a successful run fails (Swift's proxy is down): said, with how to retry,
    and nothing local changes; with the store back, the same push succeeds."""
    from pipeline.orchestration.dvc import push
    from tests.conftest import workspace_env

    folder, env = stack
    ws, _ = team_run
    monkeypatch.chdir(ws)
    before = tree_digest(ws / "models")
    _stop_service(folder, "swift-proxy")
    # one try: botocore's retries against a closed port take 6 s and prove nothing more here
    said = push({**workspace_env(ws), **env, "AWS_MAX_ATTEMPTS": "1"})
    assert said is not None and " failed:" in said and "run `dvc push` to retry" in said, said
    assert tree_digest(ws / "models") == before
    _tinyops("stack", "up", "--dir", str(folder))  # restarts only what is down
    said = push({**workspace_env(ws), **env})
    assert said is not None and " failed" not in said, said


def test_postgresql_down_at_start_refuses_the_run_before_any_stage(
    stack: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """Last in the module: it stops PostgreSQL. The tracking server answers but cannot reach its
    database; `tinyops run` refuses at once (exit 8) naming the server, and no stage runs. With
    PostgreSQL back (`tinyops stack up` starts only it), the same store answers again."""
    folder, env = stack
    ws = make_workspace(tmp_path / "ws", devices=(DEVICE,))
    _stop_service(folder, "postgres")
    proc = run_cmd(["tinyops", "run"], ws, check=False, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 8, out[-3000:]
    assert env["MLFLOW_TRACKING_URI"] in out and env["MLFLOW_TRACKING_PASSWORD"] not in out
    assert not (ws / "dvc.lock").exists() and not (ws / "data/processed").exists()
    _tinyops("stack", "up", "--dir", str(folder))
    check = run_cmd(["tinyops", "check"], ws, env=env, check=False)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
