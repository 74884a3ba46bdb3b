"""Export of a Keras-trained model with tf.lite.TFLiteConverter: the canonical TinyML path.

Measured with TensorFlow 2.21 and Keras 3.15: `from_keras_model` keeps a dynamic batch (INT32
SHAPE ops stay, and the int8 check rightly rejects the result), and `from_concrete_functions`
gives models LiteRT cannot run (READ_VARIABLE failed to invoke). What works: `model.export` as a
SavedModel with a fixed [1, H, W, C] input signature, then `from_saved_model`. Variants:
- fp32: the converter's defaults;
- float16: weights stored as float16 (Optimize.DEFAULT, supported_types float16);
- dynamic_int8: int8 weights, float activations quantized at run time (Optimize.DEFAULT);
- int8: full-integer, activations calibrated on training samples (representative dataset),
  TFLITE_BUILTINS_INT8 only, int8 input and output: the one TFLite Micro runs.
TensorFlow is imported here only, in the export stage's own process (no torch in it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _converter(saved_model: Path, variant: str, calibration: np.ndarray) -> Any:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if variant == "fp32":
        return converter
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        converter.representative_dataset = lambda: ([row[None]] for row in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter


def convert_all(trained_dir: Path, calibration: np.ndarray) -> dict[str, bytes]:
    """Every variant's flatbuffer, from a SavedModel with a batch-1 signature."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pipeline.models.keras_store import load_model

    model, arch, _ = load_model(trained_dir)  # a bad folder fails before TensorFlow loads
    return convert_model(model, arch.input_shape, calibration)


def convert_model(
    model: Any,
    input_shape: tuple[int, ...],
    calibration: np.ndarray,
    variants: tuple[str, ...] = ("fp32", "float16", "dynamic_int8", "int8"),
) -> dict[str, bytes]:
    """The variants of a Keras model (trained, or untrained for preflight)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    signature = [tf.TensorSpec([1, *input_shape], tf.float32, name="input")]
    with tempfile.TemporaryDirectory(prefix="tinyops-savedmodel-") as tmp:
        saved = Path(tmp) / "saved_model"
        model.export(str(saved), format="tf_saved_model", input_signature=signature, verbose=False)
        return {v: bytes(_converter(saved, v, calibration).convert()) for v in variants}
