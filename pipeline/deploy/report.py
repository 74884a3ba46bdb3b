"""Stage `report`: every device's outcome as a markdown table, accuracy against size for every
variant with each device's model-size budget drawn in, and int8 against float layer by layer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.core import atomic, catalog
from pipeline.core.catalog import (
    INT8_LAYERS,
    LAYERS_PNG,
    REPORT_MD,
    REPORT_PNG,
    DeployStatus,
    EvaluateMetrics,
    TrainSummary,
    Variants,
)
from pipeline.core.charts import partition_chart, png
from pipeline.core.config import Params


def load_statuses(status_dir: Path, devices: list[str]) -> dict[str, DeployStatus]:
    out = {}
    for device in devices:
        path = catalog.deploy_status_file(device, status_dir)
        out[device] = (
            catalog.read(path, DeployStatus, f"deploy --device {device}")
            if path.is_file()
            else DeployStatus(device=device, status="not deployed")
        )
    return out


def _row(device: str, runtime: str, status: DeployStatus) -> str:
    s = status.model_dump()
    prod = f"v{s['production_version']}" if s.get("production_version") else "-"
    if s.get("model_bytes") is None:  # rejected or not deployed: no chosen variant
        cells = [
            device,
            runtime,
            s["status"],
            "-",
            "-",
            "-",
            "-",
            "-",
            "no",
            prod,
            s.get("reason", ""),
        ]
    else:
        kind = "est." if runtime == "tflm" else "host"
        cells = [
            device,
            runtime,
            s["status"],
            s["variant"],
            f"{s['model_bytes']:,}",
            f"{s['arena_bytes']:,}" if s.get("arena_bytes") else "-",
            f"{s['latency_ms']:.3f} ({kind})",
            f"{s['accuracy']:.4f}",
            "yes",
            prod,
            s.get("reason", ""),
        ]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _firmware_cells(device: str, fw: dict) -> str:
    est = fw.get("estimated", {})
    m = fw.get("measured")
    if not m:
        why = fw.get("error") or fw.get("skipped") or "not run"
        flash, ram = est.get("flash_bytes", 0), est.get("ram_bytes", 0)
        return f"| {device} | - | - / {flash:,} | - / {ram:,} | - | - | estimates only: {why} |"
    same = (
        f"{m['samples']} samples byte-identical" if m["identical"] else f"DIFFER: {m['mismatch']}"
    )
    return (
        f"| {device} | {m['core']} ({m['kernels']}), QEMU {m['machine']} | {m['flash_bytes']:,} / "
        f"{est['flash_bytes']:,} | {m['ram_bytes']:,} / {est['ram_bytes']:,} | {m['arena_min_bytes']:,} "
        f"| {m['instructions_per_inference']:,} | {same} |"
    )


def _firmware_lines(statuses: dict[str, DeployStatus]) -> list[str]:
    """Measured (firmware built with TFLite Micro, run under QEMU) next to estimated figures."""
    rows = []
    for device, s in statuses.items():
        chosen = [c for c in s.candidates if c.get("variant") == s.variant and c.get("firmware")]
        if chosen:
            rows.append(_firmware_cells(device, chosen[0]["firmware"]))
    if not rows:
        return []
    return [
        "",
        "Microcontroller firmware (release build with TensorFlow Lite Micro; flash = ELF .text+.data, "
        "RAM = .data+.bss with the arena + measured stack peak; estimates from params):",
        "",
        "| device | core (kernels) | flash measured / estimated (B) | RAM measured / estimated (B) "
        "| C++ arena (B) | instructions per inference | outputs vs Python TFLite Micro |",
        "|---|---|---:|---:|---:|---:|---|",
        *rows,
    ]


def _champion_lines(statuses: dict[str, DeployStatus]) -> list[str]:
    """Challenger and production, scored on the same test split in the device's runtime."""
    rows = [
        f"| {d} | {s.accuracy:.4f} | v{s.champion_version}: "
        + (f"{s.champion_accuracy:.4f}" if s.champion_accuracy is not None else "another lineage")
        + f" | `{(s.test_split_sha256 or '')[:12]}` |"
        for d, s in statuses.items()
        if s.champion_version is not None and s.accuracy is not None
    ]
    if not rows:
        return []
    header = [
        "",
        "Champion and challenger on the same test split (production re-scored in this run):",
        "",
        "| device | challenger | production | test split sha256 |",
        "|---|---:|---:|---|",
    ]
    return header + rows


