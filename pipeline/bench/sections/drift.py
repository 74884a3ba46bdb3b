"""Section `drift`: field data and the drift monitor. Measured so far: ingest through the real
HTTP endpoint (`tinyops field serve` in its own process), 4 concurrent clients, batches of 32
samples, every batch fsynced, with p50 and p99 latency per batch. The monitor's rows (detection
delay, false alarms, drift to a promoted model) are listed as not measured until it exists."""

from __future__ import annotations

import http.client
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.bench.harness import Progress, Targets, checker

ABOUT = "field ingest: samples/s and latency over HTTP, 4 clients, 32-sample batches, fsynced"
MINUTES = 1
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


def run(rounds: int, progress: Progress) -> dict[str, Any]:
    runs = []
    for r in range(rounds):
        with tempfile.TemporaryDirectory(prefix="tinyops-field-bench-") as folder:
            runs.append(_measure(Path(folder)))
        progress(f"ingest round {r + 1}/{rounds}: {runs[-1]}")
    best = sorted(runs, key=lambda x: x["samples_per_s"])[len(runs) // 2]  # the median round
    return {"drift": {"ingest": {**best, "clients": CLIENTS, "batch": BATCH, "rounds": runs}}}


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
    for name in ("drift detected ≤ 3 monitor intervals after the demo's shift, both datasets",
                 "false alarms ≤ 1 % of ≥ 1,000 clean intervals (95 % upper bound)",
                 "drift to a promoted model < 5 min, default CNN"):  # fmt: skip
        check(name + " (the monitor is not built yet)", None, None)
    return out
