"""Stage `evaluate`: test-split accuracy at every level, the int8 check, the TFLite Micro arena.

Levels: torch fp32 → LiteRT fp32 → LiteRT int8 (ai_edge_litert) → TFLite Micro int8 (tflite-micro).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import atomic, interrupt, tflm
from pipeline.config import VARIANTS, EvaluateParams
from pipeline.errors import ArtifactError
from pipeline.export import INT8_NAME, load_trained, variant_file
from pipeline.prepare import Splits
from pipeline.tflite_inspect import check_full_int8, count_macs, read_model

METRICS_FILE = Path("metrics/evaluate.json")
PREDICTIONS_FILE = Path("metrics/predictions.csv")
VARIANTS_FILE = Path("metrics/variants.json")


@dataclass(frozen=True)
class EvaluateResult:
    metrics: dict[str, float | int]
    variants: dict[str, dict]
    """Per variant: file, bytes, MACs, LiteRT accuracy; int8 also TFLite Micro accuracy, arena, ops."""
    confusion: np.ndarray
    classes: list[str]


def quantize_input(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """float → int8 with the model's input parameters (what firmware does before invoke)."""
    return np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)


def _litert_outputs(model: bytes, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """Run every sample through LiteRT in one batched invoke; returns raw outputs and input details."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model, num_threads=1)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], [len(x), *inp["shape"][1:]])
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    if inp["dtype"] == np.int8:
        scale, zp = inp["quantization"]
        x = quantize_input(x, scale, zp)
    interp.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interp.invoke()
    out = interp.get_output_details()[0]
    return interp.get_tensor(out["index"]).copy(), inp


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise ArtifactError(f"{path}: missing. Run `tinyops stage export` first.")
    return path.read_bytes()


def evaluate(
    params: EvaluateParams,
    data: Splits,
    model_path: Path = Path("models/model.pt"),
    export_dir: Path = Path("exports"),
) -> EvaluateResult:
    import torch

    interrupt.import_modules(
        "ai_edge_litert.interpreter", "tflite_micro.python.tflite_micro.runtime"
    )
    x, y = data.x["test"], data.y["test"]
    blobs = {v: _read(export_dir / variant_file(v)) for v in VARIANTS}
    fp32_bytes, int8_bytes = blobs["fp32"], blobs["int8"]
    infos = {v: read_model(b, str(export_dir / variant_file(v))) for v, b in blobs.items()}
    check_full_int8(int8_bytes, str(export_dir / INT8_NAME))

    model, _, _ = load_trained(model_path)
    torch.set_num_threads(1)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x)).numpy()
    lite_fp32, _ = _litert_outputs(fp32_bytes, x)
    lite_int8, int8_in = _litert_outputs(int8_bytes, x)
    lite_outputs = {"fp32": lite_fp32, "int8": lite_int8}
    for variant in ("float16", "dynamic_int8"):
        lite_outputs[variant], _ = _litert_outputs(blobs[variant], x)

    arena = tflm.measure_arena_bytes(int8_bytes, params.arena_max_bytes, params.arena_granularity)
    try:
        fp32_arena = tflm.measure_arena_bytes(
            fp32_bytes, params.arena_max_bytes, params.arena_granularity
        )
    except ValueError:
        fp32_arena = -1  # informative only: fp32 is not the MCU deployment target
    n_micro = len(x) if params.tflm_samples == 0 else min(params.tflm_samples, len(x))
    scale, zp = int8_in["quantization"]
    micro = tflm.predict(int8_bytes, quantize_input(x[:n_micro], scale, zp), arena)

    def acc(outputs: np.ndarray, labels: np.ndarray) -> float:
        return round(float((outputs.argmax(1) == labels).mean()), 6)

    pred_int8 = lite_int8.argmax(1)
    metrics: dict[str, float | int] = {
        "torch_fp32_accuracy": acc(torch_logits, y),
        "tflite_fp32_accuracy": acc(lite_fp32, y),
        "tflite_int8_accuracy": acc(lite_int8, y),
        "tflm_int8_accuracy": acc(micro, y[:n_micro]),
        "tflite_fp32_bytes": len(fp32_bytes),
        "tflite_int8_bytes": len(int8_bytes),
        "tflm_arena_bytes": arena,
        "tflm_fp32_arena_bytes": fp32_arena,
        "int8_fp32_agreement": round(float((pred_int8 == lite_fp32.argmax(1)).mean()), 6),
        "tflm_litert_int8_agreement": round(
            float((micro.argmax(1) == pred_int8[:n_micro]).mean()), 6
        ),
        "torch_tflite_fp32_max_logit_diff": float(f"{np.abs(torch_logits - lite_fp32).max():.3e}"),
        "test_samples": len(y),
        "tflm_samples": n_micro,
    }
    k = int(data.meta["num_classes"])
    pred_micro = micro.argmax(1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y[:n_micro], pred_micro), 1)
    variants = {
        v: {
            "file": str(export_dir / variant_file(v)),
            "bytes": len(blobs[v]),
            "macs": count_macs(infos[v]),
            "litert_accuracy": acc(lite_outputs[v], y),
        }
        for v in VARIANTS
    }
    variants["int8"] |= {
        "tflm_accuracy": metrics["tflm_int8_accuracy"],
        "tflm_arena_bytes": arena,
        "ops": list(infos["int8"].op_names),
        "input_scale": float(scale),
        "input_zero_point": int(zp),
    }
    for v in ("float16", "dynamic_int8"):
        metrics[f"tflite_{v}_accuracy"] = variants[v]["litert_accuracy"]
        metrics[f"tflite_{v}_bytes"] = variants[v]["bytes"]
    return EvaluateResult(
        metrics=metrics, variants=variants, confusion=confusion, classes=list(data.meta["classes"])
    )


def write_outputs(
    result: EvaluateResult,
    metrics_file: Path = METRICS_FILE,
    predictions_file: Path = PREDICTIONS_FILE,
    variants_file: Path = VARIANTS_FILE,
) -> None:
    """metrics JSON, per-variant JSON (read by deploy), and a long-form (actual, predicted) CSV
    that DVC draws as a confusion matrix."""
    atomic.write_json(metrics_file, result.metrics)
    atomic.write_json(variants_file, result.variants)
    buf = io.StringIO()
    buf.write("actual,predicted\n")
    for a in range(len(result.classes)):
        for p in range(len(result.classes)):
            for _ in range(int(result.confusion[a, p])):
                buf.write(f"{result.classes[a]},{result.classes[p]}\n")
    atomic.write_text(predictions_file, buf.getvalue())


def confusion_png(result: EvaluateResult, path: Path) -> Path:
    """Confusion matrix (TFLite Micro int8, test split) as a PNG for the MLflow run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
    ax.imshow(result.confusion, cmap="Blues")
    ax.set_xticks(range(len(result.classes)), result.classes, rotation=90)
    ax.set_yticks(range(len(result.classes)), result.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"TFLite Micro int8, accuracy {result.metrics['tflm_int8_accuracy']:.3f}")
    for (i, j), v in np.ndenumerate(result.confusion):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic.write_bytes(path, buf.getvalue())
    return path
