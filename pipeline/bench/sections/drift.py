"""Section `drift`: field data and the drift monitor.
- ingest through the real HTTP endpoint (`tinyops field serve` in its own process), 4 concurrent
  clients, batches of 32 samples, every batch fsynced, with p50 and p99 latency per batch;
- detection delay at the demo's shift (gain 1.5×, offset +1σ on one channel), digits and
  BasicMotions (every one of its 6 axes), 3 seeds each;
- false alarms over 1,000 clean intervals of held-out samples, digits and JapaneseVowels
  (BasicMotions holds out 24 samples: its clean intervals would all be the same 24);
- drift to a promoted model: not measured until the monitor triggers retraining."""

from __future__ import annotations

import http.client
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.bench.harness import Progress, Targets, checker, example_params

ABOUT = "field ingest over HTTP (samples/s, p50/p99); drift detection delay and false alarms"
MINUTES = 2
CLIENTS, BATCH, SECONDS = 4, 32, 5.0


def _workspace(folder: Path) -> tuple[list[str], dict[str, Any]]:
    """Four devices, each with an int8 bundle's manifest shaped like the default model's (the
    workspace's own MCU manifest where it has one), and a token each."""
    from pipeline.core import catalog
    from pipeline.core.catalog import Manifest
    from pipeline.field.tokens import TokenStore

    mine = sorted(catalog.DEPLOY_ROOT.glob("*/manifest.json"))
    found = [m for m in mine if json.loads(m.read_text()).get("input_scale") is not None]
    base = json.loads(found[0].read_text()) if found else {
        "runtime": "tflm", "variant": "int8", "model_file": "model.tflite", "model_sha256": "0" * 64,
        "model_bytes": 1, "labels": [str(i) for i in range(10)], "input_shape": [8, 8, 1],
        "task": {"kind": "classification"}, "input_scale": 0.01, "output_scale": 0.1,
    }  # fmt: skip
    tokens = TokenStore(folder / catalog.FIELD_TOKENS)
    devices = [f"bench{i}" for i in range(CLIENTS)]
    for device in devices:
        manifest = Manifest.model_validate({**base, "device": device})
        catalog.write(folder / catalog.DEPLOY_ROOT / device / "manifest.json", manifest)
    return [tokens.issue(d) for d in devices], base


def _body(device: str, seq: int, manifest: dict[str, Any]) -> bytes:
    import numpy as np

    rng = np.random.default_rng(seq)
    samples = rng.integers(-128, 128, size=(BATCH, *manifest["input_shape"])).tolist()
    outputs = rng.integers(-128, 128, size=(BATCH, len(manifest["labels"]))).tolist()
    return json.dumps({
        "device": device, "batch_id": f"b{seq}", "model_sha256": manifest["model_sha256"],
        "samples": samples, "outputs": outputs,
    }).encode()  # fmt: skip


