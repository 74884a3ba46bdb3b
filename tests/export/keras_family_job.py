"""Run by tests/export/test_keras_families.py in its own process (TensorFlow never shares one
with torch): for each family named, build the Keras network, store it as training would,
convert every variant with TFLiteConverter, and leave the int8 flatbuffer, the Keras outputs
and the parameter count in the output folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(out: Path, families: list[str]) -> None:
    import keras

    from pipeline.export.keras_convert import convert_all
    from pipeline.models.architecture import Architecture, build_keras_model
    from pipeline.models.keras_store import save_model
    from pipeline.training.keras_worker import trainable_parameters

    for family in families:
        shape = (8, 8, 1) if family == "cnn2d" else (32, 3)  # an image, or a series
        x = np.random.default_rng(0).normal(size=(48, *shape)).astype(np.float32)
        np.save(out / f"x_{family}.npy", x)
        keras.utils.set_random_seed(0)
        arch = Architecture(shape, 4, (16, 24), kernel_size=3, arch=family, stride=2)
        model = build_keras_model(arch)
        weights = {v.path: np.asarray(v.value) for v in model.weights}
        channels = shape[-1]
        normalization = {"mean": [0.0] * channels, "std": [1.0] * channels}
        meta = {"classes": list("abcd"), "normalization": normalization}
        save_model(out / family / "trained", arch, weights, meta, 1)
        models = convert_all(out / family / "trained", x[:32])
        (out / family / "int8.tflite").write_bytes(models["int8"])
        np.save(out / family / "keras.npy", np.asarray(model(x[32:], training=False)))
        (out / family / "info.json").write_text(
            json.dumps({"parameters": trainable_parameters(model), "arch": arch.to_dict()})
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
