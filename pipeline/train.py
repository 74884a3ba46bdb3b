"""Stage `train`: check the job fits the machine, then launch DDP workers with torchrun.

The workers (pipeline/train_worker.py) run in their own processes, so this process never
imports torch's CUDA state; it only asks torch whether CUDA exists when the backend is `auto`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Params
from pipeline.errors import ConfigError, TrainingError
from pipeline.preflight import check_disk, check_threads

TIMING_FILE = Path(".tinyops/train_timing.json")
WRITER_ENV = "TINYOPS_WRITER_NODE"  # marks the node whose local rank 0 writes (see train_worker)


@dataclass(frozen=True)
class TrainResult:
    model_path: Path
    summary: dict
    timing: dict


def _cuda_devices() -> int:
    """Count GPUs in a child process, so CUDA is never initialised in this one."""
    probe = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip() or 0)
    except (subprocess.CalledProcessError, ValueError):
        return 0


def resolve_backend(params: Params) -> str:
    tp = params.train
    gpus = _cuda_devices() if tp.backend in ("auto", "nccl") else 0
    backend = tp.backend if tp.backend != "auto" else ("nccl" if gpus else "gloo")
    if backend == "nccl":
        if gpus == 0:
            raise ConfigError(
                "train.backend is 'nccl' but no CUDA device is visible; use 'gloo' or 'auto'."
            )
        if tp.nproc_per_node > gpus:
            raise ConfigError(
                f"train.nproc_per_node = {tp.nproc_per_node} but only {gpus} GPU(s) are visible; "
                "NCCL needs one GPU per worker."
            )
    return backend


def check_world_fits(params: Params, n_train: int, backend: str) -> None:
    """Fail in the first second, not after an epoch: threads, batch split, dataset size."""
    tp = params.train
    if backend == "gloo":
        check_threads(params)
    check_disk()
    world = tp.nproc_per_node * tp.nnodes
    if tp.batch_size % world:
        raise ConfigError(
            f"train.batch_size = {tp.batch_size} does not split evenly over {world} worker(s); "
            f"use a multiple of {world}."
        )
    if tp.batch_size > n_train:
        raise ConfigError(
            f"train.batch_size = {tp.batch_size} is larger than the training split ({n_train} samples)."
        )


def torchrun_command(
    params: Params, params_path: Path, run_id: str | None, backend: str
) -> list[str]:
    tp = params.train
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(tp.nproc_per_node),
        "--max-restarts",
        str(tp.max_restarts),
    ]
    if tp.nnodes == 1:
        cmd += ["--standalone"]
    else:
        cmd += [
            "--nnodes",
            str(tp.nnodes),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            str(tp.rdzv_endpoint),
            "--rdzv-id",
            "tinyops-train",
        ]
    cmd += [
        "-m",
        "pipeline.train_worker",
        "--params",
        str(params_path),
        "--backend",
        backend,
        "--timing-file",
        str(TIMING_FILE),
    ]
    if run_id:
        cmd += ["--run-id", run_id]
    return cmd


def worker_env(params: Params) -> dict[str, str]:
    """Thread counts set on purpose per worker; deterministic cuBLAS; quiet torchrun."""
    threads = str(params.train.threads_per_proc)
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
            "PYTHONHASHSEED": str(params.train.seed),
            "TORCHELASTIC_ERROR_FILE": str(Path(".tinyops/torchrun_error.json").resolve()),
            WRITER_ENV: "1",
        }
    )
    return env


def train(
    params: Params,
    params_path: Path,
    n_train: int,
    run_id: str | None = None,
) -> TrainResult:
    """Run torchrun to completion; rank 0's output goes straight to this process's stdout/stderr."""
    backend = resolve_backend(params)
    check_world_fits(params, n_train, backend)
    TIMING_FILE.parent.mkdir(parents=True, exist_ok=True)
    cmd = torchrun_command(params, params_path, run_id, backend)
    env = worker_env(params)
    code = subprocess.run(cmd, env=env).returncode
    if code != 0:
        raise TrainingError(
            f"torchrun exited with status {code}; the worker's error is printed above "
            f"(and in {env['TORCHELASTIC_ERROR_FILE']} when torchrun recorded one)."
        )
    summary = json.loads(Path("metrics/train.json").read_text())
    timing = json.loads(TIMING_FILE.read_text()) if TIMING_FILE.is_file() else {}
    return TrainResult(model_path=Path("models/model.pt"), summary=summary, timing=timing)
