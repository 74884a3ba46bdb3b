"""What every process of a federated run (the engine's driver, the ServerApp, each ClientApp)
needs to find the job: Flower starts the apps itself, in Ray actors or in processes its
SuperLink and SuperNodes spawn, so the launcher hands the params file and the project folder
over in the environment, which every one of those processes inherits."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pipeline.core.config import Params, load_params

PARAMS_ENV = "TINYOPS_FL_PARAMS"  # absolute path of the params file
WORKSPACE_ENV = "TINYOPS_FL_WORKSPACE"  # the project folder: catalog paths are relative to it
# Fault injection for the drop tests and the bench: "ROUND:CLIENT[,ROUND:CLIENT…]". A client
# named in FAIL raises in that round (as a client that dies mid-round); one named in LEAVE_OUT
# is not sent that round's message at all (the run a dropped client must equal).
FAIL_ENV = "TINYOPS_FL_FAIL"
LEAVE_OUT_ENV = "TINYOPS_FL_LEAVE_OUT"
# Off in every process of the run: no telemetry, no update check, nothing downloaded.
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
              "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0",
              "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}  # fmt: skip
SITE = Path(__file__).with_name("site")  # its sitecustomize keeps TensorFlow out (see there)


@dataclass(frozen=True)
class Job:
    params: Params
    workspace: Path

    def path(self, relative: Path) -> Path:
        """A catalog path of this project, whatever the process's working folder."""
        return self.workspace / relative


@cache
def current() -> Job:
    """This process's job (read once per process: a Ray actor serves many messages)."""
    try:
        params_path, workspace = os.environ[PARAMS_ENV], os.environ[WORKSPACE_ENV]
    except KeyError as exc:
        raise RuntimeError(
            f"{exc.args[0]} is not set: tinyops's Flower apps run under `tinyops stage train` "
            "with train.paradigm federated"
        ) from None
    return Job(load_params(params_path), Path(workspace))


def job_env(params_path: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a federated run's processes start with."""
    env = dict(os.environ if base is None else base)
    env.update(FLOWER_ENV)
    env[PARAMS_ENV] = str(params_path.resolve())
    env[WORKSPACE_ENV] = str(Path.cwd().resolve())
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"  # one core per client
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SITE), env.get("PYTHONPATH", "")]))
    return env


def pairs(env_name: str) -> set[tuple[int, int]]:
    """The (round, client) pairs an injection variable names."""
    text = os.environ.get(env_name, "").strip()
    out = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        rnd, _, client = item.partition(":")
        out.add((int(rnd), int(client)))
    return out
