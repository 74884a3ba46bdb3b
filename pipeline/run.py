"""`tinyops run`: the whole pipeline as one tracked execution, driven by `dvc repro`.

DVC decides which stages are stale (params, code, data), so the same run reproduces the same
outputs and a run with nothing changed does nothing. The MLflow parent run is opened here and
its id handed to every stage process through the environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.config import load_params
from pipeline.errors import PipelineError
from pipeline.stages import run_tags


def _tool(name: str) -> str:
    """The executable from this interpreter's environment, so a bare checkout needs no activation."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def run_pipeline(params_path: Path, force: bool = False) -> dict[str, Any]:
    params = load_params(params_path)  # stop on a bad config before any work
    c = tracking.client()
    parent = tracking.start_parent(c, "pipeline", run_tags())
    parent.log_params(tracking.flatten("", params.model_dump(mode="json")))
    env = dict(os.environ)
    env[tracking.ENV_PARENT] = parent.run_id
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [_tool("dvc"), "repro", *(["--force"] if force else [])]
    status = "FAILED"
    try:
        code = subprocess.run(cmd, env=env).returncode
        if code != 0:
            raise PipelineError(
                f"`{' '.join(cmd[1:])}` failed (exit {code}); see the stage error above."
            )
        metrics = json.loads(Path("metrics/evaluate.json").read_text())
        parent.set_tags(run_tags())
        parent.log_metrics(metrics)
        status = "FINISHED"
        return {"run_id": parent.run_id, **metrics}
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        c.set_terminated(parent.run_id, status)
