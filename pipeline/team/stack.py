"""`tinyops stack up | down | status | env`: the team stack on one box, each service a real
process in its own group on a loopback port, its data, config and log under one folder.

- PostgreSQL holds MLflow's runs and registry, MLflow's users, and Prefect's state;
- Swift (S3 API) holds MLflow's artifacts (proxied: clients need no S3 keys) and the DVC remote;
- MLflow's tracking server runs with its basic-auth app; Prefect's server with an auth string.

The folder's `stack.json` (mode 0600) keeps the ports and the generated secrets, so a stack
that is stopped and started again keeps its addresses and data; `running.json` lists the
process groups of a stack that is up, which is how `down` finds them from another shell."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import urllib.request
from base64 import b64encode
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core import atomic, catalog
from pipeline.core.errors import ConfigError, ServiceError
from pipeline.core.procs import LOOPBACK, free_ports, group_alive, start, stop_group
from pipeline.team import postgres, swift

PORTS = ("postgres", "proxy", "account", "container", "object", "mlflow", "prefect")
S3_USER = "tinyops:team"  # Swift tempauth's account:user, the S3 access key id
ADMIN = "admin"  # MLflow's and Prefect's user
BUCKETS = {"mlflow": "tinyops-mlflow", "dvc": "tinyops-dvc"}
DVC_REMOTE = "team"
# Start order: each wave needs the ones before it, and its services start together; `down`
# stops them in reverse.
WAVES = (
    ("postgres",),
    tuple(f"swift-{n}" for n in swift.SERVERS),
    ("swift-proxy",),  # then the buckets are made
    ("mlflow", "prefect"),
)
SERVICES = tuple(name for wave in WAVES for name in wave)


@dataclass
class Layout:
    """Where one stack keeps everything."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / catalog.STACK_CONFIG

    @property
    def running(self) -> Path:
        return self.root / catalog.STACK_RUNNING

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"


@dataclass
class Config:
    """Ports and secrets, chosen once per stack folder."""

    ports: dict[str, int]
    pg_password: str
    s3_key: str
    admin_password: str
    flask_secret: str  # MLflow's auth app signs its CSRF tokens with it

    @classmethod
    def load_or_create(cls, layout: Layout) -> Config:
        if layout.config.exists():
            return cls(**json.loads(layout.config.read_text()))
        new = cls(
            ports=dict(zip(PORTS, free_ports(len(PORTS)), strict=True)),
            pg_password=secrets.token_urlsafe(18),
            s3_key=secrets.token_urlsafe(24),
            admin_password=secrets.token_urlsafe(18),
            flask_secret=secrets.token_urlsafe(24),
        )
        layout.root.mkdir(parents=True, exist_ok=True)
        atomic.write_private(layout.config, json.dumps(new.__dict__, indent=2) + "\n")
        return new

    def url(self, name: str) -> str:
        return f"http://{LOOPBACK}:{self.ports[name]}"

    def pg(self, driver: str, database: str) -> str:
        return postgres.uri(driver, self.pg_password, self.ports["postgres"], database)


@dataclass
class Spec:
    """One service of the stack: how to start it and how to tell it is ready."""

    name: str
    argv: list[str]
    healthy: Callable[[], Any]
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    stop_signal: int = signal.SIGTERM
    timeout: float = 120.0
    after: Callable[[], None] | None = None  # once healthy: databases, buckets


def _basic(user: str, password: str) -> str:
    return "Basic " + b64encode(f"{user}:{password}".encode()).decode()


def _answers(url: str, auth: str = "") -> bool:
    request = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    with urllib.request.urlopen(request, timeout=2) as response:
        return bool(200 <= response.status < 300)


def _postgres(layout: Layout, cfg: Config) -> Spec:
    data = layout.root / "postgres" / "data"
    if not (data / "PG_VERSION").exists():
        postgres.init_cluster(data, cfg.pg_password)
    port = cfg.ports["postgres"]
    return Spec(
        "postgres",
        postgres.server_argv(data, layout.root / "postgres" / "sockets", port),
        lambda: postgres.accepts(port, cfg.pg_password),
        user=postgres.run_as(),
        stop_signal=signal.SIGINT,  # fast shutdown: SIGTERM would wait for every client
        after=lambda: postgres.create_databases(port, cfg.pg_password),
    )


def _swift(layout: Layout, cfg: Config) -> Iterator[Spec]:
    folder, bin_dir = layout.root / "swift", Path(sys.executable).parent
    swift.write_config(folder, cfg.ports, S3_USER, cfg.s3_key)
    for name in swift.SERVERS:
        yield Spec(f"swift-{name}", swift.argv(bin_dir, folder, name), _listening(cfg, name))
    yield Spec(
        "swift-proxy",
        swift.argv(bin_dir, folder, "proxy"),
        lambda: _answers(f"{cfg.url('proxy')}/healthcheck"),
        after=lambda: _make_buckets(cfg),
    )


