"""Stage `train`: check the job fits the machine, then launch the workers of model.framework:
torch's under torchrun (pipeline/training/worker.py), Keras's as a MultiWorkerMirroredStrategy
group (pipeline/training/keras_launch.py, keras_worker.py).

The workers run in their own processes, so this process imports neither torch nor TensorFlow;
it only asks torch, in a child process, whether CUDA exists when the torch backend is `auto`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core import atomic, catalog, procs
from pipeline.core.config import Params, parallel_plan
from pipeline.core.errors import ConfigError, TrainingError
from pipeline.core.parallel import STATE_BYTES_PER_PARAM, worker_model_state_bytes
from pipeline.core.preflight import check_disk, check_threads
from pipeline.training import nodes
from pipeline.training.loop import WRITER_ENV

if TYPE_CHECKING:
    from pipeline.core.tracking import Run

# The writer rank appends its epoch metrics to METRICS_LOG, one JSON line each.
TIMING_FILE, METRICS_LOG = catalog.TRAIN_TIMING, catalog.TRAIN_METRICS_LOG
FLUSH_SECONDS = 10.0  # how often epoch metrics go to MLflow while training runs


@dataclass(frozen=True)
class TrainResult:
    model_path: Path
    summary: dict
    timing: dict


# What a machine with a CUDA (or ROCm, which torch.cuda also counts) device shows: its driver's
# device nodes. Without any, no probe can find a GPU, and the probe costs a torch import.
GPU_DRIVER_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/proc/driver/nvidia/gpus")


def _cuda_devices() -> int:
    """Count GPUs in a child process, so CUDA is never initialised in this one; none without a
    GPU driver on the machine (the probe would only say so a second later)."""
    if not any(os.path.exists(node) for node in GPU_DRIVER_NODES):
        return 0
    probe = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip() or 0)
    except (subprocess.CalledProcessError, ValueError):
        return 0


def resolve_backend(params: Params) -> str:
    """The collective backend: torch's gloo or nccl; `tf` for Keras (tensorflow-cpu, MWMS's own
    ring all-reduce over gRPC)."""
    tp = params.train
    if params.model.framework == "keras":
        return "tf"
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
    if backend != "nccl":
        check_threads(params)
    check_disk()
    for count in range(tp.min_nodes, tp.max_nodes + 1):  # every world an elastic job may form
        parallel_plan(params, world=count * tp.nproc_per_node)  # the batch splits evenly
    if tp.batch_size > n_train:
        raise ConfigError(
            f"train.batch_size = {tp.batch_size} is larger than the training split ({n_train} samples)."
        )


def check_memory(params: Params, block_params: list[int]) -> None:
    """train.max_worker_memory_mb against the model state one worker would hold under this
    strategy (parameters, gradients, AdamW moments), before any worker starts."""
    budget = params.train.max_worker_memory_mb
    if budget is None:
        return
    plan = parallel_plan(params)
    need = worker_model_state_bytes(plan, block_params)
    if need <= budget * 2**20:
        return
    others = {
        other: worker_model_state_bytes(parallel_plan(_with(params, other), False), block_params)
        for other in ("fsdp", "pipeline")
        if _valid(params, other)
    }
    fits = [f"{k} ({v / 2**20:.2f} MiB)" for k, v in others.items() if v <= budget * 2**20]
    hint = f"With this world, {' or '.join(fits)} would fit. " if fits else ""
    raise ConfigError(
        f"train.parallelism {plan.parallelism} needs {need / 2**20:.2f} MiB of model state on one "
        f"worker ({sum(block_params):,} parameters × {STATE_BYTES_PER_PARAM} B: weights, "
        f"gradients, AdamW's moments; {plan.describe()}), over train.max_worker_memory_mb = "
        f"{budget:g}. {hint}Split the model over workers with parallelism pipeline or fsdp, "
        "or raise the budget."
    )


def _with(params: Params, parallelism: str) -> Params:
    return params.model_copy(
        update={"train": params.train.model_copy(update={"parallelism": parallelism})}
    )


def _valid(params: Params, parallelism: str) -> bool:
    try:
        parallel_plan(_with(params, parallelism), batch_size=False)
    except ConfigError:
        return False
    return True


def torchrun_command(
    params: Params,
    params_path: Path,
    backend: str,
    node0: bool = True,
    address: str = "",
    endpoint: str | None = None,
) -> list[str]:
    """torchrun for this node: standalone on one, or joining the c10d rendezvous (node 0
    hosting its store; `endpoint` as this node reaches it) with this node's `address` on
    several (pipeline/training/nodes.py)."""
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
    if tp.max_nodes == 1:
        cmd += ["--standalone"]
    else:
        cmd += nodes.agent_arguments(params, node0, address or _address(params), endpoint)
    cmd += [
        "-m",
        "pipeline.training.worker",
        "--params",
        str(params_path),
        "--backend",
        backend,
        "--timing-file",
        str(TIMING_FILE),
        "--metrics-log",
        str(METRICS_LOG),
    ]
    return cmd


def _address(params: Params) -> str:
    """This node's address as the other nodes reach it: node 0's is the rendezvous host."""
    return nodes.split_endpoint(str(params.train.rdzv_endpoint))[0]


def worker_env(params: Params, node0: bool = True, address: str = "") -> dict[str, str]:
    """Thread counts set on purpose per worker; deterministic cuBLAS; quiet torchrun; the
    multi-node settings (pipeline/training/nodes.py); whether this node's first worker writes."""
    threads = str(params.train.threads_per_proc)
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
            "PYTHONHASHSEED": str(params.train.seed),
            "TORCHELASTIC_ERROR_FILE": str(Path(".tinyops/torchrun_error.json").resolve()),
            WRITER_ENV: "1" if node0 else "0",
        }
    )
    if params.train.max_nodes > 1:
        env = nodes.agent_env(address or _address(params), env)
    return env


