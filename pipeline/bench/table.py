"""`tinyops bench`'s results as one table, then a PASS/FAIL line per target."""

from __future__ import annotations

from typing import Any

from pipeline.bench.firmware import firmware_rows
from pipeline.bench.frameworks import framework_rows

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


def _paradigm_detail(row: dict[str, Any], data_state: float) -> Row:
    detail = (
        f"state {row['model_state_bytes_max_rank'] / 1024:,.0f} KiB, "
        f"sends {row['sent_bytes_per_step_max_rank'] / 1024:,.0f} KiB/step"
    )
    if "step_ms" in row:
        detail += (
            f"; step {row['step_ms']:.1f} ms = busy {row['busy_ms']:.1f} + comm "
            f"{row['comm_ms']:.1f} + bubble/overhead; bubble {row['bubble_and_overhead_measured']:.2f}"
            f" measured vs {row['bubble_theory']:.2f} theory; ideal "
            f"{row['ideal_samples_per_s']:,.0f}/s"
        )
    ratio = row["model_state_bytes_max_rank"] / data_state if data_state else 0.0
    return ("  └ busiest rank", detail, "", f"{ratio:.2f}× data's state")


def paradigm_rows(r: dict[str, Any]) -> list[Row]:
    """Each paradigm's samples/s (ratio to 1 × 1), then its busiest rank's model state (ratio
    to data parallelism's), bytes sent and, for pipelines, where the step's time goes."""
    out: list[Row] = []
    for model, configs in r.get("paradigms", {}).items():
        base = configs["1 × 1"]["samples_per_s"]["median"]
        data_state = configs.get("data 2 × 1", configs["1 × 1"])["model_state_bytes_max_rank"]
        for name, row in configs.items():
            s = row["samples_per_s"]
            out.append(
                (
                    f"{model}: {name} (samples/s)",
                    f"{s['median']:,.0f}",
                    f"{s['min']:,.0f}–{s['max']:,.0f}",
                    f"{s['median'] / base:.2f}×",
                )
            )
            out.append(_paradigm_detail(row, data_state))
    return out


def rows(r: dict[str, Any]) -> list[Row]:
    """Every measured row: (measure, median, min–max, ratio)."""
    return [
        *_throughput_rows(r),
        *paradigm_rows(r),
        *framework_rows(r),
        *firmware_rows(r),
        *_latency_rows(r),
        *_quantization_rows(r),
        *_cost_rows(r),
    ]


def print_results(r: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    machine = r["machine"]
    table = Table(title=f"tinyops bench: {machine['cores']} cores, torch {machine['torch']}")
    for col in ("measure", "median", "min–max", "ratio"):
        table.add_column(col)
    for row in (
        rows(r) if "throughput" in r else [*paradigm_rows(r), *framework_rows(r), *firmware_rows(r)]
    ):
        table.add_row(*row)
    console.print(table)
    if r.get("families"):
        from pipeline.bench.families import family_table

        console.print(family_table(r), markup=False)
    for t in r["targets"]:
        value = "" if t["value"] is None else f" ({t['value']:.3g})"
        console.print(f"{t['status']:>12}  {t['target']}{value}")
