"""The heavier configuration's export, for `tinyops bench`: a ResNet-8-sized CNN on 32×32×3 goes
through the export stage's own function (fp32 and full-int8 .tflite, checked in the flatbuffer),
then TFLite Micro measures both arenas and the int8 invoke time on the host.

Weights are seeded random and calibration data synthetic: sizes, arenas and latency depend on
the shapes, not on what the network learned. Runs in its own process (litert-torch, TFLite
Micro) and prints one JSON line.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from pipeline.bench.throughput import MODELS
from pipeline.core.config import ExportParams
from pipeline.export.convert import export
from pipeline.models.architecture import build_model
from pipeline.tflite.tflm import measure_arena_bytes, measure_invoke_ms


def main() -> None:
    import torch

    from pipeline.models.store import MODEL_FORMAT, save_torch

    arch = MODELS["resnet8"]
    torch.manual_seed(0)
    model = build_model(arch)
    calibration = np.random.default_rng(0).normal(size=(256, *arch.input_shape)).astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "model.pt")
        save_torch(
            {
                "format": MODEL_FORMAT,
                "architecture": arch.to_dict(),
                "state_dict": model.state_dict(),
            },
            path,
        )
        scratch = Path(tmp)
        result = export(
            ExportParams(calibration_samples=64), calibration, 0, scratch, scratch,
            layers_file=scratch / "int8_layers.json",
        )  # fmt: skip
        fp32 = result.paths["fp32"].read_bytes()
        int8 = result.paths["int8"].read_bytes()
    arena = {
        "int8": measure_arena_bytes(int8, 1 << 18, 16),
        "fp32": measure_arena_bytes(fp32, 1 << 20, 64),
    }
    print(
        json.dumps(
            {
                "bytes": result.sizes,
                "arena_bytes": arena,
                "tflm_int8_invoke_ms": measure_invoke_ms(int8, arena["int8"], 20),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