def federated_line(trained: TrainSummary) -> str:
    """A federated job: who trained, how, for how long, and the privacy it bought."""
    extra = trained.model_dump()
    dp = (
        f", DP epsilon {extra['dp_epsilon']:g} at delta {extra['dp_delta']:g}"
        if "dp_epsilon" in extra
        else ""
    )
    return (
        f"Trained federated: {extra.get('clients', '?')} clients, {trained.epochs_run} rounds "
        f"(best round {trained.best_epoch}), strategy {extra.get('federated_strategy', '?')}, "
        f"partition {extra.get('partition', '?')}{dp}; central validation accuracy "
        f"{trained.val_accuracy:.4f}."
    )


# train.json's parallelism → its own line; the rest are centralized (torchrun or Keras workers).
TRAINING_LINES = {"federated": federated_line}


def training_line(trained: TrainSummary | None) -> str:
    """How the model was trained: strategy, shape and the model state each worker held."""
    if trained is None:
        return "Training: metrics/train.json is missing."
    if trained.parallelism in TRAINING_LINES:
        return TRAINING_LINES[trained.parallelism](trained)
    if trained.framework == "tflite":
        return (
            f"Trained elsewhere (model.arch tflite): adopted as given, {trained.parameters:,} "
            f"stored weights; validation figure in LiteRT {trained.val_accuracy:.4f}."
        )
    per_rank = trained.per_rank_state()
    held = " / ".join(f"{b / 2**20:.2f}" for b in per_rank) or "?"
    whole = trained.parameters * 16 / 2**20
    return (
        f"Trained with {trained.strategy or trained.parallelism} on {trained.world_size} "
        f"worker(s); model state per worker (weights, gradients, AdamW): {held} MiB "
        f"(the whole model's: {whole:.2f} MiB); best epoch {trained.best_epoch} of "
        f"{trained.epochs_run}."
    )


def markdown(
    params: Params,
    evaluated: EvaluateMetrics,
    statuses: dict[str, DeployStatus],
    trained: TrainSummary | None = None,
    layers: dict[str, Any] | None = None,
) -> str:
    evaluate = evaluated.model_dump(exclude_none=True)
    levels = (
        "framework_fp32",
        "tflite_fp32",
        "tflite_float16",
        "tflite_dynamic_int8",
        "tflite_int8",
        "tflm_int8",
    )
    lines = [
        "# Deployment report",
        "",
        training_line(trained),
        "",
        *(
            f"Test-split {name} per level: "
            + ", ".join(
                f"{lvl.replace('framework', evaluated.framework)} {evaluate[f'{lvl}_{key}']:.4f}"
                for lvl in levels
                if f"{lvl}_{key}" in evaluate
            )
            + "\n"
            for key, name in (("accuracy", "accuracy"), ("auc", "anomaly AUC"))
            if f"tflm_int8_{key}" in evaluate
        ),
        "| device | runtime | status | variant | size (B) | arena (B) | latency (ms) | accuracy "
        "| fits | production | why |",
        "|---|---|---|---|---:|---:|---:|---:|---|---|---|",
    ]
    for device, s in statuses.items():
        lines.append(_row(device, params.devices[device].runtime, s))
    lines += _champion_lines(statuses)
    lines += _firmware_lines(statuses)
    lines += layer_lines(layers or {})
    lines += ["", "Every variant checked, per device:", ""]
    lines += ["| device | variant | fits | failed checks |", "|---|---|---|---|"]
    for device, s in statuses.items():
        for c in s.candidates:
            failed = "; ".join(ch["reason"] for ch in c["checks"] if not ch["passed"]) or "-"
            lines.append(
                f"| {device} | {c['variant']} | {'yes' if c['fits'] else 'no'} | {failed} |"
            )
    return "\n".join(lines) + "\n"


