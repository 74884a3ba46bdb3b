"""The bench's harness: how any section measures (interleaved rounds after a warm-up, medians
and spreads, jobs started as torchrun would, commands timed as a user runs them), what a section
is, and the machine a result belongs to. The sections are in pipeline/bench/sections/."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import catalog
from pipeline.core.preflight import cores
from pipeline.core.procs import free_port

RESULTS = catalog.BENCH_RESULTS
BENCH_EXPERIMENT = "tinyops-bench"
Progress = Callable[[str], None]
Targets = list[dict[str, Any]]


@dataclass(frozen=True)
class Section:
    """One part of `tinyops bench`: its name, what it measures, about how long it takes (3
    rounds, 2 cores), how to run it (the results keys it fills) and the targets it is judged by."""

    name: str
    about: str
    minutes: float
    run: Callable[[int, Progress], dict[str, Any]]
    targets: Callable[[dict[str, Any]], Targets]
    in_full_run: bool = True


def run_json(
    cmd: list[str], threads: int, procs: int = 1, hosts: list[Any] | None = None
) -> dict[str, Any]:
    """Run `cmd` as `procs` ranks of one job on this host and return rank 0's JSON line; with
    `hosts` (pipeline/core/hosts.py), rank r on hosts[r], one rank per host, over the link.

    The ranks get torchrun's environment (RANK, WORLD_SIZE, LOCAL_*, MASTER_*) directly: only
    the steady-state step is timed, and torchrun's agent would add a torch import per run."""
    base = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if procs > 1:
        base |= {
            "WORLD_SIZE": str(procs),
            "LOCAL_WORLD_SIZE": "1" if hosts else str(procs),
            "MASTER_ADDR": hosts[0].address if hosts else "127.0.0.1",
            "MASTER_PORT": str(free_port()),
        }
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        logs = [(Path(tmp) / f"{r}.out", Path(tmp) / f"{r}.err") for r in range(procs)]
        ranks = []
        for r, (out, err) in enumerate(logs):
            env = base | ({"RANK": str(r), "LOCAL_RANK": str(r)} if procs > 1 else {})
            prefix: list[str] = []
            if hosts:
                env |= {"LOCAL_RANK": "0", "GLOO_SOCKET_IFNAME": hosts[r].iface}
                prefix = hosts[r].prefix()
            with out.open("w") as o, err.open("w") as e:
                ranks.append(subprocess.Popen([*prefix, *cmd], env=env, stdout=o, stderr=e))
        # A rank that fails would leave the others waiting for it: stop them all.
        while any(p.poll() is None for p in ranks):
            if any(p.poll() not in (None, 0) for p in ranks):
                for p in ranks:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.05)
        for p, (_, err) in zip(ranks, logs, strict=True):
            if p.returncode != 0:
                tail = err.read_text()[-3000:]
                raise RuntimeError(f"{' '.join(cmd)} (×{procs}) failed:\n{tail}")
        return json.loads(logs[0][0].read_text().strip().splitlines()[-1])


def ephemeral_env() -> dict[str, str]:
    """Commands timed as a user without a Prefect server runs them (the slower case). Their
    MLflow runs go to the experiment `tinyops-bench`, never among the user's."""
    from pipeline.core.tracking import ENV_EXPERIMENT

    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env[ENV_EXPERIMENT] = BENCH_EXPERIMENT
    return env


def timed(
    cmd: list[str],
    before: Callable[[], None] | None = None,
    cwd: Path | None = None,
    api: str | None = None,
) -> float:
    """Wall seconds of `cmd`; against the Prefect server at `api`, else Prefect's ephemeral one."""
    if before:
        before()
    env = ephemeral_env() | ({"PREFECT_API_URL": api} if api else {})
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(proc.stderr or proc.stdout)[-3000:]}")
    return time.perf_counter() - start


def samples_per_s(
    job: Callable[[], dict[str, Any]], keep: list[dict[str, Any]]
) -> Callable[[], float]:
    """A config for `interleave` from a job that prints JSON: its samples/s, the whole JSON kept."""

    def measure() -> float:
        out = job()
        keep.append(out)
        return float(out["samples_per_s"])

    return measure


def interleave(
    configs: dict[str, Callable[[], float]], rounds: int, on_progress: Callable[[str], None]
) -> dict[str, list[float]]:
    """One warm-up round, then `rounds` rounds of every config in turn."""
    samples: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(rounds + 1):
        for name, fn in configs.items():
            value = fn()
            if r:
                samples[name].append(value)
            on_progress(f"round {r}/{rounds} {name}: {value:.4g}")
    return samples


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def machine() -> dict[str, Any]:
    torch_version = [
        sys.executable,
        "-c",
        "import json, torch; print(json.dumps(torch.__version__))",
    ]
    return {
        "cores": cores(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": run_json(torch_version, 1),
    }


def checker(out: list[dict[str, Any]]) -> Callable[[str, float | None, bool | None], None]:
    def check(name: str, value: float | None, ok: bool | None) -> None:
        status = "NOT MEASURED" if value is None or ok is None else ("PASS" if ok else "FAIL")
        out.append({"target": name, "value": value, "status": status})

    return check


EXAMPLES = {
    "basicmotions": "examples/basicmotions.yaml",
    "japanesevowels": "examples/japanesevowels.yaml",
}


def example_params(arch: str | None, source: str) -> Any:
    """params.yaml with the dataset's example overlaid, as `tinyops example FILE --arch` does
    (digits: params.yaml itself)."""
    import yaml

    from pipeline.core.config import DEFAULT_PARAMS, parse_params, with_example

    base = yaml.safe_load(DEFAULT_PARAMS.read_text())
    if source not in EXAMPLES:
        return parse_params(base)
    overlay = yaml.safe_load(Path(EXAMPLES[source]).read_text())
    return parse_params(with_example(base, overlay, EXAMPLES[source], arch))
