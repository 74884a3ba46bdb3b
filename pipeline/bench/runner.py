"""`tinyops bench`: what the pipeline costs, measured side by side in one run.

Configurations that are compared run interleaved (A B C A B C …, a warm-up round first) so that
machine noise falls on all of them alike; the table gives medians, min–max and ratios, and a
summary line per target says PASS or FAIL. Results go to bench/results.json with the machine.

Training throughput uses training's own step on synthetic tensors (pipeline/bench/throughput.py), for
the default CNN and a ResNet-8-sized one on 32×32×3. The quantization outcome, sizes, arenas,
MCU estimates and per-stage peak RSS are those of the workspace's last pipeline run; the heavier
model's export goes through the export stage's function (pipeline/bench/heavy_export.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.bench.families import families, family_table, family_targets
from pipeline.bench.firmware import firmware, firmware_targets
from pipeline.bench.frameworks import framework_targets, frameworks
from pipeline.core import atomic, catalog
from pipeline.core.catalog import TRAIN_TIMING
from pipeline.core.preflight import cores
from pipeline.core.procs import free_port
from pipeline.orchestration.dvc import tool

RESULTS = catalog.BENCH_RESULTS
BENCH_EXPERIMENT = "tinyops-bench"


def _worker(model: str, threads: int, allreduce: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline.bench.throughput",
        "--model",
        model,
        "--threads",
        str(threads),
        "--allreduce",
        allreduce,
    ]


def _run_json(cmd: list[str], threads: int, procs: int = 1) -> dict[str, Any]:
    """Run `cmd` as `procs` ranks of one job on this host and return rank 0's JSON line.

    The ranks get torchrun's environment (RANK, WORLD_SIZE, LOCAL_*, MASTER_*) directly: only
    the steady-state step is timed, and torchrun's agent would add a torch import per run."""
    base = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if procs > 1:
        base |= {
            "WORLD_SIZE": str(procs),
            "LOCAL_WORLD_SIZE": str(procs),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
        }
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        logs = [(Path(tmp) / f"{r}.out", Path(tmp) / f"{r}.err") for r in range(procs)]
        ranks = []
        for r, (out, err) in enumerate(logs):
            env = base | ({"RANK": str(r), "LOCAL_RANK": str(r)} if procs > 1 else {})
            with out.open("w") as o, err.open("w") as e:
                ranks.append(subprocess.Popen(cmd, env=env, stdout=o, stderr=e))
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


def _ephemeral_env() -> dict[str, str]:
    """Commands timed as a user without a Prefect server runs them (the slower case). Their
    MLflow runs go to the experiment `tinyops-bench`, never among the user's."""
    from pipeline.core.tracking import ENV_EXPERIMENT

    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env[ENV_EXPERIMENT] = BENCH_EXPERIMENT
    return env


def _timed(
    cmd: list[str],
    before: Callable[[], None] | None = None,
    cwd: Path | None = None,
    api: str | None = None,
) -> float:
    """Wall seconds of `cmd`; against the Prefect server at `api`, else Prefect's ephemeral one."""
    if before:
        before()
    env = _ephemeral_env() | ({"PREFECT_API_URL": api} if api else {})
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(proc.stderr or proc.stdout)[-3000:]}")
    return time.perf_counter() - start


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
        subprocess.run(cmd, cwd=root, check=True, capture_output=True, env=_ephemeral_env())
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
TARGET_DDP = "DDP 2 × 1 thread, 64 per worker"
GLOO_DDP = "DDP 2 × 1 thread, gloo TCP all-reduce, 64 per worker"
SPLIT_DDP = "DDP 2 × 1 thread, 64 split 32 + 32"


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


