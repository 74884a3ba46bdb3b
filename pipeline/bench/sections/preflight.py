"""Section `preflight`: how long `tinyops preflight` takes warm (imports reported apart), and
whether the arena it predicts from the untrained graph is the arena of the network with other
weights, for every family on the datasets it takes."""

from __future__ import annotations

import json
import time
from typing import Any

import yaml

from pipeline.bench.harness import Progress, Targets, checker, example_params, summary
from pipeline.core import catalog
from pipeline.core.config import DEFAULT_PARAMS, Params, parse_params

ABOUT = "tinyops preflight: seconds warm for six devices, and its arena against other weights"
MINUTES = 4
# Family → the datasets it takes (images: digits; series: the two bundled sensor sets).
CASES = {
    "cnn2d": ("digits",),
    **{
        arch: ("basicmotions", "japanesevowels")
        for arch in ("cnn1d", "dscnn1d", "tcn", "gru", "lstm", "transformer", "autoencoder")
    },
}


def _timed(params: Params) -> tuple[float, dict[str, Any]]:
    from pipeline.orchestration.preflight import examine

    start = time.perf_counter()
    report = examine(params)
    return time.perf_counter() - start, report


def _other_weights_arena(params: Params) -> int:
    """The arena of the same network with other weights, calibrated on the real training split
    (what training changes); TensorFlow Lite Micro measures it the same way."""
    import numpy as np
    import torch

    from pipeline.data.datasets import load_dataset
    from pipeline.export.convert import convert_int8
    from pipeline.models.architecture import architecture_for, build_model
    from pipeline.tflite.tflm import measure_arena_bytes

    ds = load_dataset(params.prepare)
    x = ((ds.x - ds.x.mean(axis=(0, 1))) / (ds.x.std(axis=(0, 1)) + 1e-6)).astype(np.float32)
    torch.manual_seed(params.train.seed + 1)
    arch = architecture_for(params, x.shape[1:], len(ds.classes), ds.classes)
    model = build_model(arch).eval()
    int8 = convert_int8(model, torch.zeros((1, *x.shape[1:])), x[:64])
    ev = params.evaluate
    return measure_arena_bytes(int8, ev.arena_max_bytes, ev.arena_granularity)


def _trained_arena() -> int | None:
    """The workspace's trained default model's arena (evaluate.json), when it has one."""
    if not catalog.EVALUATE_METRICS.is_file():
        return None
    return json.loads(catalog.EVALUATE_METRICS.read_text()).get("tflm_arena_bytes")


def _firmware_sizes(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per Cortex-M device of the workspace's trained default model (its bundle's firmware
    figures), preflight's flash and RAM beside the firmware's, and how preflight got them."""
    out = {}
    for device, answer in report["devices"].items():
        manifest = catalog.DEPLOY_ROOT / device / "manifest.json"
        if answer["runtime"] != "tflm" or not manifest.is_file():
            continue
        measured = (json.loads(manifest.read_text()).get("firmware") or {}).get("measured")
        if measured:
            out[device] = {
                "preflight_flash": answer["flash_bytes"], "firmware_flash": measured["flash_bytes"],
                "preflight_ram": answer["ram_bytes"], "firmware_ram": measured["ram_bytes"],
                "sizes": answer["sizes"],
            }  # fmt: skip
    return out


def run(rounds: int, progress: Progress) -> dict[str, Any]:
    default = parse_params(yaml.safe_load(DEFAULT_PARAMS.read_text()))
    cold, report = _timed(default)  # the first call imports torch, litert-torch, TFLite Micro
    warm = [_timed(default)[0] for _ in range(rounds)]
    progress(f"default model, {len(report['devices'])} devices: cold {cold:.1f} s, warm {warm}")
    transformer = example_params("transformer", "basicmotions")
    warm_t = [_timed(transformer)[0] for _ in range(rounds)]
    arenas = {}
    for arch, sources in CASES.items():
        for source in sources:
            params = example_params(arch, source)
            predicted = _timed(params)[1]["graph"]["arena_bytes"]
            arenas[f"{arch}/{source}"] = {"preflight": predicted,
                                          "other_weights": _other_weights_arena(params)}  # fmt: skip
            progress(f"arena {arch}/{source}: {arenas[f'{arch}/{source}']}")
    trained = _trained_arena()
    return {"preflight": {
        "devices": len(report["devices"]), "cold_seconds": round(cold, 2),
        "warm_seconds": summary(warm), "transformer_warm_seconds": summary(warm_t),
        "default_arena": report["graph"]["arena_bytes"], "trained_default_arena": trained,
        "arenas": arenas, "firmware_sizes": _firmware_sizes(report),
    }}  # fmt: skip


def targets(results: dict[str, Any]) -> Targets:
    out: Targets = []
    check = checker(out)
    p = results.get("preflight")
    if not p:
        return out
    warm, warm_t = p["warm_seconds"]["median"], p["transformer_warm_seconds"]["median"]
    check(f"preflight warm, default model, {p['devices']} devices ≤ 10 s", warm, warm <= 10)
    check("preflight warm, transformer family ≤ 20 s", warm_t, warm_t <= 20)
    same = sum(a["preflight"] == a["other_weights"] for a in p["arenas"].values())
    check(  # the value: how many family × dataset cases agree (of 15)
        "preflight arena = the arena with other weights and real calibration, every family on "
        "each dataset it takes (cases that agree)",
        same, same == len(p["arenas"]),
    )  # fmt: skip
    trained = p["trained_default_arena"]
    ok = None if trained is None else p["default_arena"] == trained
    check("preflight arena = the workspace's trained default model's arena", trained, ok)
    _check_sizes(check, p.get("firmware_sizes") or {})
    return out


def _check_sizes(check: Any, sizes: dict[str, dict[str, Any]]) -> None:
    """The largest gap between preflight's and the trained firmware's flash or RAM, in %, over
    the Cortex-M devices; not measured unless every one was a firmware measurement."""
    gaps = [
        abs(s[f"preflight_{k}"] - s[f"firmware_{k}"]) / s[f"firmware_{k}"] * 100
        for s in sizes.values()
        for k in ("flash", "ram")
    ]
    linked = bool(sizes) and all(s["sizes"].startswith("measured") for s in sizes.values())
    worst = round(max(gaps), 3) if gaps and linked else None
    check(
        f"preflight flash and RAM within 1 % of the trained model's firmware, every Cortex-M "
        f"device ({len(sizes)}; worst gap in %)",
        worst, None if worst is None else worst <= 1.0,
    )  # fmt: skip
