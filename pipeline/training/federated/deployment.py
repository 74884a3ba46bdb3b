"""train.federated.engine deployment: the same ServerApp and ClientApp on Flower's Deployment
Engine, as a real fleet runs them. One SuperLink and one SuperNode per client, each a process
group of its own on a free 127.0.0.1 port (insecure mode: loopback only; docs/federated.md says
how a fleet turns on TLS and SuperNode authentication), and `flwr run` submitting the app.
Every group is stopped on every path: success, failure, Ctrl-C and SIGTERM.

Flower's CLI keeps its SuperLink connections in $FLWR_HOME/config.toml; this run gets its own
FLWR_HOME under .tinyops/flower/, so a user's ~/.flwr is neither read nor written.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

from pipeline.core import atomic, catalog, interrupt, procs
from pipeline.training.federated import job

CONNECTION = "tinyops"  # the SuperLink connection's name in this run's FLWR_HOME
# The Flower App `flwr run` bundles: a manifest only. Its components are tinyops's own modules,
# imported from the project (PYTHONPATH), so the bundle carries no code of its own.
APP_TOML = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "tinyops-federated"
version = "1.0.0"
description = "tinyops federated training (pipeline/training/federated)"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "tinyops"

[tool.flwr.app.components]
serverapp = "pipeline.training.federated.server:app"
clientapp = "pipeline.training.federated.client:app"

[tool.flwr.app.config]
"""


def _listening(port: int) -> bool:
    with socket.create_connection((procs.LOOPBACK, port), timeout=1):
        return True


def _prepare(root: Path, port: int) -> dict[str, str]:
    """This run's FLWR_HOME (one SuperLink connection) and the app folder; the environment."""
    home, app = root / "home", root / "app"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    app.mkdir(parents=True, exist_ok=True)
    atomic.write_text(app / "pyproject.toml", APP_TOML)
    atomic.write_text(home / "config.toml", f'[superlink]\ndefault = "{CONNECTION}"\n\n'
                      f'[superlink.{CONNECTION}]\naddress = "{procs.LOOPBACK}:{port}"\n'
                      "insecure = true\n")  # fmt: skip
    catalog.FLOWER_STATUS.unlink(missing_ok=True)
    env = dict(os.environ, FLWR_HOME=str(home.resolve()))
    env["PYTHONPATH"] = os.pathsep.join([env.get("PYTHONPATH", ""), str(Path.cwd())]).strip(":")
    return env


def start_fleet(stack: ExitStack, root: Path, clients: int, env: dict[str, str]) -> int:
    """The SuperLink and every SuperNode, healthy, each stopped when `stack` closes."""
    bin_dir = Path(sys.executable).parent
    link, *node_ports = procs.free_ports(1 + clients)
    env.update(_prepare(root, link))
    stack.enter_context(procs.start(
        "flower-superlink",
        [str(bin_dir / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
         "--host", procs.LOOPBACK, "--port", str(link), "--database", ":flwr-in-memory-state:"],
        root / "superlink.log", healthy=lambda: _listening(link), env=env))  # fmt: skip
    for i, port in enumerate(node_ports):
        stack.enter_context(procs.start(
            f"flower-supernode {i}",
            [str(bin_dir / "flower-supernode"), "--insecure", "--superlink", f"{procs.LOOPBACK}:{link}",
             "--host", procs.LOOPBACK, "--port", str(port),
             "--node-config", f"partition-id={i} num-partitions={clients}"],
            root / f"supernode-{i}.log", healthy=lambda port=port: _listening(port), env=env))  # fmt: skip
    return link


def main() -> int:
    interrupt.install()
    here = job.current()
    os.chdir(here.workspace)
    root = catalog.FLOWER_DIR
    try:
        return _deploy(here, root)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: the services are stopped by now
        return 143 if isinstance(stop, interrupt.Terminated) else 130


def _deploy(here: job.Job, root: Path) -> int:
    with ExitStack() as stack:
        env = dict(os.environ)
        link = start_fleet(stack, root, here.params.train.federated.clients, env)
        print(f"deployment engine: SuperLink on {procs.LOOPBACK}:{link}, "
              f"{here.params.train.federated.clients} SuperNodes (logs in {root})",
              file=sys.stderr, flush=True)  # fmt: skip
        code = _run_app(root, env)
    return _outcome(root, code)


FLOWER_LINES = ("\x1b[92mINFO", "Flower App configuration", "- Recommended", "Using SuperLink",
                "Successfully")  # fmt: skip


def _run_app(root: Path, env: dict[str, str]) -> int:
    """`flwr run --stream`: it returns when the run ends; the ServerApp's own lines (the
    loop's) are passed on as they come, Flower's bookkeeping is not."""
    flwr = str(Path(sys.executable).parent / "flwr")
    with subprocess.Popen([flwr, "run", str(root / "app"), CONNECTION, "--stream"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as run:  # fmt: skip
        assert run.stdout is not None
        for line in run.stdout:
            if not line.startswith(FLOWER_LINES):
                print(line.rstrip("\n"), file=sys.stderr, flush=True)
        return run.wait()


def _outcome(root: Path, code: int) -> int:
    """The ServerApp's status file says how training ended (`flwr run` only says the run ran)."""
    try:
        status = json.loads(catalog.FLOWER_STATUS.read_text())
    except (OSError, ValueError):
        print(f"federated training: the ServerApp left no status (flwr run exited {code}); see "
              f"{root}/superlink.log", file=sys.stderr)  # fmt: skip
        return code or 2
    if not status["ok"]:
        print(f"federated training failed: {status['error']}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
