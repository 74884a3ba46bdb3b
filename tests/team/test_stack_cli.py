"""`tinyops stack` where there is no stack: each command says so and what to do, and changes
nothing (no servers are started here: tests/team/test_stack.py starts the real ones)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import BIN


def _stack(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "tinyops"), "stack", *args], capture_output=True, text=True, timeout=60
    )


def test_commands_on_a_folder_without_a_stack_say_so(tmp_path: Path) -> None:
    folder = str(tmp_path / "none")
    env = _stack("env", "--dir", folder)
    assert env.returncode == 2 and "tinyops stack up" in env.stderr, env.stderr
    remote = _stack("remote", "--dir", folder)
    assert remote.returncode == 2 and "no team stack in" in remote.stderr, remote.stderr
    status = _stack("status", "--dir", folder)
    assert status.returncode == 13 and "is not all up" in status.stderr, status.stderr
    down = _stack("down", "--dir", folder)
    assert down.returncode == 0 and "no service of the stack" in down.stdout, down.stdout
    assert not Path(folder).exists()