def _client(port: int, token: str, bodies: list[bytes], out: list) -> None:
    """Post batches on one keep-alive connection for SECONDS; each latency appended to `out`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    end, i = time.perf_counter() + SECONDS, 0
    while time.perf_counter() < end and i < len(bodies):
        start = time.perf_counter()
        conn.request("POST", "/v1/batches", bodies[i], headers)
        response = conn.getresponse()
        response.read()
        if response.status != 201:
            raise RuntimeError(f"ingest answered {response.status}")
        out.append(time.perf_counter() - start)
        i += 1
    conn.close()


def _measure(folder: Path) -> dict[str, Any]:
    import sys

    from pipeline.core.procs import start

    tokens, manifest = _workspace(folder)
    log = folder / "serve.log"
    argv = [str(Path(sys.executable).parent / "tinyops"), "field", "serve", "--port", "0",
            "--rate", "100000", "--burst", "100000"]  # fmt: skip
    with start("field endpoint", argv, log, cwd=folder,
               healthy=lambda: "/v1/batches" in log.read_text()) as server:  # fmt: skip
        port = int(log.read_text().split("127.0.0.1:")[1].split("/")[0])
        latencies: list[float] = []
        bodies = [[_body(f"bench{i}", n, manifest) for n in range(600)] for i in range(CLIENTS)]
        threads = [threading.Thread(target=_client, args=(port, t, bodies[i], latencies))
                   for i, t in enumerate(tokens)]  # fmt: skip
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
        server.stop(grace=5)
    stored = sum(1 for _ in (folder / "data/field").rglob("*.npz"))
    cuts = statistics.quantiles(latencies, n=100)
    return {"samples_per_s": round(stored * BATCH / wall, 1), "batches": stored,
            "p50_ms": round(cuts[49] * 1000, 2), "p99_ms": round(cuts[98] * 1000, 2)}  # fmt: skip


def _monitor(progress: Progress) -> dict[str, Any]:
    """The demo's detection delays and clean-stream false alarms, per dataset."""
    from scipy import stats

    from pipeline.monitor import demo

    out: dict[str, Any] = {"delays": {}, "false_alarms": {}}
    for source, channels in (("digits", [0]), ("basicmotions", range(6)), ("japanesevowels", [])):
        params = example_params(None, source)
        with tempfile.TemporaryDirectory(prefix="tinyops-drift-bench-") as folder:
            sc = demo.scenario(params.prepare, Path(folder) / "processed")
        for channel in channels:
            delays = [demo.detection_delay(sc, params.monitor, channel, seed) for seed in range(3)]
            out["delays"][f"{source}/ch{channel}"] = delays
            progress(f"{source} channel {channel}: confirmed {delays} intervals after the shift")
        if source == "basicmotions":
            continue
        clean = demo.false_alarms(sc, params.monitor, 1000, seed=0)
        k = sum(i.drifted for i in clean.intervals)
        out["false_alarms"][source] = {
            "intervals": len(clean.intervals), "drifted": k, "rate": k / len(clean.intervals),
            "upper95": float(stats.beta.ppf(0.95, k + 1, len(clean.intervals) - k)),
            "confirmed": clean.confirmed_at is not None, "samples": clean.intervals[0].samples,
        }  # fmt: skip
        progress(f"{source}: {k} of 1000 clean intervals drifted")
    return out


def _copy_workspace(dest: Path) -> Path:
    """This workspace as it stands, without its environment, field data or team stack."""
    import shutil

    from pipeline.core import catalog

    skip = shutil.ignore_patterns(".venv", "__pycache__", ".*_cache")
    ws = Path(shutil.copytree(Path.cwd(), dest, symlinks=True, ignore=skip))
    for extra in (catalog.FIELD_DIR, catalog.STACK_DIR, catalog.FIELD_LABELLED):
        path = ws / extra
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return ws


def _stream_demo(ws: Path, device: str) -> None:
    """3 clean then 4 shifted labelled intervals of 32, as the device's bundle takes them."""
    import numpy as np

    from pipeline.core import catalog
    from pipeline.field.store import FieldStore
    from pipeline.monitor import demo

    manifest = catalog.read(
        ws / catalog.DEPLOY_ROOT / device / "manifest.json", catalog.Manifest, "deploy"
    )
    meta = catalog.read(ws / catalog.META_FILE, catalog.DatasetMeta, "prepare")
    pool = [
        np.load(ws / catalog.PROCESSED_DIR / f"{k}_{s}.npy") for k in "xy" for s in ("val", "test")
    ]
    x, y = demo.intervals(np.concatenate(pool[:2]), np.concatenate(pool[2:]), 7, 32, seed=0)
    x = np.concatenate([x[:96], demo.shifted(x[96:], meta.normalization, 0)])
    q, out = demo.quantized(x, manifest), demo.perfect_outputs(y, len(manifest.labels))
    store = FieldStore(ws / catalog.FIELD_DIR, ws / catalog.DEPLOY_ROOT)
    for k in range(0, len(x), 32):
        store.ingest({"device": device, "batch_id": f"bench{k}", "model_sha256": manifest.model_sha256,
                      "samples": q[k:k + 32].tolist(), "outputs": out[k:k + 32].tolist(),
                      "labels": y[k:k + 32].tolist()})  # fmt: skip


