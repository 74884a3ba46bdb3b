"""The one process helper: a real server in its own process group, healthy within a bound, and
its whole group stopped on success, on failure and on SIGTERM of the process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.errors import ServiceError
from pipeline.core.procs import free_port, free_ports, http_ok, start, wait_until

REPO = Path(__file__).resolve().parents[2]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie awaiting its parent counts as gone
        return f.read().split()[2] == "Z"


def _server(port: int) -> list[str]:
    """A shell that starts an HTTP server as its child: stopping only the shell would leave it."""
    http = f"{sys.executable} -m http.server {port} --bind 127.0.0.1"
    return ["sh", "-c", f"{http} & wait"]


def _child_of(pid: int) -> int:
    return wait_until(
        lambda: int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0] or 0),
        10,
        "the server's child process",
    )


def test_a_server_is_healthy_then_its_whole_group_stops(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with start("http", _server(port), tmp_path / "http.log", url=url, timeout=30) as service:
        assert http_ok(url)
        child = _child_of(service.pid)
    assert _gone(service.pid) and wait_until(lambda: _gone(child), 10, "the child to stop")


def test_a_server_that_exits_is_a_clear_error_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('port in use'); sys.exit(3)"]
    with pytest.raises(ServiceError, match="exited with status 3") as err:
        start("broken", argv, tmp_path / "broken.log", url="http://127.0.0.1:9/", timeout=30)
    assert "port in use" in str(err.value)


def test_a_server_never_healthy_is_stopped_after_the_bound(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(ServiceError, match="silent to become healthy: not within 1 s"):
        start("silent", argv, tmp_path / "silent.log", healthy=lambda: False, timeout=1)


def test_sigterm_to_the_starter_stops_the_group(tmp_path: Path) -> None:
    port = free_port()
    script = (
        "import sys, time\n"
        "from pipeline.core import interrupt\n"
        "from pipeline.core.procs import start\n"
        "interrupt.install()\n"
        f"s = start('http', {_server(port)!r}, __import__('pathlib').Path({str(tmp_path / 'l')!r}),"
        f" url='http://127.0.0.1:{port}/', timeout=30)\n"
        "print(s.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    starter = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert starter.stdout is not None
    server = int(starter.stdout.readline())
    child = _child_of(server)
    starter.send_signal(signal.SIGTERM)
    starter.wait(timeout=30)
    assert wait_until(lambda: _gone(server) and _gone(child), 15, "the group to stop")


def test_free_ports_are_distinct_and_wait_until_names_what_it_waited_for() -> None:
    assert len(set(free_ports(5))) == 5
    with pytest.raises(TimeoutError, match=r"the moon: not within 0\.2 s"):
        wait_until(lambda: None, 0.2, "the moon", interval=0.05)


def test_a_detached_server_outlives_its_starter_and_stop_group_ends_it(tmp_path: Path) -> None:
    """`tinyops stack up` detaches its services; `tinyops stack down`, another process, stops
    each whole group by its pid (the shell and the server it started)."""
    from pipeline.core.procs import group_alive, stop_group

    port = free_port()
    starter = (
        "import sys; from pathlib import Path; from pipeline.core.procs import start; "
        f"s = start('srv', {_server(port)!r}, Path({str(tmp_path / 'srv.log')!r}), "
        f"url='http://127.0.0.1:{port}/'); s.detach(); print(s.pid)"
    )
    done = subprocess.run(
        [sys.executable, "-c", starter], cwd=REPO, capture_output=True, text=True, check=True
    )
    pid = int(done.stdout.split()[-1])
    child = _child_of(pid)
    assert group_alive(pid) and http_ok(f"http://127.0.0.1:{port}/")
    assert stop_group(pid, grace=10) is False  # SIGTERM was enough
    assert not group_alive(pid) and _gone(child)
