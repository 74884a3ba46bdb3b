"""Launching the Keras workers: what torchrun does for torch, for tf.distribute.

TensorFlow has no launcher of its own: each MultiWorkerMirroredStrategy worker is a process
told its place by TF_CONFIG (the whole cluster's host:port list and its index in it). This
module starts train.nproc_per_node of them on this node, with their thread pools set, and
restarts the whole group when one dies (up to train.max_restarts), as torchrun's elastic agent
does: every worker then resumes from the last complete epoch checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.core.config import Params
from pipeline.core.procs import free_ports
from pipeline.training.loop import WRITER_ENV

POLL_SECONDS = 0.2
NODE_RANK_ENV = "TINYOPS_NODE_RANK"  # which of train.worker_hosts this node is (several nodes)


def cluster(params: Params) -> list[str]:
    """Every worker's host:port in task order. One node: free local ports. Several: node i's
    workers listen on its train.worker_hosts port + local rank."""
    tp = params.train
    if tp.max_nodes == 1:
        return [f"127.0.0.1:{p}" for p in free_ports(tp.nproc_per_node)]
    out = []
    for host_port in tp.worker_hosts:
        host, _, port = host_port.rpartition(":")
        out += [f"{host}:{int(port) + i}" for i in range(tp.nproc_per_node)]
    return out


def tf_config(workers: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def worker_command(params_path: Path, timing_file: Path, metrics_log: Path) -> list[str]:
    return [
        sys.executable, "-m", "pipeline.training.keras_worker", "--params", str(params_path),
        "--timing-file", str(timing_file), "--metrics-log", str(metrics_log),
    ]  # fmt: skip


def worker_env(
    params: Params, workers: list[str], index: int, restart: int, local: int = 0
) -> dict[str, str]:
    """Threads set on purpose per worker (OMP and TensorFlow's pools), the task, quiet TF, and
    what the training loop's writer rule reads (node 0's first worker writes)."""
    threads = str(params.train.threads_per_proc)
    env = dict(os.environ)
    env.update(
        {
            "TF_CONFIG": tf_config(workers, index),
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "TF_NUM_INTRAOP_THREADS": threads,
            "TF_NUM_INTEROP_THREADS": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONHASHSEED": str(params.train.seed),
            "TINYOPS_RESTART": str(restart),
            "LOCAL_RANK": str(local),
            WRITER_ENV: "1" if os.environ.get(NODE_RANK_ENV, "0") == "0" else "0",
            "CUDA_VISIBLE_DEVICES": "-1",  # tensorflow-cpu; never probe a GPU
        }
    )
    return env


class WorkerGroup:
    """This node's Keras workers, behaving like one Popen to the launcher (wait, terminate,
    kill); a worker that exits with an error restarts the whole group."""

    def __init__(self, params: Params, command: list[str], say: Any = print) -> None:
        self.params, self.command, self.say = params, command, say
        self.restarts = 0
        self.stopped = False  # terminate() or kill() was called: no more restarts
        self.procs: list[subprocess.Popen[Any]] = []
        self._start()

    def _start(self) -> None:
        tp = self.params.train
        workers = cluster(self.params)
        first = int(os.environ.get(NODE_RANK_ENV, "0")) * tp.nproc_per_node
        self.procs = [
            subprocess.Popen(
                self.command,
                env=worker_env(self.params, workers, first + i, self.restarts, local=i),
            )
            for i in range(tp.nproc_per_node)
        ]

    def wait(self, timeout: float | None = None) -> int:
        """Like Popen.wait: the group's exit status, or TimeoutExpired while it still runs."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            codes = [p.poll() for p in self.procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                code = self._failed(*failed[0])
                if code is not None:
                    return code
            elif all(c == 0 for c in codes):
                return 0
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.command, timeout or 0)
            _wait_any(self.procs, POLL_SECONDS)

    def _failed(self, index: int, code: int) -> int | None:
        """Stop the others; restart the group if restarts are left, else the failing status.
        Workers that exit because the group was stopped are never restarted."""
        if self.stopped:
            return code
        self._stop_workers()
        if self.restarts >= self.params.train.max_restarts:
            self.say(f"keras worker {index} exited with status {code}; no restarts left")
            return code
        self.restarts += 1
        self.say(
            f"keras worker {index} exited with status {code}; restarting all workers "
            f"(restart {self.restarts}/{self.params.train.max_restarts})"
        )
        self._start()
        return None

    def terminate(self) -> None:
        """Stop the group for good (Ctrl-C, SIGTERM of the stage): no restart follows."""
        self.stopped = True
        self._stop_workers()

    def _stop_workers(self) -> None:
        """SIGTERM each worker; SIGKILL what has not gone within 10 s."""
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def kill(self) -> None:
        self.stopped = True
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def _wait_any(procs: list[subprocess.Popen[Any]], seconds: float) -> None:
    """Block until a worker exits or `seconds` pass (on the first still running worker)."""
    running = [p for p in procs if p.poll() is None]
    if running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            running[0].wait(timeout=seconds)
