"""Checks that take a second and would otherwise fail a run after minutes of training: the
MLflow store answers and takes writes, the disk has room, the workers fit the cores.
(params.yaml, the device catalogue included, is validated as it is loaded.)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.core import tracking
from pipeline.core.config import Params
from pipeline.core.errors import ConfigError, PipelineError

# What one run writes at most with the default model (data, checkpoints, 4 variants, bundles,
# the DVC cache copies, MLflow artifacts), with a wide margin.
MIN_FREE_BYTES = 512 * 1024 * 1024


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_threads(params: Params) -> None:
    tp = params.train
    if tp.oversubscribe:
        return
    if tp.backend != "nccl" and tp.nproc_per_node * tp.threads_per_proc > cores():
        raise ConfigError(
            f"train.nproc_per_node × train.threads_per_proc = {tp.nproc_per_node} × "
            f"{tp.threads_per_proc} = {tp.nproc_per_node * tp.threads_per_proc} threads, but this "
            f"machine has {cores()} core(s); oversubscribing only slows training. Lower one of them "
            "(or set train.oversubscribe: true to run it anyway, e.g. a hybrid mesh for a test)."
        )


def check_disk(path: Path = Path("."), need: int = MIN_FREE_BYTES) -> None:
    free = shutil.disk_usage(path).free
    if free < need:
        raise PipelineError(
            f"only {free / 2**20:,.0f} MiB free on the disk holding {path.resolve()}; a run needs "
            f"about {need / 2**20:,.0f} MiB. Free some space (`dvc gc` drops old cached outputs)."
        )


def check_mlflow() -> None:
    """Reach the store and write to it (the experiment is created if missing)."""
    uri = tracking.tracking_uri()
    try:
        c = tracking.client()
        exp = tracking.experiment_id(c)
        c.set_experiment_tag(exp, "tinyops.preflight", "ok")
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PipelineError(
            f"the MLflow store {uri} is not reachable or not writable ({reason}). Check "
            "MLFLOW_TRACKING_URI and that its folder exists and is writable."
        ) from None


def require_model_file(path: Path) -> None:
    """model.arch tflite: the given file is there (train would find out only after prepare)."""
    if not path.is_file():
        raise ConfigError(f"model.path {path}: no such file (put your .tflite in user_models/)")


def check_files(params: Params) -> None:
    """The files params.yaml names that no stage makes: checked by `tinyops check` and before
    a run."""
    if params.model.arch == "tflite" and params.model.path:
        require_model_file(Path(params.model.path))


def preflight(params: Params) -> None:
    check_threads(params)
    check_disk()
    check_mlflow()
    check_files(params)
