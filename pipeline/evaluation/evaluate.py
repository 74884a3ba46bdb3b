"""Stage `evaluate`: test-split accuracy at every level, the int8 check, the TFLite Micro arena.

Levels: the training framework's fp32 (torch or Keras, `REFERENCE`) → LiteRT fp32 → LiteRT int8
(ai_edge_litert) → TFLite Micro int8 (tflite-micro).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import atomic, catalog, interrupt
from pipeline.core.catalog import EvaluateMetrics, VariantInfo, Variants
from pipeline.core.config import VARIANTS, EvaluateParams
from pipeline.core.errors import ArtifactError
from pipeline.data.prepare import Splits
from pipeline.tflite import litert, tflm
from pipeline.tflite.flatbuffer import ModelInfo, check_full_int8, count_macs, read_model


@dataclass(frozen=True)
class EvaluateResult:
    metrics: EvaluateMetrics
    variants: Variants
    confusion: np.ndarray
    classes: list[str]


@dataclass(frozen=True)
class Outputs:
    """Test-split outputs at every level: the framework's fp32, LiteRT per variant, TFLite Micro."""

    framework: str
    reference_logits: np.ndarray
    litert: dict[str, np.ndarray]
    micro: np.ndarray
    int8_input: dict[str, Any]


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise ArtifactError(f"{path}: missing. Run `tinyops stage export` first.")
    return path.read_bytes()


def load_variants(export_dir: Path) -> tuple[dict[str, bytes], dict[str, ModelInfo]]:
    """Every variant's bytes and parsed flatbuffer; the int8 one must be full-integer."""
    blobs = {v: _read(catalog.variant_file(v, export_dir)) for v in VARIANTS}
    infos = {v: read_model(b, str(catalog.variant_file(v, export_dir))) for v, b in blobs.items()}
    check_full_int8(blobs["int8"], str(catalog.variant_file("int8", export_dir)))
    return blobs, infos


def arenas(params: EvaluateParams, blobs: dict[str, bytes]) -> tuple[int, int]:
    """The smallest TFLite Micro arena for int8 and (informative, -1 if it cannot run) fp32."""
    int8 = tflm.measure_arena_bytes(blobs["int8"], params.arena_max_bytes, params.arena_granularity)
    try:
        fp32 = tflm.measure_arena_bytes(
            blobs["fp32"], params.arena_max_bytes, params.arena_granularity
        )
    except ValueError:
        fp32 = -1  # informative only: fp32 is not the MCU deployment target
    return int8, fp32


def _torch_fp32(trained_dir: Path, x: np.ndarray) -> np.ndarray:
    from pipeline.models.store import predict

    return predict(trained_dir / catalog.MODEL_FILE.name, x)


def _keras_fp32(trained_dir: Path, x: np.ndarray) -> np.ndarray:
    from pipeline.models.keras_store import predict

    return predict(trained_dir, x)


# The framework that trained models/trained/ → its fp32 logits (the first level). Only that
# framework is imported: torch and TensorFlow never share this process.
REFERENCE = {"torch": _torch_fp32, "keras": _keras_fp32}


def run_levels(
    x: np.ndarray, trained_dir: Path, blobs: dict[str, bytes], arena: int, n_micro: int
) -> Outputs:
    framework = catalog.trained_framework(trained_dir)
    reference = REFERENCE[framework](trained_dir, x)
    lite, inputs = {}, {}
    for variant in ("fp32", "int8", "float16", "dynamic_int8"):
        lite[variant], inputs[variant] = litert.run_batch(blobs[variant], x)
    scale, zp = inputs["int8"]["quantization"]
    micro = tflm.predict(blobs["int8"], litert.quantize_input(x[:n_micro], scale, zp), arena)
    return Outputs(framework, reference, lite, micro, inputs["int8"])


def _acc(outputs: np.ndarray, labels: np.ndarray) -> float:
    return round(float((outputs.argmax(1) == labels).mean()), 6)


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return round(float((a.argmax(1) == b.argmax(1)).mean()), 6)


def level_metrics(
    out: Outputs, y: np.ndarray, blobs: dict[str, bytes], arenas: tuple[int, int]
) -> EvaluateMetrics:
    n_micro = len(out.micro)
    lite = out.litert
    diff = np.abs(out.reference_logits - lite["fp32"]).max()
    return EvaluateMetrics(
        framework=out.framework,
        framework_fp32_accuracy=_acc(out.reference_logits, y),
        tflite_fp32_accuracy=_acc(lite["fp32"], y),
        tflite_int8_accuracy=_acc(lite["int8"], y),
        tflm_int8_accuracy=_acc(out.micro, y[:n_micro]),
        tflite_fp32_bytes=len(blobs["fp32"]),
        tflite_int8_bytes=len(blobs["int8"]),
        tflm_arena_bytes=arenas[0],
        tflm_fp32_arena_bytes=arenas[1],
        int8_fp32_agreement=_agreement(lite["int8"], lite["fp32"]),
        tflm_litert_int8_agreement=_agreement(out.micro, lite["int8"][:n_micro]),
        framework_tflite_fp32_max_logit_diff=float(f"{diff:.3e}"),
        test_samples=len(y),
        tflm_samples=n_micro,
        **{
            f"tflite_{v}_{k}": value
            for v in ("float16", "dynamic_int8")
            for k, value in (("accuracy", _acc(lite[v], y)), ("bytes", len(blobs[v])))
        },
    )