def layer_lines(layers: dict[str, Any], shown: int = 5) -> list[str]:
    """Where int8 departs most from float: the worst layers by SNR (metrics/int8_layers.json)."""
    rows = layers.get("layers") or []
    if not rows:
        note = layers.get("note")
        return ["", f"Per-layer int8 divergence: {note}."] if note else []
    worst = layers["worst"]
    lines = [
        "",
        f"## int8 against float, layer by layer ({len(rows)} quantized tensors)",
        "",
        f"Worst layer: **{worst['name']}** ({worst['op']}), SNR {worst['snr_db']:.1f} dB, cosine "
        f"{worst['cosine']:.4f}. Errors compound: each figure includes the layers before it "
        f"({layers['note']}). ![SNR per layer]({LAYERS_PNG.name})",
        "",
        "| layer | op | SNR (dB) | cosine |",
        "|---|---|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: r["snr_db"])[:shown]:
        lines.append(f"| {r['name']} | {r['op']} | {r['snr_db']:.1f} | {r['cosine']:.4f} |")
    return lines


def layer_chart(layers: dict[str, Any]) -> bytes:
    """SNR per quantized tensor in graph order, the worst one marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = layers.get("layers") or []
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.plot([r["snr_db"] for r in rows], marker=".", linewidth=0.8)
    if rows:
        worst = layers["worst"]
        at = rows.index(worst)
        ax.annotate(f"{worst['name']} ({worst['op']})", (at, worst["snr_db"]), fontsize=8)
    ax.set_xlabel("quantized tensor, in graph order")
    ax.set_ylabel("SNR against float (dB)")
    ax.set_title("int8 against float, layer by layer")
    return png(fig)


def chart(params: Params, table: Variants) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = {name: v.model_dump() for name, v in table.items()}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    accs = []
    for name, v in sorted(variants.items(), key=lambda kv: kv[1]["bytes"]):
        acc = v["tflm_accuracy"] if v.get("tflm_accuracy") is not None else v["litert_accuracy"]
        accs.append(acc)
        ax.scatter(v["bytes"], acc, s=40, zorder=3, label=f"{name} ({v['bytes']:,} B)")
    ax.set_ylim(max(0.0, min(accs) - 0.05), min(1.0, max(accs)) + 0.01)
    sizes = [v["bytes"] for v in variants.values()]
    lo, hi = min(sizes) / 4, max(sizes) * 40
    budgets: dict[int, list[str]] = {}
    for device, profile in params.devices.items():
        budget = profile.flash_bytes - params.deploy.runtime_flash_bytes[profile.runtime]
        if lo < budget < hi:
            budgets.setdefault(budget, []).append(device)
    for budget, names in sorted(budgets.items()):
        ax.axvline(budget, linestyle="--", linewidth=0.8, color="grey")
        ax.text(
            budget,
            ax.get_ylim()[0],
            " " + ", ".join(sorted(names)),
            rotation=90,
            fontsize=7,
            va="bottom",
            ha="right",
            color="grey",
        )
    ax.legend(loc="lower left", fontsize=8, title="variant", title_fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("model size (bytes, log); dashed: each device's flash budget for the model")
    ax.set_ylabel("test accuracy (int8: TFLite Micro; others: LiteRT)")
    ax.set_title("Accuracy against size, every variant")
    return png(fig)


def write_report(params: Params, status_dir: Path = catalog.DEPLOY_STATUS_DIR) -> tuple[Path, Path]:
    evaluate = catalog.read(catalog.EVALUATE_METRICS, EvaluateMetrics, "evaluate")
    variants = catalog.read(catalog.VARIANTS_FILE, Variants, "evaluate")
    statuses = load_statuses(status_dir, sorted(params.devices))
    trained = (
        catalog.read(catalog.TRAIN_METRICS, TrainSummary, "train")
        if catalog.TRAIN_METRICS.is_file()
        else None
    )
    layers = json.loads(INT8_LAYERS.read_text()) if INT8_LAYERS.is_file() else {}
    atomic.write_text(REPORT_MD, markdown(params, evaluate, statuses, trained, layers))
    atomic.write_bytes(REPORT_PNG, chart(params, variants))
    atomic.write_bytes(LAYERS_PNG, layer_chart(layers))
    if catalog.PARTITIONS_FILE.is_file():
        parts = catalog.read(catalog.PARTITIONS_FILE, catalog.Partitions, "prepare")
        atomic.write_bytes(catalog.PARTITIONS_PNG, partition_chart(parts))
    return REPORT_MD, REPORT_PNG