def _listening(cfg: Config, name: str) -> Callable[[], bool]:
    import socket

    def check() -> bool:
        with socket.create_connection((LOOPBACK, cfg.ports[name]), timeout=1):
            return True

    return check


def s3_env(cfg: Config) -> dict[str, str]:
    """What a process needs to reach the object store (the servers; DVC keeps its own)."""
    return {
        "AWS_ACCESS_KEY_ID": S3_USER,
        "AWS_SECRET_ACCESS_KEY": cfg.s3_key,
        "AWS_DEFAULT_REGION": swift.S3_REGION,
        "MLFLOW_S3_ENDPOINT_URL": cfg.url("proxy"),
    }


def _make_buckets(cfg: Config) -> None:
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=cfg.url("proxy"), aws_access_key_id=S3_USER,
        aws_secret_access_key=cfg.s3_key, region_name=swift.S3_REGION,
    )  # fmt: skip
    have = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in set(BUCKETS.values()) - have:
        s3.create_bucket(Bucket=bucket)


def _mlflow(layout: Layout, cfg: Config) -> Spec:
    folder = layout.root / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    auth = folder / "basic_auth.ini"
    atomic.write_private(
        auth,
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {cfg.pg('psycopg2', 'mlflow_auth')}\n"
        f"admin_username = {ADMIN}\nadmin_password = {cfg.admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Each password check is a deliberately slow hash (0.4 s here): without the cache every
        # request pays it, and a run makes hundreds. A password change holds after 60 s.
        "auth_cache_ttl_seconds = 60\n",
    )
    argv = [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth",
            "--backend-store-uri", cfg.pg("psycopg2", "mlflow"),
            "--artifacts-destination", f"s3://{BUCKETS['mlflow']}/artifacts",
            "--host", LOOPBACK, "--port", str(cfg.ports["mlflow"]), "--workers", "1"]  # fmt: skip
    env = {**s3_env(cfg), "MLFLOW_AUTH_CONFIG_PATH": str(auth),
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": cfg.flask_secret}  # fmt: skip
    basic = _basic(ADMIN, cfg.admin_password)
    return Spec("mlflow", argv, lambda: _answers(f"{cfg.url('mlflow')}/health", basic), env,
                timeout=240.0)  # fmt: skip


def _prefect(layout: Layout, cfg: Config) -> Spec:
    home = layout.root / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    argv = [str(Path(sys.executable).parent / "prefect"), "server", "start",
            "--host", LOOPBACK, "--port", str(cfg.ports["prefect"])]  # fmt: skip
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": cfg.pg("asyncpg", "prefect"),
        "PREFECT_SERVER_API_AUTH_STRING": f"{ADMIN}:{cfg.admin_password}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    basic = _basic(ADMIN, cfg.admin_password)
    return Spec("prefect", argv, lambda: _answers(f"{cfg.url('prefect')}/api/health", basic),
                env, timeout=180.0)  # fmt: skip


def _specs(layout: Layout, cfg: Config) -> Iterator[Spec]:
    """In start order: each after what it needs. `down` stops them in reverse."""
    yield _postgres(layout, cfg)
    yield from _swift(layout, cfg)
    yield _mlflow(layout, cfg)
    yield _prefect(layout, cfg)


def _check_reachable(root: Path) -> None:
    """As root, PostgreSQL runs as its own user, which must be able to reach the folder."""
    user = postgres.run_as()
    if user is None:
        return
    for folder in (root, *root.parents):
        if folder.exists() and not folder.stat().st_mode & 0o001:
            raise ConfigError(
                f"the stack folder {root} lies under {folder}, which the '{user}' user that "
                f"runs PostgreSQL cannot enter (mode {folder.stat().st_mode & 0o777:o}): "
                f"choose another --dir, or `chmod o+x {folder}`"
            )


def up(root: Path, say: Callable[[str], None] = print) -> Config:
    """Start every service that is not running yet, a wave at a time (each wave needs the ones
    before it; within one, they start together); on any failure, stop what this call started
    and raise ServiceError naming the service."""
    root = root.resolve()
    layout = Layout(root)
    _check_reachable(root)
    cfg = Config.load_or_create(layout)
    running = _running(layout)
    specs = {spec.name: spec for spec in _specs(layout, cfg)}
    started: list[Any] = []
    try:
        for wave in WAVES:
            for name in (n for n in wave if n in running):
                say(f"{name}: already running (pid {running[name]})")
            todo = [specs[n] for n in wave if n not in running]
            for service in _start_together(layout, todo, started):
                running[service.name] = service.pid
                atomic.write_json(layout.running, running)
                say(f"{service.name}: up (pid {service.pid}, log {service.log})")
    except BaseException:
        for service in reversed(started):
            service.stop(grace=10)
        running = {k: v for k, v in running.items() if k not in {s.name for s in started}}
        atomic.write_json(layout.running, running)
        raise
    for service in started:
        service.detach()
    return cfg


def _start_together(layout: Layout, specs: list[Spec], started: list[Any]) -> list[Any]:
    """Start `specs` at once and wait for all; each that came up joins `started` (so a failure
    of another still stops it), then the first failure is raised."""
    from concurrent.futures import ThreadPoolExecutor

    if not specs:
        return []
    with ThreadPoolExecutor(len(specs)) as pool:
        futures = [pool.submit(_start, layout, spec) for spec in specs]
    done, errors = [], []
    for future in futures:
        if future.exception() is None:
            done.append(future.result())
        else:
            errors.append(future.exception())
    started.extend(done)
    if errors:
        raise errors[0]  # type: ignore[misc]
    return done


def _start(layout: Layout, spec: Spec) -> Any:
    env = {**os.environ, **spec.env}
    env.pop("PREFECT_API_URL", None)  # a server must not report to another one
    service = start(
        spec.name, spec.argv, layout.log(spec.name), healthy=spec.healthy,
        timeout=spec.timeout, cwd=layout.root, env=env, user=spec.user,
        stop_signal=spec.stop_signal,
    )  # fmt: skip
    if spec.after is not None:
        try:
            spec.after()
        except Exception as exc:
            service.stop(grace=10)
            raise ServiceError(f"{spec.name} started, but setting it up failed: {exc}") from exc
    return service


def _running(layout: Layout) -> dict[str, int]:
    """The services of this folder whose process groups are still alive."""
    if not layout.running.exists():
        return {}
    listed = json.loads(layout.running.read_text())
    return {name: pid for name, pid in listed.items() if group_alive(pid)}


STOP_SIGNALS = {"postgres": signal.SIGINT}


def down(root: Path, say: Callable[[str], None] = print) -> None:
    """Stop every service of the stack, in the reverse of the start order; data stays."""
    layout = Layout(root.resolve())
    running = _running(layout)
    for name in sorted(running, key=SERVICES.index, reverse=True):
        killed = stop_group(running[name], STOP_SIGNALS.get(name, signal.SIGTERM), grace=20)
        say(f"{name}: stopped" + (" (killed after 20 s)" if killed else ""))
    if layout.running.exists():
        layout.running.unlink()
    if not running:
        say(f"no service of the stack in {layout.root} is running")


def status(root: Path) -> dict[str, str]:
    """Each service: 'up', 'running, not answering' or 'down'."""
    layout = Layout(root.resolve())
    if not layout.config.exists():
        return {}
    cfg = Config.load_or_create(layout)
    running = _running(layout)
    checks = {spec.name: spec.healthy for spec in _status_specs(layout, cfg)}
    out = {}
    for name, check in checks.items():
        if name not in running:
            out[name] = "down"
            continue
        try:
            out[name] = "up" if check() else "running, not answering"
        except Exception:
            out[name] = "running, not answering"
    return out


def _status_specs(layout: Layout, cfg: Config) -> list[Spec]:
    """The specs with their health checks, without writing configs or starting anything."""
    basic = _basic(ADMIN, cfg.admin_password)
    port = cfg.ports["postgres"]
    return [
        Spec("postgres", [], lambda: postgres.accepts(port, cfg.pg_password)),
        *(Spec(f"swift-{n}", [], _listening(cfg, n)) for n in swift.SERVERS),
        Spec("swift-proxy", [], lambda: _answers(f"{cfg.url('proxy')}/healthcheck")),
        Spec("mlflow", [], lambda: _answers(f"{cfg.url('mlflow')}/health", basic)),
        Spec("prefect", [], lambda: _answers(f"{cfg.url('prefect')}/api/health", basic)),
    ]


def client_env(cfg: Config) -> dict[str, str]:
    """What a teammate exports to work against the stack (`tinyops stack env`)."""
    return {
        "MLFLOW_TRACKING_URI": cfg.url("mlflow"),
        "MLFLOW_TRACKING_USERNAME": ADMIN,
        "MLFLOW_TRACKING_PASSWORD": cfg.admin_password,
        "PREFECT_API_URL": f"{cfg.url('prefect')}/api",
        "PREFECT_API_AUTH_STRING": f"{ADMIN}:{cfg.admin_password}",
    }


def dvc_remote_commands(cfg: Config) -> list[list[str]]:
    """The DVC remote on the stack's bucket: its address in .dvc/config (committed), its keys
    in .dvc/config.local (never committed)."""
    base = ["dvc", "remote", "modify"]
    return [
        ["dvc", "remote", "add", "--force", "-d", DVC_REMOTE, f"s3://{BUCKETS['dvc']}/cache"],
        [*base, DVC_REMOTE, "endpointurl", cfg.url("proxy")],
        [*base, DVC_REMOTE, "region", swift.S3_REGION],
        [*base, "--local", DVC_REMOTE, "access_key_id", S3_USER],
        [*base, "--local", DVC_REMOTE, "secret_access_key", cfg.s3_key],
    ]


def load(root: Path) -> Config:
    layout = Layout(root.resolve())
    if not layout.config.exists():
        raise ConfigError(f"no team stack in {layout.root}: start one with `tinyops stack up`")
    return Config.load_or_create(layout)
