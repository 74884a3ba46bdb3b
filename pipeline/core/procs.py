"""Processes tinyops starts and must stop: a server or worker in its own process group, on a free
loopback port, healthy within a bound, and stopped with its whole group on every path (success,
failure, Ctrl-C, SIGTERM, or this process exiting). One helper for every server the product and
its tests start (Prefect, MLflow, and the federated, multi-node and team-stack servers to come),
plus the two primitives they share: a free port and a bounded poll."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from pipeline.core.errors import ServiceError

T = TypeVar("T")
LOOPBACK = "127.0.0.1"
_RUNNING: dict[int, Service] = {}  # stopped at interpreter exit if nobody stopped them before


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """n distinct ports free on `host` now (held open together while chosen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = LOOPBACK) -> int:
    return free_ports(1, host)[0]


def wait_until(
    check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1
) -> T:
    """Poll `check` until it returns something truthy (returned), at most `timeout` seconds; then
    TimeoutError naming `what`. A check may raise OSError (not up yet): that counts as no."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            found = check()
            if found:
                return found
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether `url` answers 2xx (a health endpoint)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return 200 <= response.status < 300


class Service:
    """A started process group; `stop` (or leaving its `with` block) ends the whole group."""

    def __init__(
        self,
        name: str,
        proc: subprocess.Popen[Any],
        log: Path,
        url: str = "",
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name, self.proc, self.log, self.url = name, proc, log, url
        self.stop_signal = stop_signal
        if not _RUNNING:
            atexit.register(stop_all)  # once per process that starts anything (it is idempotent)
        _RUNNING[proc.pid] = self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM to the group, SIGKILL after `grace` seconds; the exit status."""
        _RUNNING.pop(self.proc.pid, None)
        for sig in (self.stop_signal, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                return self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
        return self.proc.poll()

    def detach(self) -> None:
        """Leave it running after this process exits (`tinyops stack up`): whoever stops it
        later uses `stop_group` with its pid, which is its process group."""
        _RUNNING.pop(self.proc.pid, None)

    def __enter__(self) -> Service:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start(
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    healthy: Callable[[], Any] | None = None,
    url: str = "",
    timeout: float = 120.0,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
    stop_signal: int = signal.SIGTERM,
) -> Service:
    """Start `argv` in a new session (its own process group) with output to `log`, and wait until
    `healthy()` (default: `url` answers 2xx) holds, as `user` if given (root starting
    PostgreSQL); `stop_signal` is what its group gets first when stopped. A process that exits
    or stays unhealthy is stopped, and ServiceError says so with the tail of its log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env=dict(env) if env is not None else None,
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            user=user,
        )  # fmt: skip
    service = Service(name, proc, log, url, stop_signal)
    check = healthy or (lambda: http_ok(url))

    def ready() -> bool:
        if not service.running():
            raise ServiceError(
                f"{name} exited with status {proc.returncode}:\n{service.log_tail()}"
            )
        return bool(check())

    try:
        wait_until(ready, timeout, f"{name} to become healthy", interval=0.2)
    except BaseException as exc:
        service.stop()
        if isinstance(exc, TimeoutError):
            raise ServiceError(f"{exc} (log {log}):\n{service.log_tail()}") from None
        raise
    return service


def group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is in process group `pgid`."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended while we looked
        if fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def stop_group(pid: int, stop_signal: int = signal.SIGTERM, grace: float = 15.0) -> bool:
    """Stop the process group led by `pid`, started by another process (so not ours to wait
    for): `stop_signal`, then SIGKILL after `grace` seconds. Whether it had to be killed."""
    for sig in (stop_signal, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        try:
            wait_until(lambda: not group_alive(pid), grace, f"process group {pid} to stop")
            return sig == signal.SIGKILL
        except TimeoutError:
            continue
    return True


def stop_all() -> None:
    """Every service still running when this interpreter exits (an unhandled error, SIGTERM
    turned into an exception, a forgotten stop): none outlives its starter."""
    for service in list(_RUNNING.values()):
        service.stop(grace=5.0)
