"""Stage `export`: models/trained/ → four .tflite variants, by the framework that trained it
(`CONVERTERS`); every variant is checked, the int8 one for full-integer ops, before any is written.

A torch model (here):
- fp32 and int8 with litert-torch. int8 is post-training static quantization through torchao's
  pt2e flow and litert-torch's PT2EQuantizer: per-channel symmetric int8 weights, int8
  activations calibrated on training samples, int8 input and output; it is checked in the
  flatbuffer before it is written. This is the one TFLite Micro runs.
- float16 (weights stored as fp16) and dynamic_int8 (int8 weights, float activations quantized on
  the fly) from the fp32 model with ai-edge-quantizer; LiteRT runs them, TFLite Micro does not.
A Keras model: tf.lite.TFLiteConverter (pipeline/export/keras_convert.py).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import atomic, catalog, interrupt
from pipeline.core.config import VARIANTS, ExportParams
from pipeline.core.errors import ExportError, TinyopsError
from pipeline.export import streaming
from pipeline.export.divergence import summary
from pipeline.models.store import load_model
from pipeline.models.tasks import task_for
from pipeline.tflite.flatbuffer import check_full_int8, read_model


@dataclass(frozen=True)
class ExportResult:
    paths: dict[str, Path]
    sizes: dict[str, int]
    int8_ops: tuple[str, ...]
    layers: dict[str, Any]  # metrics/int8_layers.json: per-layer SNR/cosine, the worst layer


@dataclass(frozen=True)
class Tuning:
    """What decides between post-training int8 and QAT: the validation split, the allowed drop,
    and the fine-tuning settings (export.qat, export.qat_epochs, evaluate.max_int8_drop)."""

    qat: bool
    epochs: int
    lr: float
    batch_size: int
    max_drop: float
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


@dataclass(frozen=True)
class Converted:
    """A converter's output: every variant's bytes, and the int8 layers' divergence from float
    (empty where the converter cannot measure it)."""

    models: dict[str, bytes]
    layers: list[dict[str, Any]]
    step: bytes | None = None  # a recurrent family's streaming cell (int8)
    step_spec: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=lambda: {"method": "ptq"})


def _quiet_litert() -> None:
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def convert_fp32(model, sample) -> bytes:  # type: ignore[no-untyped-def]
    import litert_torch

    return bytes(litert_torch.convert(model, (sample,)).model_content())


def convert_int8(model, sample, calibration: np.ndarray) -> bytes:  # type: ignore[no-untyped-def]
    """Static int8: export, insert observers, calibrate sample by sample, convert."""
    return convert_int8_with_layers(model, sample, calibration, layers=0)[0]


def convert_int8_with_layers(  # type: ignore[no-untyped-def]
    model, sample, calibration: np.ndarray, layers: int = 32
) -> tuple[bytes, list[dict]]:
    """convert_int8, plus each quantized layer's divergence from float on the first `layers`
    calibration samples (pipeline/export/divergence.py); 0: none."""
    from pipeline.export.divergence import layer_divergence
    from pipeline.export.pt2e import quantize_static, to_tflite

    rows = [(row[None],) for row in calibration]
    converted, quantizer, reference = quantize_static(model, (sample,), rows, bool(layers))
    divergence = layer_divergence(reference, converted, calibration[:layers]) if layers else []
    return to_tflite(converted, (sample,), quantizer), divergence


def _quantize_with_aeq(fp32: bytes, recipe) -> bytes:  # type: ignore[no-untyped-def]
    from ai_edge_quantizer import quantizer

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a size summary
        return bytes(quantizer.Quantizer(fp32, recipe).quantize().quantized_model)


def convert_float16(fp32: bytes) -> bytes:
    """Weights stored as float16 (half the bytes), computed in float32 or fp16 by LiteRT."""
    from ai_edge_quantizer import recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import TFLOperationName

    manager = recipe_manager.RecipeManager()
    manager.add_weight_only_config(
        regex=".*",
        operation_name=TFLOperationName.ALL_SUPPORTED,
        num_bits=16,
        algorithm_key=AlgorithmName.FLOAT_CASTING,
    )
    return _quantize_with_aeq(fp32, manager.get_quantization_recipe())


def convert_dynamic_int8(fp32: bytes) -> bytes:
    """Dynamic-range: per-channel int8 weights, float activations quantized at run time."""
    from ai_edge_quantizer import recipe

    return _quantize_with_aeq(fp32, recipe.dynamic_wi8_afp32())


def calibration_set(x_train: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded, class-agnostic subset of the training split (the same every run)."""
    rng = np.random.default_rng(seed)
    take = min(n, len(x_train))
    return x_train[np.sort(rng.choice(len(x_train), size=take, replace=False))]


