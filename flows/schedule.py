"""Scheduled retraining on a real Prefect server (schedules never fire on the ephemeral one).

`tinyops server` runs `prefect server start` on 127.0.0.1 with its database under the project
(.tinyops/prefect/, git-ignored). `tinyops schedule --cron ...` creates the `retrain/<name>`
deployment with that cron schedule and serves it from this workspace: one long-running process
that picks up each scheduled (or manually triggered) run and executes it here, one at a time.
Serving needs no work pool or worker; stop it and the schedule pauses until it is served again.
"""

from __future__ import annotations

import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import NoReturn

from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.stores import Store, redact

PREFECT_HOME = Path(".tinyops/prefect")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
DEFAULT_API = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}/api"


def prefect_defaults() -> None:
    """Environment for any Prefect use here: no telemetry (there is no internet to send it to)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def start_server(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> NoReturn:
    """Replace this process with `prefect server start` (signals and Ctrl-C go straight to it)."""
    home = PREFECT_HOME.resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home),  # the server's SQLite database: .tinyops/prefect/prefect.db
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_API_HOST=host,
        PREFECT_SERVER_API_PORT=str(port),
    )
    env.pop("PREFECT_API_URL", None)  # the server must not try to talk to another server
    local = Path(sys.executable).parent / "prefect"
    exe = str(local) if local.exists() else shutil.which("prefect") or "prefect"
    print(
        f"Prefect server on http://{host}:{port} (database {home}/prefect.db).\n"
        f"UI: http://{host}:{port}   In another shell: export PREFECT_API_URL=http://{host}:{port}/api",
        flush=True,
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: {host} exposes the Prefect API, which has no authentication.", flush=True)
    os.execve(exe, [exe, "server", "start", "--host", host, "--port", str(port)], env)


def api_url() -> str:
    return os.environ.get("PREFECT_API_URL") or DEFAULT_API


def configured_api_url() -> str | None:
    """A Prefect server the user pointed at, by environment or by the active Prefect profile;
    None means Prefect would start a temporary server. Read without importing Prefect (slow)."""
    import tomllib

    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()
    try:
        profiles = tomllib.loads((home / "profiles.toml").read_text())
    except (OSError, ValueError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    return profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL") or None


def prefect_store() -> Store:
    """The Prefect API runs report to, and whether its server answers."""
    url = configured_api_url()
    if url is None:
        return Store("Prefect API", "none", note="each run starts a temporary server")
    try:
        require_server(url)
    except PipelineError:
        return Store("Prefect API", redact(url), "no answer from its /health within 5 s")
    return Store("Prefect API", redact(url), note="answers")


def require_server(url: str) -> None:
    """Fail in the first second, and say what to do, when no Prefect server answers."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=5) as resp:
            if resp.status == 200:
                return
    except (urllib.error.URLError, OSError):
        pass
    raise PipelineError(
        f"no Prefect server answers at {redact(url)}. Start one with `tinyops server` in another shell "
        "(schedules do not fire on Prefect's ephemeral server), or set PREFECT_API_URL to yours."
    )


def check_cron(cron: str, timezone: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValueError as exc:
        reason = str(exc).splitlines()[-1] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"--cron '{cron}' / --timezone '{timezone}' is not a valid schedule ({reason}); "
            "use five cron fields, e.g. '0 3 * * *' for 03:00 daily, and an IANA timezone."
        ) from None


def _ready_to_schedule(cron: str, timezone: str, params_path: str) -> str:
    """The checks both ways of scheduling make first: params and cron valid, a server answering
    (whose URL is returned and set for Prefect, before it loads its settings)."""
    from pipeline.core.config import load_params

    load_params(Path(params_path))  # a bad config is an error now, not at 03:00
    check_cron(cron, timezone)
    url = api_url()
    require_server(url)
    os.environ["PREFECT_API_URL"] = url
    return url


def serve(
    cron: str,
    name: str = "nightly",
    timezone: str = "UTC",
    params_path: str = "params.yaml",
    force: bool = False,
) -> None:
    """Create (or update) deployment retrain/<name> with the cron schedule and serve it."""
    url = _ready_to_schedule(cron, timezone, params_path)
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    from flows.retrain import retrain

    print(
        f"serving retrain/{name} on {url}: cron '{cron}' ({timezone}) in {Path.cwd()}", flush=True
    )
    try:
        retrain.serve(
            name=name,
            schedules=[Cron(cron, timezone=timezone)],
            # Scheduled runs wait for a manual run that holds the workspace instead of failing.
            parameters={"params_path": params_path, "force": force, "wait": True},
            description=f"Scheduled retraining of the tinyops pipeline in {Path.cwd()}",
            tags=["tinyops"],
            limit=1,  # one pipeline run at a time from this workspace
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
    finally:
        _pause(name)


def deploy_to_pool(
    cron: str,
    pool: str,
    name: str = "nightly",
    timezone: str = "UTC",
    params_path: str = "params.yaml",
    force: bool = False,
) -> None:
    """Create (or update) deployment retrain/<name> for work pool `pool` (a process pool, made if
    missing): its runs execute wherever `prefect worker start --pool POOL` runs, in this
    checkout (its absolute path is the deployment's source). Returns at once; nothing serves."""
    url = _ready_to_schedule(cron, timezone, params_path)
    from prefect import flow
    from prefect.schedules import Cron

    _ensure_pool(pool)
    source = flow.from_source(source=str(Path.cwd()), entrypoint=RETRAIN_ENTRYPOINT)
    source.deploy(  # type: ignore[union-attr]
        name=name,
        work_pool_name=pool,
        schedules=[Cron(cron, timezone=timezone)],
        parameters={"params_path": params_path, "force": force, "wait": True},
        description=f"Scheduled retraining of the tinyops pipeline in {Path.cwd()}",
        tags=["tinyops"],
        # No concurrency_limit: a run killed outright would hold its slot until the lease ends,
        # and the next run, which settles the killed one, could not start. The workspace lock
        # (`wait`) keeps runs in this checkout one at a time.
        print_next_steps=False,
    )
    print(
        f"retrain/{name} on {url} for work pool '{pool}': cron '{cron}' ({timezone}), runs in "
        f"{Path.cwd()}.\nStart a worker (in this checkout's venv, with the same environment): "
        f"prefect worker start --pool {pool}",
        flush=True,
    )


RETRAIN_ENTRYPOINT = "flows/retrain.py:retrain"


def _ensure_pool(pool: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            print(f"work pool '{pool}' (process) created", flush=True)


def _pause(name: str) -> None:
    """No runner, no runs: pause the schedule. Prefect's own SIGTERM path can exit before it has
    paused (3.8), so this does it again, whatever the way out."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.pause_deployment(client.read_deployment_by_name(f"retrain/{name}").id)
        print(f"retrain/{name}: schedule paused until it is served again", flush=True)
    except Exception as exc:  # the server may be gone too; nothing else to do on the way out
        print(f"retrain/{name}: could not pause the schedule ({exc})", flush=True)
