"""The int8 check reads the flatbuffer; TFLite Micro really runs the exported model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.core.errors import ExportError, QuantizationCheckError
from pipeline.data.prepare import load_processed
from pipeline.models.store import load_model
from pipeline.tflite import tflm
from pipeline.tflite.flatbuffer import check_full_int8, read_model
from pipeline.tflite.litert import quantize_input

pytestmark = pytest.mark.slow


def test_exported_int8_model_is_full_integer(first_run: Path) -> None:
    info = check_full_int8(first_run / "exports/model_int8.tflite")
    assert "DEQUANTIZE" not in info.op_names and "QUANTIZE" not in info.op_names
    assert {"CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D"} <= set(info.op_names)
    for i in (*info.inputs, *info.outputs):
        assert info.tensors[i].dtype == "INT8" and len(info.tensors[i].scales) == 1
    conv = next(op for op in info.ops if op.name == "CONV_2D")
    weight = info.tensors[conv.inputs[1]]
    assert weight.dtype == "INT8" and len(weight.scales) == weight.shape[0] > 1, (
        "per-channel weights"
    )


def test_fp32_model_is_rejected(first_run: Path) -> None:
    with pytest.raises(QuantizationCheckError, match=r"model input .* is FLOAT32, not INT8"):
        check_full_int8(first_run / "exports/model_fp32.tflite")


def test_dynamic_range_model_is_rejected(first_run: Path, tmp_path: Path) -> None:
    """int8 weights with float activations must not pass as int8."""
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model, arch, _ = load_model(first_run / "models/trained/model.pt")
    sample = torch.zeros((1, *arch.input_shape))
    quantizer = PT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    )
    prepared = prepare_pt2e(torch.export.export(model, (sample,)).module(), quantizer)
    prepared(sample)
    converted = convert_pt2e(prepared, fold_quantize=False)
    data = litert_torch.convert(
        converted, (sample,), quant_config=QuantConfig(pt2e_quantizer=quantizer)
    )
    path = tmp_path / "dynamic.tflite"
    path.write_bytes(data.model_content())
    info = read_model(path)
    assert any(t.dtype == "INT8" and t.is_constant for t in info.tensors), "weights really are int8"
    with pytest.raises(QuantizationCheckError, match="dynamic-range quantization"):
        check_full_int8(path)


@pytest.mark.parametrize(
    "payload", [b"", b"not a model at all", b"\x18\x00\x00\x00TFL3" + b"\xff" * 40]
)
def test_non_flatbuffers_are_refused(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "bad.tflite"
    path.write_bytes(payload)
    with pytest.raises(ExportError, match=r"bad\.tflite"):
        read_model(path)


def test_tflite_micro_runs_the_exported_model(first_run: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    model = (first_run / "exports/model_int8.tflite").read_bytes()
    data = load_processed(first_run / "data/processed")
    x, y = data.x["test"][:60], data.y["test"][:60]
    lite = Interpreter(model_content=model)
    lite.allocate_tensors()
    inp, out = lite.get_input_details()[0], lite.get_output_details()[0]
    xq = quantize_input(x, *inp["quantization"])
    expected = []
    for row in xq:
        lite.set_tensor(inp["index"], row[None])
        lite.invoke()
        expected.append(lite.get_tensor(out["index"])[0].copy())
    micro = tflm.predict(model, xq, arena_size=64 * 1024)
    assert micro.dtype == np.int8 and micro.shape == (60, 10)
    assert np.abs(micro.astype(int) - np.stack(expected).astype(int)).max() <= 1
    assert (micro.argmax(1) == y).mean() >= 0.95


def test_arena_measurement_is_minimal(first_run: Path) -> None:
    model = (first_run / "exports/model_int8.tflite").read_bytes()
    arena = tflm.measure_arena_bytes(model, max_bytes=1 << 20, granularity=16)
    assert arena % 16 == 0
    assert tflm.runs_with_arena(model, arena)
    assert not tflm.runs_with_arena(model, arena - 16)
    with pytest.raises(ValueError, match="does not run"):
        tflm.measure_arena_bytes(model, max_bytes=256)


def _info(op: str, dtypes: list[str]) -> object:
    from pipeline.tflite.flatbuffer import ModelInfo, OpInfo, TensorInfo

    def tensor(i: int, dtype: str) -> TensorInfo:
        scales = (0.1,) if dtype == "INT8" else ()
        return TensorInfo(f"t{i}", dtype, (1, 4), scales, (0,) * len(scales), i > 0)

    tensors = [tensor(i, d) for i, d in enumerate([*dtypes, "INT8"])]
    out = len(dtypes)
    ops = (OpInfo(op, tuple(range(len(dtypes))), (out,)),)
    return ModelInfo(ops=ops, tensors=tuple(tensors), inputs=(0,), outputs=(out,))


@pytest.mark.parametrize(
    ("op", "dtypes"),
    [
        ("SLICE", ["INT8", "INT32", "INT32"]),
        ("STRIDED_SLICE", ["INT8", "INT32", "INT32", "INT32"]),
        ("GATHER", ["INT8", "INT32"]),
        ("RESHAPE", ["INT8", "INT32"]),
    ],
)
def test_int32_shape_and_index_inputs_are_not_violations(op: str, dtypes: list[str]) -> None:
    """SLICE's begin/size and kin are int32 by definition (a false positive before)."""
    from pipeline.tflite.flatbuffer import int8_violations

    assert int8_violations(_info(op, dtypes)) == []  # type: ignore[arg-type]


def test_an_int32_activation_is_still_a_violation() -> None:
    from pipeline.tflite.flatbuffer import int8_violations

    problems = int8_violations(_info("ADD", ["INT8", "INT32"]))  # type: ignore[arg-type]
    assert problems == ["op 0 ADD: weight 't1' is INT32, expected INT8"]
