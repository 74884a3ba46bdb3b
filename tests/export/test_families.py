"""Every sequence family converts fully to int8 with tinyops's quantizer and runs in TFLite Micro,
its int8 outputs close to the float model's (small shapes, so each converts in seconds)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.models.architecture import Architecture, build_model
from pipeline.tflite import tflm
from pipeline.tflite.flatbuffer import check_full_int8

SHAPE = (16, 3)  # T, C
EXPECTED_OPS = {
    "cnn1d": {"CONV_2D", "MAX_POOL_2D", "MEAN"},
    "dscnn1d": {"DEPTHWISE_CONV_2D", "CONV_2D", "MEAN"},
    "tcn": {"CONV_2D", "PAD", "ADD"},
    "gru": {"SLICE", "LOGISTIC", "TANH", "SUB", "MUL"},
    "lstm": {"SLICE", "LOGISTIC", "TANH", "MUL", "ADD"},
    "transformer": {"BATCH_MATMUL", "SOFTMAX", "RSQRT", "MEAN"},
}


@pytest.mark.parametrize("family", sorted(EXPECTED_OPS))
def test_family_is_fully_int8_and_runs_in_tflm(family: str) -> None:
    import torch

    from pipeline.export.convert import convert_int8

    torch.manual_seed(0)
    arch = Architecture(SHAPE, 4, (16, 16), kernel_size=3, arch=family, hidden_size=16, stride=2)
    model = build_model(arch).eval()
    x = np.random.default_rng(0).normal(size=(48, *SHAPE)).astype(np.float32)
    data = convert_int8(model, torch.zeros((1, *SHAPE)), x[:32])
    info = check_full_int8(data, f"{family} int8")  # SLICE's int32 begin/size are not violations
    assert EXPECTED_OPS[family] <= set(info.op_names), info.op_names
    arena = tflm.measure_arena_bytes(data, 1 << 20)
    inp, out = info.tensors[info.inputs[0]], info.tensors[info.outputs[0]]
    q = np.clip(np.round(x[32:] / inp.scales[0]) + inp.zero_points[0], -128, 127).astype(np.int8)
    got = (tflm.predict(data, q, arena).astype(np.float32) - out.zero_points[0]) * out.scales[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x[32:])).numpy()
    cosine = (got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want)
    assert cosine > 0.95, f"{family}: int8 in TFLite Micro drifted from fp32 (cosine {cosine:.3f})"
