"""Stage `evaluate`: test-split accuracy at every level, the int8 check, the TFLite Micro arena.

Levels: the training framework's fp32 (torch or Keras, `REFERENCE`) → LiteRT fp32 → LiteRT int8
(ai_edge_litert) → TFLite Micro int8 (tflite-micro). What a level's outputs predict is the
family's task (pipeline/models/tasks.py): class argmax, or an autoencoder's reconstruction error
against a threshold chosen on the validation split, with its AUC beside the accuracy.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import atomic, catalog, interrupt
from pipeline.core.catalog import DatasetMeta, EvaluateMetrics, VariantInfo, Variants
from pipeline.core.config import VARIANTS, EvaluateParams
from pipeline.core.errors import ArtifactError
from pipeline.data.prepare import Splits, renormalised
from pipeline.models.architecture import Architecture
from pipeline.models.tasks import task_for
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
    """Outputs at every level, as real values (int8 ones dequantized): the framework's fp32,
    LiteRT per variant, TFLite Micro on the first `len(micro)` samples."""

    framework: str
    reference_logits: np.ndarray | None  # none for a model trained elsewhere (model.arch tflite)
    litert: dict[str, np.ndarray]
    micro: np.ndarray
    int8_input: dict[str, Any]
    arch: Architecture

    def levels(self) -> dict[str, np.ndarray]:
        """Level name (the prefix of its metrics) → outputs, for the levels this model has."""
        first = {} if self.reference_logits is None else {"framework_fp32": self.reference_logits}
        return {**first, **{f"tflite_{v}": o for v, o in self.litert.items()},
                "tflm_int8": self.micro}  # fmt: skip


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise ArtifactError(f"{path}: missing. Run `tinyops stage export` first.")
    return path.read_bytes()


# The framework that trained models/trained/ → the variants export makes of it (a model trained
# elsewhere has no float network to make the others from).
EXPORTED = {"torch": VARIANTS, "keras": VARIANTS, "tflite": ("int8",)}


def load_variants(
    export_dir: Path, variants: tuple[str, ...] = VARIANTS
) -> tuple[dict[str, bytes], dict[str, ModelInfo]]:
    """Each variant's bytes and parsed flatbuffer (a missing one names the stage to rerun);
    the int8 one must be full-integer."""
    blobs = {v: _read(catalog.variant_file(v, export_dir)) for v in variants}
    infos = {v: read_model(b, str(catalog.variant_file(v, export_dir))) for v, b in blobs.items()}
    check_full_int8(blobs["int8"], str(catalog.variant_file("int8", export_dir)))
    return blobs, infos


def arenas(params: EvaluateParams, blobs: dict[str, bytes]) -> tuple[int, int]:
    """The smallest TFLite Micro arena for int8 and (informative, -1 if it cannot run) fp32."""
    int8 = tflm.measure_arena_bytes(blobs["int8"], params.arena_max_bytes, params.arena_granularity)
    if "fp32" not in blobs:  # a model trained elsewhere
        return int8, -1
    try:
        fp32 = tflm.measure_arena_bytes(
            blobs["fp32"], params.arena_max_bytes, params.arena_granularity
        )
    except ValueError:
        fp32 = -1  # informative only: fp32 is not the MCU deployment target
    return int8, fp32


def _torch_fp32(trained_dir: Path, x: np.ndarray) -> tuple[np.ndarray, Architecture]:
    from pipeline.models.store import predict

    return predict(trained_dir / catalog.MODEL_FILE.name, x)


def _keras_fp32(trained_dir: Path, x: np.ndarray) -> tuple[np.ndarray, Architecture]:
    from pipeline.models.keras_store import predict

    return predict(trained_dir, x)


def _no_fp32(trained_dir: Path, x: np.ndarray) -> tuple[None, Architecture]:
    """A model trained elsewhere: no float network, so no first level; its architecture from
    the card."""
    from pipeline.models import tflite_store

    return None, tflite_store.load_model(trained_dir)[1]


# The framework that trained models/trained/ → its fp32 logits (the first level). Only that
# framework is imported: torch and TensorFlow never share this process.
REFERENCE = {"torch": _torch_fp32, "keras": _keras_fp32, "tflite": _no_fp32}


def own_normalization(trained_dir: Path) -> dict[str, Any] | None:
    """A model trained elsewhere may expect its own normalisation (model.input_mean/std, on its
    card); a model trained here takes prepare's (none)."""
    if catalog.trained_framework(trained_dir) != "tflite":
        return None
    from pipeline.models import tflite_store

    return dict(tflite_store.load_model(trained_dir)[2]["normalization"])


