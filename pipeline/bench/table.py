"""`tinyops bench`'s results as one table, then a PASS/FAIL line per target."""

from __future__ import annotations

from typing import Any

Row = tuple[str, str, str, str]


def _throughput_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for model, configs in r["throughput"].items():
        base = configs["1 proc × 1 thread"]["median"]
        for name, s in configs.items():
            rows.append(
                (
                    f"{model}: {name} (samples/s)",
                    f"{s['median']:,.1f}",
                    f"{s['min']:,.1f}–{s['max']:,.1f}",
                    f"{s['median'] / base:.2f}×",
                )
            )
        for way, s in r["allreduce_ms"].get(model, {}).items():
            rows.append(
                (
                    f"{model}: all-reduce of the gradients, {way} (ms)",
                    f"{s['median']:.3f}",
                    f"{s['min']:.3f}–{s['max']:.3f}",
                    "",
                )
            )
    return rows


def _latency_rows(r: dict[str, Any]) -> list[Row]:
    base = r["latency_ms"]["fp32"]["median"]
    rows: list[Row] = []
    for variant, s in r["latency_ms"].items():
        tflm = variant.startswith("tflm")
        rows.append(
            (
                f"{'' if tflm else 'LiteRT '}{variant} invoke, host (ms)",
                f"{s['median']:.4f}",
                f"{s['min']:.4f}–{s['max']:.4f}",
                "" if tflm else f"{s['median'] / base:.2f}×",
            )
        )
    return rows


def _quantization_rows(r: dict[str, Any]) -> list[Row]:
    q, heavy = r["quantization"], r["resnet8_export"]
    rows: list[Row] = [(level, f"{v:.4f}", "", "") for level, v in q["accuracy"].items()]
    rows.append(("int8/fp32 agreement", f"{q['int8_fp32_agreement']:.4f}", "", ""))
    for prefix, sizes in (("", q["bytes"]), ("resnet8: ", heavy["bytes"])):
        for variant, size in sizes.items():
            if prefix and variant not in ("fp32", "int8"):
                continue
            ratio = f"{size / sizes['int8']:.2f}× int8"
            rows.append((f"{prefix}.tflite {variant} (B)", f"{size:,}", "", ratio))
    for name, arenas in (("default", q["arena_bytes"]), ("resnet8", heavy["arena_bytes"])):
        for variant in ("fp32", "int8"):
            ratio = f"{arenas[variant] / arenas['int8']:.2f}× int8"
            rows.append(
                (f"{name}: TFLite Micro arena {variant} (B)", f"{arenas[variant]:,}", "", ratio)
            )
    rows += [
        (f"bundled arena ÷ need: {device}", f"{ratio:.3f}", "", "")
        for device, ratio in q["bundled_arena_over_need"].items()
    ]
    invoke = f"{heavy['tflm_int8_invoke_ms']:.2f}"
    rows.append(("resnet8: TFLite Micro int8 invoke, host (ms)", invoke, "", ""))
    rows += [
        (f"estimated latency: {device} (ms)", f"{ms:.2f}", "", "")
        for device, ms in q["mcu_estimated_latency_ms"].items()
    ]
    return rows


def _cost_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = [
        (f"peak RSS: {stage} (MiB)", f"{mib:,.0f}", "", "") for stage, mib in r["memory"].items()
    ]
    for name, s in r["overhead"].items():
        span = f"{s['min']:.3f}–{s['max']:.3f}" if "min" in s else ""
        rows.append((name, f"{s['median']:.3f}", span, ""))
    return rows


def rows(r: dict[str, Any]) -> list[Row]:
    """Every measured row: (measure, median, min–max, ratio)."""
    return [*_throughput_rows(r), *_latency_rows(r), *_quantization_rows(r), *_cost_rows(r)]


def print_results(r: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    machine = r["machine"]
    table = Table(title=f"tinyops bench: {machine['cores']} cores, torch {machine['torch']}")
    for col in ("measure", "median", "min–max", "ratio"):
        table.add_column(col)
    for row in rows(r):
        table.add_row(*row)
    console.print(table)
    for t in r["targets"]:
        value = "" if t["value"] is None else f" ({t['value']:.3g})"
        console.print(f"{t['status']:>12}  {t['target']}{value}")
