"""Section `overhead`: what orchestration costs. The flow against plain stages (against a Prefect
server that already runs, as scheduled runs do; the ephemeral server `tinyops run` starts when
none is configured, timed on its own row), no-op reruns, `--help`, MLflow logging."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.bench.harness import (
    Progress,
    Targets,
    checker,
    ephemeral_env,
    interleave,
    summary,
    timed,
)  # fmt: skip
from pipeline.core.catalog import TRAIN_TIMING
from pipeline.core.procs import free_port
from pipeline.orchestration.dvc import tool

ABOUT = "Prefect flow vs plain stages, no-op reruns, --help, MLflow logging share"
MINUTES = 5


def _one_stage_dvc_project() -> Path:
    """A git + DVC project with a single up-to-date stage: what any no-op `dvc repro` costs
    on this machine (start-up, imports, one stage), reported beside the pipeline's 11 stages."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="tinyops-dvc-floor-"))
    dvc = tool("dvc")
    for cmd in (
        ["git", "init", "-q"],
        [dvc, "init", "-q"],
        [dvc, "config", "core.analytics", "false"],
        [
            dvc,
            "stage",
            "add",
            "-q",
            "-n",
            "copy",
            "-d",
            "in.txt",
            "-o",
            "out.txt",
            "cp in.txt out.txt",
        ],
        [dvc, "repro", "-q"],
    ):
        if cmd[1] == "stage":
            (root / "in.txt").write_text("x\n")
        subprocess.run(cmd, cwd=root, check=True, capture_output=True, env=ephemeral_env())
    return root


def _forget_last_success() -> None:
    """Make the next run go through every stage (each one a DVC no-op): pure orchestration."""
    from pipeline.core.catalog import LAST_SUCCESS

    LAST_SUCCESS.unlink(missing_ok=True)


PLAIN = (
    "from pathlib import Path; from pipeline.orchestration.run import run_pipeline; "
    "run_pipeline(Path('params.yaml'))"
)


FLOW_SERVER = "Prefect flow against a running server, tinyops run (s)"


FLOW_EPHEMERAL = "Prefect flow, ephemeral server started by tinyops run (s)"


@contextlib.contextmanager
def _prefect_server() -> Iterator[str]:
    """A Prefect server of its own (`tinyops server` on a free port, a scratch PREFECT_HOME),
    started through the process helper and stopped with its group: the API URL."""
    import tempfile

    from pipeline.core.procs import start

    tinyops = str(Path(sys.executable).parent / "tinyops")
    with tempfile.TemporaryDirectory(prefix="tinyops-bench-prefect-") as home:
        port = free_port()
        api = f"http://127.0.0.1:{port}/api"
        env = {k: v for k, v in ephemeral_env().items() if k != "PREFECT_API_URL"}
        env["PREFECT_HOME"] = home
        argv = [tinyops, "server", "--port", str(port)]
        with start("Prefect server", argv, Path(home) / "server.log", url=f"{api}/health", env=env):
            yield api


def overhead(rounds: int, on_progress: Progress) -> dict[str, Any]:
    """Orchestration costs: the flow against plain stages (the flow reporting to a Prefect server
    that already runs, as scheduled runs do; Prefect's ephemeral server, which `tinyops run`
    starts when none is configured, timed apart), no-op reruns, `--help`, MLflow."""
    tinyops = str(Path(sys.executable).parent / "tinyops")
    with _prefect_server() as api:
        flow = interleave(
            {
                "plain stages, one process (s)": lambda: timed(
                    [sys.executable, "-c", PLAIN], _forget_last_success
                ),
                FLOW_SERVER: lambda: timed([tinyops, "run"], _forget_last_success, api=api),
                FLOW_EPHEMERAL: lambda: timed([tinyops, "run"], _forget_last_success),
            },
            rounds,
            on_progress,
        )
    floor = _one_stage_dvc_project()
    noop = interleave(
        {
            "tinyops --help (s)": lambda: timed([tinyops, "--help"]),
            "dvc repro, nothing changed (s)": lambda: timed([tool("dvc"), "repro"]),
            "dvc repro, nothing changed, 1-stage project: DVC's floor (s)": lambda: timed(
                [tool("dvc"), "repro"], cwd=floor
            ),
            "tinyops run, nothing new (s)": lambda: timed([tinyops, "run"]),
        },
        rounds,
        on_progress,
    )
    shutil.rmtree(floor, ignore_errors=True)
    result = {k: summary(v) for k, v in (flow | noop).items()}
    if TRAIN_TIMING.is_file():
        t = json.loads(TRAIN_TIMING.read_text())
        share = t.get("mlflow_log_seconds", 0.0) / max(t["train_seconds"], 1e-9)
        result["MLflow logging / training time"] = {"median": share}
    return result


def run(rounds: int, progress: Progress) -> dict[str, Any]:
    return {"overhead": overhead(rounds, progress)}


def targets(r: dict[str, Any]) -> Targets:
    """The flow against plain stages has no escape clause: ≤ 1.2, PASS or FAIL."""
    out: list[dict[str, Any]] = []
    check = checker(out)
    o = {k: v["median"] for k, v in r["overhead"].items()}
    flow, plain = o.get(FLOW_SERVER), o.get("plain stages, one process (s)")
    ratio = flow / plain if flow is not None and plain else None
    check(
        "Prefect flow (running server) ÷ plain stages ≤ 1.2",
        ratio,
        None if ratio is None else ratio <= 1.2,
    )
    rerun = o["tinyops run, nothing new (s)"]
    check("rerun with nothing changed ≤ 15 s", rerun, rerun <= 15.0)
    noop = o["dvc repro, nothing changed (s)"]
    check("no-op dvc repro ≤ 2 s", noop, noop <= 2.0)
    check("tinyops --help ≤ 1 s", o["tinyops --help (s)"], o["tinyops --help (s)"] <= 1.0)
    share = o.get("MLflow logging / training time")
    check("MLflow logging ≤ 2% of training", share, share is not None and share <= 0.02)
    return out
