"""Running the pipeline: each stage through `dvc repro --single-item`, so DVC alone decides what is
stale (params, code, data) and a stage with nothing new is skipped whoever runs it (`tinyops run`,
the Prefect flow, or a bare `dvc repro`). One run at a time per workspace, by a file lock.

`run_pipeline` runs the stages in order in this process; flows/retrain.py runs the same stages
as Prefect tasks. Both open one MLflow parent run and hand its id to every stage process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import freshness, tracking
from pipeline.config import Params, load_params
from pipeline.errors import PipelineError, TinyopsError
from pipeline.stages import run_tags

LOCK_FILE = Path(".tinyops/pipeline.lock")
TRAINING_STAGES = ("prepare", "train", "export", "evaluate")
# Exit codes of failures that a retry cannot fix: bad config or data, failed int8 check,
# a device budget, a registry refusal (see pipeline/errors.py and the deploy module).
NOT_RETRYABLE = {2, 3, 6, 9, 10}
_DVC_LOCK = threading.Lock()  # mapped deploy tasks share one DVC repo: one repro at a time


class PipelineBusyError(TinyopsError):
    """Another pipeline run holds this workspace."""

    exit_code = 11


class StageFailed(PipelineError):
    """A stage's command failed; `retryable` says whether trying again could help."""

    def __init__(self, target: str, code: int, tail: str) -> None:
        self.target, self.code = target, code
        self.retryable = code not in NOT_RETRYABLE
        kind = "transient or unknown" if self.retryable else "not retryable"
        super().__init__(f"stage '{target}' failed with exit code {code} ({kind}):\n{tail}")


@dataclass(frozen=True)
class StageOutcome:
    target: str
    ran: bool  # False: DVC found nothing changed and skipped it


def stage_targets(params: Params) -> list[str]:
    """Every DVC stage in pipeline order (deploy once per device)."""
    return [*TRAINING_STAGES, *(f"deploy@{d}" for d in sorted(params.devices)), "report"]


def tool(name: str) -> str:
    """The executable from this interpreter's environment, so a bare checkout needs no activation."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def stage_env(parent_run_id: str) -> dict[str, str]:
    env = dict(os.environ)
    env[tracking.ENV_PARENT] = parent_run_id
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def repro_stage(
    target: str,
    env: dict[str, str],
    on_line: Callable[[str], None] = print,
    force: bool = False,
) -> StageOutcome:
    """`dvc repro --single-item TARGET`, streaming its output (rank 0's included) line by line."""
    cmd = [tool("dvc"), "repro", "--single-item", *(["--force"] if force else []), target]
    lines: list[str] = []
    with (
        _DVC_LOCK,
        subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            on_line(line)
        code = proc.wait()
    text = "\n".join(lines)
    if code != 0:
        found = re.search(r"exited with (\d+)", text)
        raise StageFailed(target, int(found.group(1)) if found else code, "\n".join(lines[-15:]))
    return StageOutcome(target, ran=f"Running stage '{target}'" in text)


def stale_stages(env: dict[str, str] | None = None) -> list[str]:
    """What `dvc status` finds out of date (changed deps, params, code or missing outputs)."""
    import json

    proc = subprocess.run(
        [tool("dvc"), "status", "--json"], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise PipelineError(f"`dvc status` failed:\n{(proc.stderr or proc.stdout).strip()}")
    return sorted(json.loads(proc.stdout or "{}"))


def anything_new(fp: freshness.Fingerprint, env: dict[str, str]) -> tuple[bool, str]:
    """Whether to run, and why: new data, params or code since the last success, or stale DVC."""
    last = freshness.unchanged(fp)
    if last is None:
        return True, "; ".join(freshness.changes(fp))
    stale = stale_stages(env)
    if stale:
        return True, f"DVC finds stages out of date: {', '.join(stale)}"
    return False, (
        f"nothing new since the last successful run (MLflow run {last.get('mlflow_run_id')}): "
        "raw data, params and code hash the same and DVC finds every stage up to date. "
        "Pass --force to retrain anyway."
    )


def nothing_new(params_path: Path) -> str | None:
    """Why a run would be skipped, decided read-only and without an orchestrator; None when
    there is something to do or another run holds the workspace (the full path then decides).

    `tinyops run` asks this before starting Prefect's ephemeral server, which costs more than
    the check itself; against a running server the flow decides, so the skip is on record there.
    """
    from pipeline.ingest import pending_raw

    params = load_params(params_path)
    try:
        with workspace_lock():
            if pending_raw():
                return None
            new, why = anything_new(freshness.fingerprint(params), dict(os.environ))
    except PipelineBusyError:
        return None
    return None if new else why


@contextlib.contextmanager
def workspace_lock(wait: bool = False) -> Iterator[None]:
    """Hold the workspace for one pipeline run; a second run waits (wait=True) or fails clearly."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise PipelineBusyError(
                f"another pipeline run (pid {holder}) is running in this workspace and holds "
                f"{LOCK_FILE}; wait for it to finish (or pass --wait)."
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_parent(params: Params, extra_tags: dict[str, str] | None = None) -> tracking.Run:
    c = tracking.client()
    parent = tracking.start_parent(c, "pipeline", {**run_tags(), **(extra_tags or {})})
    parent.log_params(tracking.flatten("", params.model_dump(mode="json")))
    return parent


def close_parent(parent: tracking.Run, status: str) -> dict[str, Any]:
    """Tag and log the final metrics (when there are any) and end the parent run."""
    metrics: dict[str, Any] = {}
    path = Path("metrics/evaluate.json")
    if status == "FINISHED" and path.is_file():
        import json

        metrics = json.loads(path.read_text())
        parent.set_tags(run_tags())
        parent.log_metrics(metrics)
    parent.client.set_terminated(parent.run_id, status)
    return metrics


def fingerprint_tags(fp: freshness.Fingerprint) -> dict[str, str]:
    return {
        "tinyops.raw_data_sha256": fp.data,
        "tinyops.params_sha256": fp.params,
        "tinyops.code_sha256": fp.code,
    }


def run_pipeline(params_path: Path, force: bool = False, wait: bool = False) -> dict[str, Any]:
    """Every stage in order, in this process (no orchestrator); the flow's logic without Prefect."""
    from pipeline.ingest import ingest_raw

    params = load_params(params_path)  # stop on a bad config before any work
    with workspace_lock(wait):
        ingest_raw()
        fp = freshness.fingerprint(params)
        new, why = anything_new(fp, dict(os.environ))
        if not (new or force):
            print(why)
            return {"skipped": True, "reason": why, "ran": []}
        parent = open_parent(params, fingerprint_tags(fp))
        env = stage_env(parent.run_id)
        status = "FAILED"
        try:
            outcomes = [repro_stage(t, env, force=force) for t in stage_targets(params)]
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            metrics = close_parent(parent, status)
        freshness.record_success(fp, mlflow_run_id=parent.run_id)
    return {"run_id": parent.run_id, "ran": [o.target for o in outcomes if o.ran], **metrics}
