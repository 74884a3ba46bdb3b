"""train.federated.engine → how a federated run's processes start: each engine gives the
launcher one Popen-like object (wait, terminate, kill) that stands for its whole process
group, so the launcher's forwarding, interruption and exit-status handling are the centralized
paradigm's."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.core.config import Params
from pipeline.training.federated.job import job_env


class Group:
    """A process started in its own session: stopping it stops every process of the group
    (Ray's daemons and actors; Flower's SuperExec children)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(argv, env=env, start_new_session=True)

    def wait(self, timeout: float | None = None) -> int:
        code = self.proc.wait(timeout=timeout)
        self._signal(signal.SIGKILL)  # anything of the group still running goes with it
        return code

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)


def _simulation(params: Params, params_path: Path) -> Any:
    return Group(
        [sys.executable, "-m", "pipeline.training.federated.simulation"], job_env(params_path)
    )


def _deployment(params: Params, params_path: Path) -> Any:
    return Group(
        [sys.executable, "-m", "pipeline.training.federated.deployment"], job_env(params_path)
    )


ENGINES = {"simulation": _simulation, "deployment": _deployment}


def start(params: Params, params_path: Path, backend: str = "") -> Any:
    """The federated run's process group, for train.federated.engine."""
    return ENGINES[params.train.federated.engine](params, params_path)