def variant_table(
    out: Outputs, y: np.ndarray, blobs: dict[str, bytes], infos: dict, export_dir: Path, arena: int
) -> Variants:
    """Per variant: file, bytes, MACs, LiteRT accuracy; int8 also TFLite Micro accuracy, arena,
    ops and its input quantization (what deploy and the bundles read)."""
    scale, zp = out.int8_input["quantization"]
    extra = {
        "int8": {
            "tflm_accuracy": _acc(out.micro, y[: len(out.micro)]),
            "tflm_arena_bytes": arena,
            "ops": list(infos["int8"].op_names),
            "input_scale": float(scale),
            "input_zero_point": int(zp),
        }
    }
    return Variants(
        **{
            v: VariantInfo(
                file=str(catalog.variant_file(v, export_dir)),
                bytes=len(blobs[v]),
                macs=count_macs(infos[v]),
                litert_accuracy=_acc(out.litert[v], y),
                **extra.get(v, {}),
            )
            for v in VARIANTS
        }
    )


def evaluate(
    params: EvaluateParams,
    data: Splits,
    trained_dir: Path = catalog.TRAINED_DIR,
    export_dir: Path = catalog.EXPORT_DIR,
) -> EvaluateResult:
    """Accuracy at every level on the test split, arenas, and the per-variant table."""
    interrupt.import_modules(
        "ai_edge_litert.interpreter", "tflite_micro.python.tflite_micro.runtime"
    )
    x, y = data.x["test"], data.y["test"]
    blobs, infos = load_variants(export_dir)
    arena = arenas(params, blobs)
    n_micro = len(x) if params.tflm_samples == 0 else min(params.tflm_samples, len(x))
    out = run_levels(x, trained_dir, blobs, arena[0], n_micro)
    k = data.meta.num_classes
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y[:n_micro], out.micro.argmax(1)), 1)
    metrics = level_metrics(out, y, blobs, arena)
    extra = streaming_metrics(params, export_dir / "streaming", x[:n_micro], y[:n_micro], out.micro)
    return EvaluateResult(
        metrics=EvaluateMetrics.model_validate(metrics.model_dump() | extra),
        variants=variant_table(out, y, blobs, infos, export_dir, arena[0]),
        confusion=confusion,
        classes=list(data.meta.classes),
    )


def streaming_metrics(
    params: EvaluateParams, folder: Path, x: np.ndarray, y: np.ndarray, unrolled: np.ndarray
) -> dict[str, Any]:
    """A recurrent family's streaming step model (exports/streaming/), run frame by frame in
    TFLite Micro over the same windows: its accuracy, its agreement with the unrolled int8
    model, its size and arena. Nothing for other families."""
    import json

    description = folder / "streaming.json"
    spec = json.loads(description.read_text()) if description.is_file() else {}
    if "file" not in spec:
        return {}
    step = _read(folder / spec["file"])
    check_full_int8(step, str(folder / spec["file"]))
    arena = tflm.measure_arena_bytes(step, params.arena_max_bytes, params.arena_granularity)
    frames = x[:, : spec["frames"] * spec["stride"]].reshape(len(x), spec["frames"], -1)
    logits = tflm.predict_streaming(step, frames, arena)
    return {
        "tflm_streaming_int8_accuracy": _acc(logits, y),
        "streaming_unrolled_agreement": _agreement(logits, unrolled),
        "tflite_streaming_int8_bytes": len(step),
        "tflm_streaming_arena_bytes": arena,
    }


def write_outputs(
    result: EvaluateResult,
    metrics_file: Path = catalog.EVALUATE_METRICS,
    predictions_file: Path = catalog.PREDICTIONS_FILE,
    variants_file: Path = catalog.VARIANTS_FILE,
) -> None:
    """metrics JSON, per-variant JSON (read by deploy), and a long-form (actual, predicted) CSV
    that DVC draws as a confusion matrix."""
    catalog.write(metrics_file, result.metrics)
    catalog.write(variants_file, result.variants)
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
    ax.set_title(f"TFLite Micro int8, accuracy {result.metrics.tflm_int8_accuracy:.3f}")
    for (i, j), v in np.ndenumerate(result.confusion):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic.write_bytes(path, buf.getvalue())
    return path