def _machine() -> dict[str, Any]:
    torch_version = [
        sys.executable,
        "-c",
        "import json, torch; print(json.dumps(torch.__version__))",
    ]
    return {
        "cores": cores(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _run_json(torch_version, 1),
    }


def _plans(model: str, n: int) -> dict[str, tuple[int, int, int, str]]:
    """(threads, processes, global batch, train.allreduce) per configuration.

    Every config steps 64 samples per worker, as DDP throughput is usually compared. The target
    row is DDP as training runs it (shared-memory all-reduce on one host); the gloo row is the
    same over gloo's TCP; the split row is the pipeline's own global batch of 64 cut in two,
    where fixed per-step costs weigh double (the last two are reported, not targets, and run for
    the default model only, to keep the bench under 20 minutes on 2 cores).
    """
    plans = {"1 proc × 1 thread": (1, 1, 64, "auto"), f"1 proc × {n} threads": (n, 1, 64, "auto")}
    if n >= 2:
        plans[TARGET_DDP] = (1, 2, 128, "auto")
        if model == "default":  # the comparisons, on the model where they matter most
            plans[GLOO_DDP] = (1, 2, 128, "backend")
            plans[SPLIT_DDP] = (1, 2, 64, "auto")
    return plans


def throughput(
    model: str, rounds: int, on_progress: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Samples/s per configuration, interleaved, and the all-reduce times the DDP rows saw."""
    n = cores()
    configs: dict[str, Callable[[], float]] = {}
    allreduce: dict[str, list[float]] = {}
    for name, (threads, procs, batch, how) in _plans(model, n).items():
        assert threads * procs <= n, "never more threads × processes than cores"

        def run(
            threads: int = threads, procs: int = procs, batch: int = batch, how: str = how
        ) -> float:
            cmd = [*_worker(model, threads, how), "--batch", str(batch)]
            got = _run_json(cmd, threads, procs)
            for way, ms in (got["allreduce_ms"] or {}).items():
                allreduce.setdefault(way, []).append(ms)
            return float(got["samples_per_s"])

        configs[name] = run
    samples = interleave(configs, rounds, lambda s: on_progress(f"{model}: {s}"))
    return (
        {k: summary(v) for k, v in samples.items()},
        {k: summary(v) for k, v in allreduce.items()},
    )


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
        env = {k: v for k, v in _ephemeral_env().items() if k != "PREFECT_API_URL"}
        env["PREFECT_HOME"] = home
        argv = [tinyops, "server", "--port", str(port)]
        with start("Prefect server", argv, Path(home) / "server.log", url=f"{api}/health", env=env):
            yield api


def overhead(rounds: int, on_progress: Callable[[str], None]) -> dict[str, Any]:
    """Orchestration costs: the flow against plain stages (the flow reporting to a Prefect server
    that already runs, as scheduled runs do; Prefect's ephemeral server, which `tinyops run`
    starts when none is configured, timed apart), no-op reruns, `--help`, MLflow."""
    tinyops = str(Path(sys.executable).parent / "tinyops")
    with _prefect_server() as api:
        flow = interleave(
            {
                "plain stages, one process (s)": lambda: _timed(
                    [sys.executable, "-c", PLAIN], _forget_last_success
                ),
                FLOW_SERVER: lambda: _timed([tinyops, "run"], _forget_last_success, api=api),
                FLOW_EPHEMERAL: lambda: _timed([tinyops, "run"], _forget_last_success),
            },
            rounds,
            on_progress,
        )
    floor = _one_stage_dvc_project()
    noop = interleave(
        {
            "tinyops --help (s)": lambda: _timed([tinyops, "--help"]),
            "dvc repro, nothing changed (s)": lambda: _timed([tool("dvc"), "repro"]),
            "dvc repro, nothing changed, 1-stage project: DVC's floor (s)": lambda: _timed(
                [tool("dvc"), "repro"], cwd=floor
            ),
            "tinyops run, nothing new (s)": lambda: _timed([tinyops, "run"]),
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


def quantization() -> dict[str, Any]:
    """Accuracy per level, int8/fp32 agreement, sizes and arenas of the workspace's last run."""
    import numpy as np

    from pipeline.core import catalog
    from pipeline.data.prepare import load_processed
    from pipeline.tflite.litert import run_batch

    m = catalog.read(catalog.EVALUATE_METRICS, catalog.EvaluateMetrics, "evaluate").model_dump()
    variants = catalog.read(catalog.VARIANTS_FILE, catalog.Variants, "evaluate")
    x = load_processed().x["test"]
    fp32, _ = run_batch(catalog.variant_file("fp32").read_bytes(), x)
    int8, _ = run_batch(catalog.variant_file("int8").read_bytes(), x)
    agreement = float(np.mean(fp32.argmax(1) == int8.argmax(1)))
    bundles, mcu_ms = {}, {}
    for f in sorted(catalog.DEPLOY_STATUS_DIR.glob("*.json")):
        d = catalog.read(f, catalog.DeployStatus, "deploy")
        if d.arena_bytes:
            bundles[d.device] = d.arena_bytes / m["tflm_arena_bytes"]
        if d.runtime == "tflm" and d.latency_ms is not None:
            mcu_ms[d.device] = d.latency_ms
    return {
        "accuracy": {
            k: m[k]
            for k in (
                "framework_fp32_accuracy",
                "tflite_fp32_accuracy",
                "tflite_int8_accuracy",
                "tflm_int8_accuracy",
            )
        },
        "int8_fp32_agreement": agreement,
        "max_logit_diff": m["framework_tflite_fp32_max_logit_diff"],
        "bytes": {v: d.bytes for v, d in variants.items()},
        "arena_bytes": {"int8": m["tflm_arena_bytes"], "fp32": m["tflm_fp32_arena_bytes"]},
        "bundled_arena_over_need": bundles,
        "mcu_estimated_latency_ms": mcu_ms,
    }


def latency(rounds: int, on_progress: Callable[[str], None]) -> dict[str, Any]:
    """LiteRT invoke time per variant, 1 thread, batch 1, and TFLite Micro's int8 invoke on this
    host; interleaved per round."""
    from pipeline.core import catalog
    from pipeline.tflite.litert import measure_host_latency_ms
    from pipeline.tflite.tflm import measure_invoke_ms

    models = {
        v: catalog.variant_file(v).read_bytes() for v in ("fp32", "float16", "dynamic_int8", "int8")
    }
    arena = catalog.read(
        catalog.EVALUATE_METRICS, catalog.EvaluateMetrics, "evaluate"
    ).tflm_arena_bytes
    configs: dict[str, Callable[[], float]] = {
        v: (lambda b=b: measure_host_latency_ms(b, 500)) for v, b in models.items()
    }
    configs["tflm int8"] = lambda: measure_invoke_ms(models["int8"], arena, 200)
    samples = interleave(configs, rounds, on_progress)
    return {v: summary(t) for v, t in samples.items()}


def memory() -> dict[str, float]:
    """Peak RSS (MiB) of each stage's process tree in the last run (pipeline/core/tracking.py)."""
    from pipeline.core.catalog import RSS_FILE

    try:
        return json.loads(RSS_FILE.read_text())
    except (OSError, ValueError):
        return {}


def _checker(out: list[dict[str, Any]]) -> Callable[[str, float | None, bool | None], None]:
    def check(name: str, value: float | None, ok: bool | None) -> None:
        status = "NOT MEASURED" if value is None or ok is None else ("PASS" if ok else "FAIL")
        out.append({"target": name, "value": value, "status": status})

    return check


def throughput_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    check, n = _checker(out), r["machine"]["cores"]
    for model, t in r.get("throughput", {}).items():
        ddp = t.get(TARGET_DDP, {}).get("median")
        if ddp is None:
            continue
        one = t["1 proc × 1 thread"]["median"]
        multi = t[f"1 proc × {n} threads"]["median"]
        check(f"{model}: DDP 2×1 ÷ 1×1 ≥ 1.3", ddp / one, ddp / one >= 1.3)
        check(f"{model}: DDP 2×1 ÷ 1×{n} ≥ 0.85", ddp / multi, ddp / multi >= 0.85)
    return out


def quantization_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    check = _checker(out)
    q = r["quantization"]
    acc = q["accuracy"]
    drop = max(
        acc["framework_fp32_accuracy"] - acc["tflite_int8_accuracy"],
        acc["framework_fp32_accuracy"] - acc["tflm_int8_accuracy"],
        acc["tflite_fp32_accuracy"] - acc["tflite_int8_accuracy"],
    )
    check("int8 within 1.0 point of fp32 at every level (points)", 100 * drop, drop <= 0.01)
    agree = q["int8_fp32_agreement"]
    check("int8/fp32 prediction agreement ≥ 98%", agree, agree >= 0.98)
    diff = q["max_logit_diff"]
    check("torch vs tflite fp32 max logit diff ≤ 1e-4", diff, diff <= 1e-4)
    heavy = r.get("resnet8_export", {})
    size = heavy["bytes"]["fp32"] / heavy["bytes"]["int8"] if heavy else None
    check("resnet8: fp32 ÷ int8 .tflite ≥ 3.0", size, size is not None and size >= 3.0)
    arena = heavy["arena_bytes"]["fp32"] / heavy["arena_bytes"]["int8"] if heavy else None
    check("resnet8: fp32 ÷ int8 arena ≥ 3.0", arena, arena is not None and arena >= 3.0)
    worst = max(q["bundled_arena_over_need"].values(), default=None)
    check("bundled arena ≤ 1.25 × need", worst, worst is not None and worst <= 1.25)
    return out


def latency_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    lat = r["latency_ms"]["int8"]["median"] / r["latency_ms"]["fp32"]["median"]
    _checker(out)("LiteRT int8 ≤ 1.33 × fp32 latency", lat, lat <= 1.33)
    return out


def overhead_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The flow against plain stages has no escape clause: ≤ 1.2, PASS or FAIL."""
    out: list[dict[str, Any]] = []
    check = _checker(out)
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


# The paradigm comparison: name → (processes, train.parallelism, schedule, microbatches).
# Every config steps the same global batch; the hybrid mesh needs 4 processes, more than this
# machine's 2 cores, and is labelled so.
PARADIGM_BATCH = 128
OVERSUBSCRIBED = "(4 procs: oversubscribed)"
PARADIGMS: dict[str, tuple[int, str, str, int]] = {
    "1 × 1": (1, "data", "1f1b", 1),
    "data 2 × 1": (2, "data", "1f1b", 1),
    **{
        f"pipeline 2 stages {s} m{m}": (2, "pipeline", s, m)
        for s in ("gpipe", "1f1b")
        for m in (2, 4, 8)
    },
    "fsdp 2 × 1": (2, "fsdp", "1f1b", 1),
    f"hybrid dp2 × pp2 1f1b m2 {OVERSUBSCRIBED}": (4, "hybrid", "1f1b", 2),
}


def _paradigm_cmd(model: str, parallelism: str, schedule: str, m: int) -> list[str]:
    return [
        sys.executable, "-m", "pipeline.bench.paradigms", "--model", model,
        "--parallelism", parallelism, "--schedule", schedule, "--microbatches", str(m),
        "--batch", str(PARADIGM_BATCH),
    ]  # fmt: skip


def paradigms(model: str, rounds: int, on_progress: Callable[[str], None]) -> dict[str, Any]:
    """Samples/s of every paradigm, interleaved, with each one's per-rank model state, bytes
    sent per step and, for pipelines, busy time, communication and bubble against theory."""
    runs: dict[str, list[dict[str, Any]]] = {}
    configs: dict[str, Callable[[], float]] = {}
    for name, (procs, parallelism, schedule, m) in PARADIGMS.items():
        if procs > cores() and OVERSUBSCRIBED not in name:
            continue

        cmd = _paradigm_cmd(model, parallelism, schedule, m)

        def run(name: str = name, procs: int = procs, cmd: list[str] = cmd) -> float:
            got = _run_json(cmd, 1, procs)
            runs.setdefault(name, []).append(got)
            return float(got["samples_per_s"])

        configs[name] = run
    samples = interleave(configs, rounds, lambda s: on_progress(f"{model}: {s}"))
    return {name: _paradigm_row(values, runs[name][1:]) for name, values in samples.items()}


def _paradigm_row(values: list[float], got: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the measured rounds; per-rank figures reported for the busiest rank."""

    def worst(key: str) -> float:
        return statistics.median(max(r[key] for r in g["ranks"]) for g in got)

    row: dict[str, Any] = {
        "plan": got[0]["plan"],
        "samples_per_s": summary(values),
        "model_state_bytes_max_rank": worst("state_bytes"),
        "sent_bytes_per_step_max_rank": worst("sent_bytes"),
        "peak_rss_mib_max_rank": worst("peak_rss_mib"),
    }
    if "busy_s" in got[0]["ranks"][0]:
        busy, comm, step = worst("busy_s"), worst("comm_s"), worst("step_s")
        row |= {
            "step_ms": 1000 * step,
            "busy_ms": 1000 * busy,
            "comm_ms": 1000 * comm,
            "bubble_theory": got[0]["ranks"][0]["bubble_theory"],
            "bubble_and_overhead_measured": max(0.0, 1 - (busy + comm) / step),
            "ideal_samples_per_s": PARADIGM_BATCH / worst("ideal_step_s"),
        }
    return row


def paradigm_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """FSDP holds about 1/world of data parallelism's model state on each rank."""
    out = []
    for model, rows in r.get("paradigms", {}).items():
        data, fsdp = rows.get("data 2 × 1"), rows.get("fsdp 2 × 1")
        if data and fsdp:
            ratio = fsdp["model_state_bytes_max_rank"] / data["model_state_bytes_max_rank"]
            status = "PASS" if ratio <= 0.55 else "FAIL"
            out.append(
                {"target": f"{model}: fsdp 2×1 model state per rank ≤ 0.55 × data 2×1's",
                 "value": ratio, "status": status}
            )  # fmt: skip
    return out


Progress = Callable[[str], None]


@dataclass(frozen=True)
class Section:
    """One part of `tinyops bench`: what it measures, about how long it takes (3 rounds, 2
    cores), how to run it (the results keys it fills) and the targets it is judged by."""

    about: str
    minutes: float
    run: Callable[[int, Progress], dict[str, Any]]
    targets: Callable[[dict[str, Any]], list[dict[str, Any]]]
    in_full_run: bool = True


def _throughput(rounds: int, progress: Progress) -> dict[str, Any]:
    out: dict[str, Any] = {"throughput": {}, "allreduce_ms": {}}
    for model in ("default", "resnet8"):
        out["throughput"][model], allreduce = throughput(model, rounds, progress)
        if allreduce:
            out["allreduce_ms"][model] = allreduce
    return out


def _quantization(rounds: int, progress: Progress) -> dict[str, Any]:
    progress("resnet8: exporting fp32 and int8, measuring TFLite Micro arenas")
    heavy = _run_json([sys.executable, "-m", "pipeline.bench.heavy_export"], 1)
    return {"quantization": quantization(), "resnet8_export": heavy}


def _families(rounds: int, progress: Progress) -> dict[str, Any]:
    out = {"families": families(progress)}
    atomic.write_bytes(catalog.FAMILIES_TABLE, family_table(out).encode() + b"\n")
    return out


SECTIONS: dict[str, Section] = {
    "throughput": Section(
        "training samples/s: 1×1, 1×2 threads, DDP 2×1 (default CNN, ResNet-8-sized)",
        6, _throughput, throughput_targets,
    ),
    "quantization": Section(
        "accuracy per level, sizes, arenas of the last run; ResNet-8-sized export",
        1, _quantization, quantization_targets,
    ),
    "latency": Section(
        "LiteRT and TFLite Micro invoke time per variant on the host",
        1, lambda rounds, p: {"latency_ms": latency(rounds, p)}, latency_targets,
    ),
    "memory": Section(
        "peak RSS of each stage in the last run", 0, lambda rounds, p: {"memory": memory()},
        lambda r: [],
    ),
    "overhead": Section(
        "Prefect flow vs plain stages, no-op reruns, --help, MLflow logging share",
        5, lambda rounds, p: {"overhead": overhead(rounds, p)}, overhead_targets,
    ),
    "paradigms": Section(
        "data, pipeline (GPipe, 1F1B), FSDP and hybrid parallelism side by side",
        13, lambda rounds, p: {"paradigms": {m: paradigms(m, rounds, p) for m in ("default", "deep")}},
        paradigm_targets,
    ),
    "frameworks": Section(
        "torch against Keras through the real stages",
        8, lambda rounds, p: {"frameworks": frameworks(rounds, p)}, framework_targets,
    ),
    "firmware": Section(
        "the model built per Cortex-M core, reference and CMSIS-NN kernels, under QEMU",
        4, lambda rounds, p: {"firmware": firmware(p)}, firmware_targets,
    ),
    "families": Section(
        "every sequence family on both bundled datasets through the real stages",
        25, _families, family_targets, in_full_run=False,
    ),
}  # fmt: skip


def listing() -> str:
    """`tinyops bench --list`: each section, its expected duration and what it measures."""
    rows = [
        f"{name:<13} ~{s.minutes:>2g} min{'' if s.in_full_run else ' (--only)':<9}  {s.about}"
        for name, s in SECTIONS.items()
    ]
    return "\n".join(rows)


def bench(rounds: int = 5, on_progress: Progress = print) -> dict[str, Any]:
    """Every section of a full run, side by side; written to bench/results.json with the machine."""
    results: dict[str, Any] = {"machine": _machine(), "rounds": rounds, "targets": []}
    for section in (s for s in SECTIONS.values() if s.in_full_run):
        results |= section.run(rounds, on_progress)
        results["targets"] += section.targets(results)
    atomic.write_json(RESULTS, results)
    return results


def bench_only(section: str, rounds: int, on_progress: Progress = print) -> dict[str, Any]:
    """One section (`tinyops bench --only NAME`), merged into bench/results.json beside an earlier
    full run's results; that section's targets are replaced."""
    try:
        results = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        results = {"machine": _machine(), "rounds": rounds, "targets": []}
    chosen = SECTIONS[section]
    results |= chosen.run(rounds, on_progress)
    new = chosen.targets(results)
    results[f"{section}_rounds"] = rounds
    names = {t["target"] for t in new}
    results["targets"] = [t for t in results.get("targets", []) if t["target"] not in names] + new
    atomic.write_json(RESULTS, results)
    return results