def _drift_to_promotion(progress: Progress) -> dict[str, Any] | None:
    """Seconds from `tinyops field monitor --retrain` to the promotion decision, in a copy."""
    import os
    import subprocess
    import sys

    from pipeline.core import catalog

    mcus = sorted(p.parent.name for p in catalog.DEPLOY_ROOT.glob("*/manifest.json")
                  if json.loads(p.read_text()).get("runtime") == "tflm")  # fmt: skip
    if not mcus or not Path("dvc.lock").is_file():
        progress("drift to promotion: skipped (no completed run here: `make run` first)")
        return None
    with tempfile.TemporaryDirectory(prefix="tinyops-drift-retrain-") as folder:
        ws = _copy_workspace(Path(folder) / "ws")
        _stream_demo(ws, mcus[0])
        env = {
            **os.environ,
            "TINYOPS_EXPERIMENT": "tinyops-bench-drift",
        }  # artifacts stay in the copy
        env.pop("MLFLOW_TRACKING_URI", None)
        began = time.perf_counter()
        tinyops = str(Path(sys.executable).parent / "tinyops")
        done = subprocess.run([tinyops, "field", "monitor", "--retrain"], cwd=ws, env=env,
                              capture_output=True, text=True)  # fmt: skip
        seconds = round(time.perf_counter() - began, 1)
        status = json.loads((ws / catalog.DEPLOY_STATUS_DIR / f"{mcus[0]}.json").read_text())
    result = {"seconds": seconds, "exit": done.returncode, "device": mcus[0],
              "status": status.get("status"), "reason": status.get("reason")}  # fmt: skip
    progress(f"drift to promotion: {result}")
    return result


def run(rounds: int, progress: Progress) -> dict[str, Any]:
    monitor = _monitor(progress)
    monitor["to_promotion"] = _drift_to_promotion(progress)
    runs = []
    for r in range(rounds):
        with tempfile.TemporaryDirectory(prefix="tinyops-field-bench-") as folder:
            runs.append(_measure(Path(folder)))
        progress(f"ingest round {r + 1}/{rounds}: {runs[-1]}")
    best = sorted(runs, key=lambda x: x["samples_per_s"])[len(runs) // 2]  # the median round
    ingest = {**best, "clients": CLIENTS, "batch": BATCH, "rounds": runs}
    return {"drift": {"ingest": ingest, **monitor}}


def targets(results: dict[str, Any]) -> Targets:
    out: Targets = []
    check = checker(out)
    d = results.get("drift")
    if not d:
        return out
    ingest = d["ingest"]
    check(
        f"field ingest over HTTP ≥ 1,000 samples/s ({CLIENTS} clients, {BATCH}-sample batches, "
        f"fsynced; p50 {ingest['p50_ms']} ms, p99 {ingest['p99_ms']} ms)",
        ingest["samples_per_s"], ingest["samples_per_s"] >= 1000,
    )  # fmt: skip
    delays = [x for seeds in d.get("delays", {}).values() for x in seeds]
    ok = bool(delays) and all(x is not None and 1 <= x <= 3 for x in delays)
    check(
        "drift confirmed ≤ 3 monitor intervals after the demo's shift (digits; BasicMotions, each "
        "axis; 3 seeds): the worst delay (none or ≤ 0 would fail: missed, or a false alarm)",
        max((x for x in delays if x is not None), default=None), ok if delays else None,
    )  # fmt: skip
    alarms = d.get("false_alarms", {})
    worst = max(alarms.values(), key=lambda a: a["rate"], default=None)
    bounds = ", ".join(
        f"{s} {a['rate']:.1%} (95 % upper {a['upper95']:.1%})" for s, a in alarms.items()
    )
    check(
        f"false alarms ≤ 1 % of 1,000 clean intervals: {bounds}",
        None if worst is None else worst["rate"], None if worst is None else worst["rate"] <= 0.01,
    )  # fmt: skip
    done = d.get("to_promotion")
    ok = (
        None
        if not done
        else done["exit"] == 0 and done["status"] == "promoted" and done["seconds"] < 300
    )
    where = "" if not done else f" ({done['device']}: {done['status']}, exit {done['exit']})"
    check(f"drift to a promoted model < 5 min, default CNN, 2 cores{where}",
          None if not done else done["seconds"], ok)  # fmt: skip
    return out
