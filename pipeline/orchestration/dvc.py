"""DVC as the pipeline's engine: the stage list comes from dvc.yaml, each stage runs through
`dvc repro --single-item`, and a stage's outcome comes from the status file its `tinyops stage`
process writes (pipeline/stages.py), never from DVC's printed text.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.core import catalog, tracking
from pipeline.core.errors import ArtifactError, DvcRefusal, PipelineError, retryable
from pipeline.core.quiet import is_noise

DVC_YAML = Path("dvc.yaml")
_DVC_LOCK = threading.Lock()  # mapped deploy tasks share one DVC repo: one repro at a time
# What DVC prints when another DVC process holds the repo: the one refusal a retry can fix.
DVC_BUSY = "Unable to acquire lock"
# DVC's hints after each stage: the run path commits nothing and pushes nothing itself, so they
# only repeat in every stage's log (blank lines between them go too).
DVC_HINTS = (
    "To track the changes with git, run:",
    "git add ",
    "To enable auto staging, run:",
    "dvc config core.autostage true",
    "Use `dvc push` to send your updates to remote storage.",
)


def is_hint(line: str) -> bool:
    """One of DVC's after-stage hints, a blank line (DVC frames its hints with them), or a line
    a library prints that no user can act on (pipeline/core/quiet.py)."""
    text = line.strip()
    return not text or any(text.startswith(hint) for hint in DVC_HINTS) or is_noise(text)


class StageFailed(PipelineError):
    """A stage's command failed; `retryable` says whether trying again could help (the error
    family's own rule, pipeline/core/errors.py)."""

    def __init__(self, target: str, code: int, tail: str) -> None:
        self.target, self.code = target, code
        self.retryable = retryable(code)
        kind = "transient or unknown" if self.retryable else "not retryable"
        super().__init__(f"stage '{target}' failed with exit code {code} ({kind}):\n{tail}")


def failure_code(status: catalog.StageStatus | None, dvc_code: int, output: str) -> int:
    """The exit code a failed `dvc repro` stands for: the stage's own, from its status file; or,
    when the stage never started (no status file), DVC's refusal, unless DVC was only busy."""
    if status is not None:
        return status.exit_code
    return dvc_code if DVC_BUSY in output else DvcRefusal.exit_code


@dataclass(frozen=True)
class StageOutcome:
    target: str
    ran: bool  # False: DVC found nothing changed and skipped it


def stage_names(dvc_yaml: Path = DVC_YAML) -> list[str]:
    """The stages of dvc.yaml in the order they are declared (the pipeline's order)."""
    import yaml

    return list(yaml.safe_load(dvc_yaml.read_text())["stages"])


def stage_targets(devices: list[str], dvc_yaml: Path = DVC_YAML) -> list[str]:
    """Every DVC target in pipeline order, a `foreach` stage expanded once per device."""
    import yaml

    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    targets: list[str] = []
    for name, body in stages.items():
        if "foreach" in body:
            targets += [f"{name}@{key}" for key in sorted(devices)]
        else:
            targets.append(name)
    return targets


def tracked_params(dvc_yaml: Path = DVC_YAML) -> list[str]:
    """The params.yaml keys dvc.yaml's stages track (a section, or section.key), in order; a
    foreach stage's per-item keys (devices.${key}) exist by construction and are left out."""
    import yaml

    keys: list[str] = []
    for body in yaml.safe_load(dvc_yaml.read_text())["stages"].values():
        for key in body.get("do", body).get("params") or []:
            if isinstance(key, str) and "${" not in key:
                keys.append(key)
    return list(dict.fromkeys(keys))


def require_tracked(params_path: Path, dvc_yaml: Path = DVC_YAML) -> None:
    """Refuse a params file without every key DVC tracks, before any stage: DVC would refuse
    the first stage that tracks one, after the ones before it had run."""
    from pipeline.core.config import missing_keys, read_params
    from pipeline.core.errors import ConfigError

    missing = missing_keys(read_params(params_path) or {}, tracked_params(dvc_yaml))
    if missing:
        raise ConfigError(
            f"{params_path} leaves out keys that dvc.yaml tracks: {', '.join(missing)}. DVC "
            "would refuse the stage that reads them after the earlier stages had run. Run "
            "`tinyops check --write` to fill them in with their defaults."
        )


def tool(name: str) -> str:
    """The executable from this interpreter's environment, so a bare checkout needs no activation."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def stage_env(parent_run_id: str) -> dict[str, str]:
    """The environment of a stage process: this interpreter's tools first, the parent run named."""
    env = dict(os.environ)
    env[tracking.ENV_PARENT] = parent_run_id
    env[catalog.ENV_STAGE_STATUS] = str(catalog.STAGE_STATUS_DIR.resolve())
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _stage_status(target: str, env: dict[str, str]) -> catalog.StageStatus | None:
    path = catalog.stage_status_file(target, Path(env[catalog.ENV_STAGE_STATUS]))
    try:
        return catalog.read(path, catalog.StageStatus, target)
    except ArtifactError:
        return None


def repro_stage(
    target: str,
    env: dict[str, str],
    on_line: Callable[[str], None] = print,
    force: bool = False,
) -> StageOutcome:
    """`dvc repro --single-item TARGET`, streaming its output (rank 0's included) line by line.

    Whether the stage ran, and its exit code, come from the status file the stage writes: no
    file means DVC found it up to date (or DVC itself failed before running it).
    """
    cmd = [tool("dvc"), "repro", "--single-item", *(["--force"] if force else []), target]
    lines: list[str] = []
    with _DVC_LOCK:
        env = {catalog.ENV_STAGE_STATUS: str(catalog.STAGE_STATUS_DIR.resolve()), **env}
        catalog.stage_status_file(target, Path(env[catalog.ENV_STAGE_STATUS])).unlink(
            missing_ok=True
        )
        with subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if not is_hint(lines[-1]):
                    on_line(lines[-1])
            code = proc.wait()
        status = _stage_status(target, env)
    if code != 0:
        output = "\n".join(lines)
        tail = [line for line in lines if not is_noise(line)][-15:]  # what a user can act on
        raise StageFailed(target, failure_code(status, code, output), "\n".join(tail))
    return StageOutcome(target, ran=status is not None)


def push(env: dict[str, str] | None = None) -> str | None:
    """`dvc push` to the default remote, after a success: what happened, in one line (None: no
    remote is set). A failure is said, not raised: the run's outputs are complete here, and
    `dvc push` retries it."""
    from pipeline.core.stores import dvc_remote, redact, scrub

    remote = dvc_remote()
    if remote is None:
        return None
    name, url = remote
    where = f"dvc push to '{name}' ({redact(url)})"
    proc = subprocess.run([tool("dvc"), "push"], env=env, capture_output=True, text=True)
    said = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    last = scrub(said[-1], url) if said else f"exit {proc.returncode}"
    if proc.returncode != 0:
        return f"{where} failed: {last}. The run succeeded; run `dvc push` to retry"
    return f"{where}: {last}"


def stale_stages(env: dict[str, str] | None = None) -> list[str]:
    """What `dvc status` finds out of date (changed deps, params, code or missing outputs)."""
    import json

    proc = subprocess.run(
        [tool("dvc"), "status", "--json"], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise PipelineError(f"`dvc status` failed:\n{(proc.stderr or proc.stdout).strip()}")
    return sorted(json.loads(proc.stdout or "{}"))