class MetricsForwarder:
    """Sends the writer rank's metric lines to MLflow in one batch every FLUSH_SECONDS.

    The workers only append lines to a file: they never import mlflow and never wait on the
    tracking store, so a slow or remote store costs this idle process time, not training time.
    """

    def __init__(self, path: Path, run: Run | None) -> None:
        self.path, self.run = path, run
        self.offset = 0
        self.seconds = 0.0  # spent here logging, reported beside the training time

    def flush(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # whole lines only; a line being written waits
        self.offset += end
        rows = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
        if self.run is not None and rows:
            start = time.perf_counter()
            self.run.log_metric_rows(rows)
            self.seconds += time.perf_counter() - start


def _stop(proc: Any) -> None:
    """torchrun (and the Keras group) pass SIGTERM on to the workers; SIGKILL only if they
    do not go."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _start_torchrun(params: Params, params_path: Path, backend: str) -> Any:
    return subprocess.Popen(torchrun_command(params, params_path, backend), env=worker_env(params))


class Watcher:
    """Node 0's rendezvous watcher (several torch nodes): started beside torchrun, stopped with
    its process group on every path; its log lines (each round's members) are echoed here."""

    def __init__(self, params: Params) -> None:
        self.params, self.service, self.offset = params, None, 0

    def __enter__(self) -> Watcher:
        if self.params.train.max_nodes > 1:
            nodes.WATCH_LOG.unlink(missing_ok=True)
            nodes.WATCH_STATE.unlink(missing_ok=True)
            # Keras has no rendezvous agent: the watcher hosts the store it publishes in.
            command = nodes.watcher_command(self.params, _address(self.params))
            command += ["--host"] if self.params.model.framework == "keras" else []
            self.service = procs.start("rendezvous watcher", command, nodes.WATCH_LOG,
                                       healthy=lambda: True, env=nodes.quiet_env())  # fmt: skip
        return self

    def echo(self) -> None:
        if self.service is None:
            return
        text = self.service.log_tail(1 << 20)
        for line in text[self.offset :].splitlines():
            print(f"nodes: {line}", file=sys.stderr, flush=True)
        self.offset = len(text)

    def __exit__(self, *exc: object) -> None:
        if self.service is not None:
            self.echo()
            self.service.stop(grace=5.0)


def _start_keras(params: Params, params_path: Path, backend: str) -> Any:
    from pipeline.training.keras_launch import WorkerGroup, worker_command

    command = worker_command(params_path, TIMING_FILE, METRICS_LOG)
    return WorkerGroup(params, command, say=lambda text: print(text, file=sys.stderr, flush=True))


def _wait(proc: Any, forwarder: MetricsForwarder, watcher: Watcher | None = None) -> int:
    """The workers' exit status, forwarding metrics (and node rounds) while they run; on any
    interruption the workers are stopped first."""
    try:
        while True:
            try:
                code = proc.wait(timeout=FLUSH_SECONDS)
                break
            except subprocess.TimeoutExpired:
                forwarder.flush()
                if watcher:
                    watcher.echo()
    except BaseException:
        _stop(proc)
        with contextlib.suppress(Exception):
            forwarder.flush()  # what was trained before the interruption stays visible
        raise
    forwarder.flush()
    return int(code)


def join(params: Params, params_path: Path, endpoint: str | None = None) -> int:
    """`tinyops worker`: this node joins node 0's training job from its own clone, once its
    code, params and prepared data hash as node 0's do. Its workers print nothing and write
    nothing but their own checkpoints: node 0 writes. The workers' exit status is returned."""
    tp = params.train
    if tp.max_nodes == 1:
        raise ConfigError(
            "tinyops worker joins a job of several nodes: set train.nnodes (2, or '1:2' for "
            "torch) and train.rdzv_endpoint in params.yaml, as on node 0"
        )
    endpoint = endpoint or str(tp.rdzv_endpoint)
    address = nodes.local_address(endpoint)
    checked = subprocess.run(
        nodes.check_command(params, endpoint), capture_output=True, text=True, env=nodes.quiet_env()
    )
    if checked.returncode != 0:
        raise ConfigError(checked.stderr.strip() or f"the node check failed ({checked.returncode})")
    print(f"worker: joining {endpoint} as {address}", file=sys.stderr, flush=True)
    proc = JOINERS[params.model.framework](params, params_path, address, endpoint)
    return _wait(proc, MetricsForwarder(Path(os.devnull), None))


def _join_torchrun(params: Params, params_path: Path, address: str, endpoint: str) -> Any:
    backend = resolve_backend(params)
    command = torchrun_command(params, params_path, backend, False, address, endpoint)
    return subprocess.Popen(command, env=worker_env(params, node0=False, address=address))


def _join_keras(params: Params, params_path: Path, address: str, endpoint: str) -> Any:
    """This node's Keras workers at its place in train.worker_hosts (found by its address);
    they reach the others there, so `endpoint` served the fingerprint check only."""
    from pipeline.training.keras_launch import NODE_RANK_ENV

    hosts = [entry.rpartition(":")[0] for entry in params.train.worker_hosts]
    if address not in hosts[1:]:
        raise ConfigError(
            f"this node's address {address} is not among train.worker_hosts after node 0's "
            f"({', '.join(params.train.worker_hosts)}): list it there, in node order"
        )
    os.environ[NODE_RANK_ENV] = str(hosts.index(address, 1))
    return _start_keras(params, params_path, "tf")


# model.framework → how its workers start: a Popen-like object (wait, terminate, kill).
LAUNCHERS = {"torch": _start_torchrun, "keras": _start_keras}
JOINERS = {"torch": _join_torchrun, "keras": _join_keras}  # the same on a node that joins


def _start_centralized(params: Params, params_path: Path, backend: str) -> Any:
    return LAUNCHERS[params.model.framework](params, params_path, backend)


def _start_federated(params: Params, params_path: Path, backend: str) -> Any:
    """Flower's engine (pipeline/training/federated/engines.py): the server runs the training loop."""
    from pipeline.training.federated.engines import start

    check_partitions(params)
    return start(params, params_path)


# train.paradigm → what trains: torchrun's or Keras's workers, or a federated engine.
PARADIGMS = {"centralized": _start_centralized, "federated": _start_federated}


def _centralized_failed(params: Params, code: int) -> str:
    return (
        f"training ({params.model.framework} workers) exited with status {code}; the worker's "
        "error is printed above (torchrun also records it in .tinyops/torchrun_error.json)."
        + nodes.lost_nodes()
    )


def _federated_failed(params: Params, code: int) -> str:
    engine = params.train.federated.engine
    return (
        f"federated training ({engine} engine) exited with status {code}; the server's error is "
        f"printed above"
        + (f" (Flower's logs: {catalog.FLOWER_DIR}/)." if engine == "deployment" else ".")
        + " Rerun to resume from the last complete round."
    )


FAILED = {"centralized": _centralized_failed, "federated": _federated_failed}


def check_partitions(params: Params) -> None:
    """The client shards prepare wrote are this job's (prepare reruns under DVC when
    train.federated changes; by hand, it may not have)."""
    from pipeline.core.extras import require

    require("flwr", "train.paradigm federated")
    require("ray", "train.paradigm federated")
    fp = params.train.federated
    parts = catalog.read(catalog.PARTITIONS_FILE, catalog.Partitions, "prepare")
    if len(parts.clients) != fp.clients or parts.partition != fp.partition:
        raise ConfigError(
            f"{catalog.PARTITIONS_FILE} holds {len(parts.clients)} {parts.partition} shards; "
            f"params ask for {fp.clients} {fp.partition}: run `tinyops stage prepare` again"
        )


def train(
    params: Params,
    params_path: Path,
    n_train: int,
    run: Run | None = None,
    block_params: list[int] | None = None,
) -> TrainResult:
    """Run the workers to completion, forwarding epoch metrics to `run` as they come; the
    writer's output goes straight to this process's stdout/stderr."""
    backend = resolve_backend(params)
    check_world_fits(params, n_train, backend)
    if block_params is not None:
        check_memory(params, block_params)
    TIMING_FILE.parent.mkdir(parents=True, exist_ok=True)
    METRICS_LOG.unlink(missing_ok=True)
    forwarder = MetricsForwarder(METRICS_LOG, run)
    with Watcher(params) as watcher:
        code = _wait(PARADIGMS[params.train.paradigm](params, params_path, backend), forwarder,
                     watcher)  # fmt: skip
    if code != 0:
        raise TrainingError(FAILED[params.train.paradigm](params, code))
    summary = json.loads(catalog.TRAIN_METRICS.read_text())
    timing = json.loads(TIMING_FILE.read_text()) if TIMING_FILE.is_file() else {}
    if timing:
        timing["mlflow_log_seconds"] = forwarder.seconds
        atomic.write_json(TIMING_FILE, timing)
    return TrainResult(model_path=catalog.TRAINED_DIR, summary=summary, timing=timing)