def model_inputs(x: np.ndarray, meta: DatasetMeta, norm: dict[str, Any] | None) -> np.ndarray:
    """The prepared inputs as the model expects them."""
    return x if norm is None else renormalised(x, meta.normalization, norm)


def run_levels(
    x: np.ndarray, trained_dir: Path, blobs: dict[str, bytes], arena: int, n_micro: int
) -> Outputs:
    framework = catalog.trained_framework(trained_dir)
    reference, arch = REFERENCE[framework](trained_dir, x)
    lite, inputs = {}, {}
    for variant in [v for v in ("fp32", "int8", "float16", "dynamic_int8") if v in blobs]:
        raw, inputs[variant] = litert.run_batch(blobs[variant], x)
        lite[variant] = litert.dequantized(blobs[variant], raw)
    scale, zp = inputs["int8"]["quantization"]
    micro = tflm.predict(blobs["int8"], litert.quantize_input(x[:n_micro], scale, zp), arena)
    micro = litert.dequantized(blobs["int8"], micro)
    return Outputs(framework, reference, lite, micro, inputs["int8"], arch)


@dataclass(frozen=True)
class Scored:
    """Each level's decisions on the test split: predicted labels against the task's labels,
    its decision threshold (an autoencoder's, chosen on validation) and any further scores."""

    labels: np.ndarray
    predicted: dict[str, np.ndarray]
    thresholds: dict[str, float | None]
    extra: dict[str, dict[str, float]]

    def accuracy(self, level: str) -> float:
        p = self.predicted[level]
        return round(float((p == self.labels[: len(p)]).mean()), 6)

    def agreement(self, a: str, b: str) -> float:
        n = min(len(self.predicted[a]), len(self.predicted[b]))
        return round(float((self.predicted[a][:n] == self.predicted[b][:n]).mean()), 6)


def score_levels(
    out: Outputs, x: np.ndarray, y: np.ndarray, thresholds: dict[str, float | None]
) -> Scored:
    """The task decides what a level's outputs predict (argmax; an autoencoder's error above
    its threshold) and what else is scored (an autoencoder's AUC)."""
    task = task_for(out.arch)
    predicted, extra = {}, {}
    for level, o in out.levels().items():
        xs, ys = x[: len(o)], y[: len(o)]
        predicted[level] = task.predict(o, xs, thresholds[level])
        extra[level] = task.scores(o, xs, ys)
    return Scored(task.labels(y), predicted, thresholds, extra)


def validation_thresholds(
    data: Splits, out: Outputs, trained_dir: Path, blobs: dict[str, bytes], arena: int
) -> dict[str, float | None]:
    """Per level, the task's decision threshold from that level's own validation outputs
    (a quantized autoencoder rebuilds worse, so its cut moves); none for a classifier."""
    task = task_for(out.arch)
    if not task.calibrated:
        return dict.fromkeys(out.levels())
    x, y = model_inputs(data.x["val"], data.meta, own_normalization(trained_dir)), data.y["val"]
    val = run_levels(x, trained_dir, blobs, arena, len(x))
    return {lvl: task.threshold(o, x, y) for lvl, o in val.levels().items()}


