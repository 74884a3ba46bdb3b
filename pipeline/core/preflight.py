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
from pipeline.core.stores import Store, redact, scrub

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


# A tracking server that is down is reported in seconds, not after MLflow's minutes of retries.
_QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def mlflow_problem() -> str | None:
    """Why the store cannot be reached or written (the experiment is created if missing), with
    no password in it; None when it can."""
    uri = tracking.tracking_uri()
    saved = {key: os.environ.get(key) for key in _QUICK_HTTP}
    os.environ.update({k: v for k, v in _QUICK_HTTP.items() if saved[k] is None})
    try:
        c = tracking.client()
        exp = tracking.experiment_id(c)
        c.set_experiment_tag(exp, "tinyops.preflight", "ok")
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return scrub(reason, uri)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
    return None


def check_mlflow() -> None:
    problem = mlflow_problem()
    if problem:
        raise PipelineError(
            f"the MLflow store {redact(tracking.tracking_uri())} is not reachable or not "
            f"writable ({problem}). Check MLFLOW_TRACKING_URI and that its folder exists and is "
            "writable, or that its server runs."
        )


def mlflow_store() -> Store:
    """The tracking store, reached and written; an embedded store not made yet is left so."""
    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return Store("MLflow tracking", uri, note="made by the first run")
    return Store("MLflow tracking", redact(uri), mlflow_problem(), "answers, writable")


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
