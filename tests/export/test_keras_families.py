"""The bundled convolutional families in Keras too (the default image network and the sequence
ones): the same parameter count as torch's network of the same params, fully int8 through
TFLiteConverter, and running in TensorFlow Lite Micro close to Keras's own outputs. TensorFlow
runs in a child process (tests/export/keras_family_job.py); this one reads what it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.models.architecture import Architecture, build_model, count_parameters
from pipeline.tflite import tflm
from pipeline.tflite.flatbuffer import check_full_int8

pytestmark = pytest.mark.slow  # trains or exports models: the fast tier stays under 3 minutes

FAMILIES = ("cnn2d", "cnn1d", "dscnn1d", "tcn")
EXPECTED_OPS = {
    "cnn2d": {"CONV_2D", "MAX_POOL_2D", "FULLY_CONNECTED"},
    "cnn1d": {"CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D"},
    "dscnn1d": {"CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D"},
    "tcn": {"CONV_2D", "ADD", "AVERAGE_POOL_2D"},
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keras-families")
    job = Path(__file__).with_name("keras_family_job.py")
    proc = subprocess.run(
        [sys.executable, str(job), str(out), *FAMILIES], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_keras_family_is_torchs_network_fully_int8_in_tflm(converted: Path, family: str) -> None:
    info = json.loads((converted / family / "info.json").read_text())
    torch_model = build_model(Architecture.from_dict(info["arch"]))
    assert info["parameters"] == count_parameters(torch_model), "layer for layer as in torch"
    data = (converted / family / "int8.tflite").read_bytes()
    model = check_full_int8(data, f"keras {family} int8")
    assert EXPECTED_OPS[family] <= set(model.op_names), model.op_names
    assert "SHAPE" not in model.op_names, "a static graph: no shape computed at run time"
    x = np.load(converted / f"x_{family}.npy")[32:]
    inp, out = model.tensors[model.inputs[0]], model.tensors[model.outputs[0]]
    q = np.clip(np.round(x / inp.scales[0]) + inp.zero_points[0], -128, 127).astype(np.int8)
    arena = tflm.measure_arena_bytes(data, 1 << 20)
    got = (tflm.predict(data, q, arena).astype(np.float32) - out.zero_points[0]) * out.scales[0]
    want = np.load(converted / family / "keras.npy")
    cosine = (got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want)
    assert cosine > 0.95, f"keras {family}: int8 in TFLite Micro drifted (cosine {cosine:.3f})"