def level_metrics(
    out: Outputs, scored: Scored, blobs: dict[str, bytes], arenas: tuple[int, int]
) -> EvaluateMetrics:
    floats = out.reference_logits is not None and "fp32" in out.litert
    diff = np.abs(out.reference_logits - out.litert["fp32"]).max() if floats else None
    per_level = {
        f"{level}_{k}": v
        for level in scored.predicted
        for k, v in (("accuracy", scored.accuracy(level)), *scored.extra[level].items())
    }
    thresholds = {f"{k}_threshold": v for k, v in scored.thresholds.items() if v is not None}
    return EvaluateMetrics(
        framework=out.framework,
        **per_level,
        **thresholds,
        **{f"tflite_{v}_bytes": len(b) for v, b in blobs.items()},
        tflm_arena_bytes=arenas[0],
        tflm_litert_int8_agreement=scored.agreement("tflm_int8", "tflite_int8"),
        **(_float_figures(scored, arenas[1], diff) if floats else {}),
        test_samples=len(scored.labels),
        tflm_samples=len(out.micro),
    )


def _float_figures(scored: Scored, fp32_arena: int, diff: float) -> dict[str, Any]:
    """What only a model with a float network and variants has."""
    return {
        "tflm_fp32_arena_bytes": fp32_arena,
        "int8_fp32_agreement": scored.agreement("tflite_int8", "tflite_fp32"),
        "framework_tflite_fp32_max_logit_diff": float(f"{diff:.3e}"),
    }


def variant_table(
    out: Outputs,
    scored: Scored,
    blobs: dict[str, bytes],
    infos: dict,
    export_dir: Path,
    arena: int,
    normalization: dict[str, Any] | None = None,
) -> Variants:
    """Per variant: file, bytes, MACs, LiteRT accuracy; int8 also TFLite Micro accuracy, arena,
    ops, its input and output quantization, its task and (a model trained elsewhere) the
    normalisation it expects: what deploy and the bundles read."""
    scale, zp = out.int8_input["quantization"]
    output = infos["int8"].tensors[infos["int8"].outputs[0]]
    task = task_for(out.arch)
    extra = {
        "int8": {
            "tflm_accuracy": scored.accuracy("tflm_int8"),
            "tflm_arena_bytes": arena,
            "ops": list(infos["int8"].op_names),
            "input_scale": float(scale),
            "input_zero_point": int(zp),
            "output_scale": float(output.scales[0]),
            "output_zero_point": int(output.zero_points[0]),
            "task": task.describe(scored.thresholds["tflm_int8"]),  # what firmware runs
            **{f"tflm_{k}": v for k, v in scored.extra["tflm_int8"].items()},
            **({"normalization": normalization} if normalization else {}),
        }
    }
    return Variants(
        **{
            v: VariantInfo(
                **{
                    "file": str(catalog.variant_file(v, export_dir)),
                    "bytes": len(blobs[v]),
                    "macs": count_macs(infos[v]),
                    "litert_accuracy": scored.accuracy(f"tflite_{v}"),
                    "task": task.describe(scored.thresholds[f"tflite_{v}"]),
                }
                | extra.get(v, {})
            )
            for v in VARIANTS
            if v in blobs
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
    norm = own_normalization(trained_dir)
    x, y = model_inputs(data.x["test"], data.meta, norm), data.y["test"]
    blobs, infos = load_variants(export_dir, EXPORTED[catalog.trained_framework(trained_dir)])
    arena = arenas(params, blobs)
    n_micro = len(x) if params.tflm_samples == 0 else min(params.tflm_samples, len(x))
    out = run_levels(x, trained_dir, blobs, arena[0], n_micro)
    thresholds = validation_thresholds(data, out, trained_dir, blobs, arena[0])
    scored = score_levels(out, x, y, thresholds)
    classes = task_for(out.arch).class_names(list(data.meta.classes))
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (scored.labels[:n_micro], scored.predicted["tflm_int8"]), 1)
    metrics = level_metrics(out, scored, blobs, arena)
    extra = streaming_metrics(params, export_dir / "streaming", x[:n_micro], y[:n_micro], out.micro)
    return EvaluateResult(
        metrics=EvaluateMetrics.model_validate(metrics.model_dump() | extra),
        variants=variant_table(out, scored, blobs, infos, export_dir, arena[0], norm),
        confusion=confusion,
        classes=classes,
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
        "tflm_streaming_int8_accuracy": round(float((logits.argmax(1) == y).mean()), 6),
        "streaming_unrolled_agreement": round(
            float((logits.argmax(1) == unrolled.argmax(1)).mean()), 6
        ),
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