def convert_torch(
    trained_dir: Path, calibration: np.ndarray, seed: int, tuning: Tuning | None = None
) -> Converted:
    """The four variants of a torch model: litert-torch for fp32 and int8, ai-edge-quantizer
    for float16 and dynamic-range from the fp32 one."""
    import torch

    _quiet_litert()
    interrupt.import_modules(
        "litert_torch",
        "torchao.quantization.pt2e.quantize_pt2e",
        "ai_edge_quantizer.quantizer",
        "ai_edge_litert.interpreter",
    )
    torch.manual_seed(seed)
    model_path = trained_dir / catalog.MODEL_FILE.name
    model, arch, _ = load_model(model_path)
    sample = torch.zeros((1, *arch.input_shape), dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch/litert API deprecations
        fp32 = convert_fp32(model, sample)
        int8, layers = convert_int8_with_layers(model, sample, calibration)
        chosen, record = model, {"method": "ptq"}
        if tuning is not None:
            chosen, record, tuned = _ptq_or_qat(
                model, int8, calibration, tuning, seed, task_for(arch)
            )
            int8, layers = tuned or (int8, layers)
        step = _streaming(chosen, arch, calibration)
    models = {
        "fp32": fp32,
        "float16": convert_float16(fp32),
        "dynamic_int8": convert_dynamic_int8(fp32),
        "int8": int8,
    }
    return Converted(models, layers, *step, quantization=record)


def _val_quality(model, int8: bytes | None, tuning: Tuning, task: Any) -> float:  # type: ignore[no-untyped-def]
    """The task's validation figure (accuracy; an autoencoder's AUC) of the float model (int8
    None) or of an int8 flatbuffer in LiteRT."""
    import torch

    from pipeline.tflite import litert

    if int8 is None:
        with torch.no_grad():
            out = model(torch.from_numpy(tuning.x_val)).numpy()
    else:
        out = litert.dequantized(int8, litert.run_batch(int8, tuning.x_val)[0])
    return task.quality(out, tuning.x_val, tuning.y_val)


def _ptq_or_qat(model, ptq: bytes, calibration: np.ndarray, tuning: Tuning, seed: int, task: Any):  # type: ignore[no-untyped-def]
    """The network whose int8 conversion ships, why, and (when it is the QAT-tuned one) its int8
    bytes and layer report: the trained one unless PTQ loses more than max_drop on validation,
    export.qat is on, and the QAT-tuned one does better there."""
    import torch

    from pipeline.export import qat

    fp32, ptq_acc = _val_quality(model, None, tuning, task), _val_quality(model, ptq, tuning, task)
    m = task.metric
    record: dict[str, Any] = {"method": "ptq", f"fp32_val_{m}": fp32, f"ptq_val_{m}": ptq_acc,
                              "ptq_drop": round(fp32 - ptq_acc, 6),
                              "max_int8_drop": tuning.max_drop}  # fmt: skip
    if fp32 - ptq_acc <= tuning.max_drop:
        return model, record | {"why": "post-training int8 is within evaluate.max_int8_drop"}, None
    if not tuning.qat:
        why = "post-training int8 loses more than evaluate.max_int8_drop; export.qat is off"
        print(f"export: {why} ({m} {fp32:.4f} → {ptq_acc:.4f} on validation)")
        return model, record | {"why": why}, None
    print(
        f"export: int8 loses {fp32 - ptq_acc:.4f} {m} on validation; QAT for {tuning.epochs} epochs"
    )
    rows = task.training_rows(tuning.y_train)
    try:
        tuned = qat.fine_tune(model, tuning.x_train[rows], tuning.y_train[rows], tuning.epochs,
                              tuning.lr, tuning.batch_size, seed, task.loss)  # fmt: skip
    except qat.QatDiverged as exc:
        return model, record | {"why": f"{exc}; post-training int8 kept"}, None
    sample = torch.zeros((1, *calibration.shape[1:]))
    conversion = convert_int8_with_layers(tuned, sample, calibration)
    qat_acc = _val_quality(tuned, conversion[0], tuning, task)
    record |= {"qat_epochs": tuning.epochs, f"qat_val_{m}": qat_acc}
    if qat_acc > ptq_acc:
        return tuned, record | {"method": "qat", "why": "QAT beat post-training int8"}, conversion
    return model, record | {"why": "QAT did not beat post-training int8 on validation"}, None


def _streaming(model, arch, calibration: np.ndarray) -> tuple[bytes | None, dict[str, Any]]:  # type: ignore[no-untyped-def]
    """A recurrent family's streaming step model (pipeline/export/streaming.py), else none."""
    if arch.arch not in streaming.RECURRENT:
        return None, {"arch": arch.arch, "note": "not a recurrent family: no streaming model"}
    return streaming.convert_step(model, arch, calibration)


def convert_keras(
    trained_dir: Path, calibration: np.ndarray, seed: int, tuning: Tuning | None = None
) -> Converted:
    from pipeline.export import keras_convert

    return Converted(keras_convert.convert_all(trained_dir, calibration), [])


def convert_tflite(
    trained_dir: Path, calibration: np.ndarray, seed: int, tuning: Tuning | None = None
) -> Converted:
    """model.arch tflite: the adopted file is the int8 variant as it was given; there is no
    float model to make the others from."""
    from pipeline.models import tflite_store

    model, _, _ = tflite_store.load_model(trained_dir)
    why = "trained elsewhere (model.arch tflite): shipped as given"
    return Converted({"int8": model}, [], quantization={"method": "external", "why": why})


# The framework that trained models/trained/ → its converter (the variants it can make).
CONVERTERS = {"torch": convert_torch, "keras": convert_keras, "tflite": convert_tflite}
CONVERTER_NAMES = {
    "torch": "litert-torch",
    "keras": "tf.lite.TFLiteConverter",
    "tflite": "the adopted .tflite",
}


def export(
    params: ExportParams,
    x_train: np.ndarray,
    seed: int,
    trained_dir: Path = catalog.TRAINED_DIR,
    out_dir: Path = catalog.EXPORT_DIR,
    layers_file: Path = catalog.INT8_LAYERS,
    tuning: Tuning | None = None,
) -> ExportResult:
    """Convert every variant, check each (int8: full-integer), then write them atomically."""
    framework = catalog.trained_framework(trained_dir)
    calibration = calibration_set(x_train, params.calibration_samples, seed)
    try:
        converted = CONVERTERS[framework](trained_dir, calibration, seed, tuning)
    except TinyopsError:  # e.g. an unreadable model: its own message and exit code
        raise
    except Exception as exc:
        raise ExportError(
            f"{CONVERTER_NAMES[framework]} conversion of {trained_dir} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    models = converted.models
    for variant, data in models.items():
        read_model(data, f"{variant} export")
    info = check_full_int8(models["int8"], f"int8 export of {trained_dir}")
    paths = {v: catalog.variant_file(v, out_dir) for v in models}
    layers = summary(converted.layers, framework) | {"quantization": converted.quantization}
    with interrupt.deferred():  # all checked before the first is written; all or none replaced
        for variant, data in models.items():
            atomic.write_bytes(paths[variant], data)
        for variant in set(VARIANTS) - set(models):  # not made for this model: none stays stale
            catalog.variant_file(variant, out_dir).unlink(missing_ok=True)
        atomic.write_json(layers_file, layers)
        streaming.write(
            out_dir / "streaming", converted.step, converted.step_spec or {"note": "none"}
        )
    return ExportResult(paths, {v: len(d) for v, d in models.items()}, info.op_names, layers)
