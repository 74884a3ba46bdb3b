"""Read a .tflite flatbuffer directly: its ops, tensor types and quantization, and whether it is
really full-integer int8 (a dynamic-range model, with int8 weights but float activations, is not).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pipeline.core.errors import ExportError, QuantizationCheckError

# Ops whose extra input is an int32 bias; every other input of a compute op must be int8.
_BIAS_INPUT = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3}
# Ops' inputs that carry shapes, axes, indices or bounds, not activations: int32 is right there.
_SHAPE_INPUTS = {
    "RESHAPE": {1},
    "TRANSPOSE": {1},
    "PAD": {1},
    "PADV2": {1},
    "MEAN": {1},
    "SUM": {1},
    "REDUCE_MAX": {1},
    "REDUCE_MIN": {1},
    "SLICE": {1, 2},  # begin, size
    "STRIDED_SLICE": {1, 2, 3},  # begin, end, strides
    "GATHER": {1},  # indices
    "SPLIT": {0},  # axis
    "SPLIT_V": {1, 2},  # size_splits, axis
    "EXPAND_DIMS": {1},
    "TILE": {1},
    "BROADCAST_TO": {1},
    "RESIZE_BILINEAR": {1},
    "RESIZE_NEAREST_NEIGHBOR": {1},
}


@cache
def _schema():  # type: ignore[no-untyped-def]
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


@cache
def _enum_names(enum_name: str) -> dict[int, str]:
    enum = getattr(_schema(), enum_name)
    return {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    is_constant: bool


@dataclass(frozen=True)
class OpInfo:
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    ops: tuple[OpInfo, ...]
    tensors: tuple[TensorInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    @property
    def op_names(self) -> tuple[str, ...]:
        """Distinct op names in first-use order (what a MicroMutableOpResolver must register)."""
        return tuple(dict.fromkeys(op.name for op in self.ops))


def _ints(values: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in (values if values is not None else []))


def _tensor(t: Any, buffers: list[Any]) -> TensorInfo:
    q = t.quantization
    buffer = buffers[t.buffer] if t.buffer < len(buffers) else None
    has_data = buffer is not None and (
        (buffer.data is not None and len(buffer.data) > 0) or (buffer.size or 0) > 0
    )
    return TensorInfo(
        name=t.name.decode() if isinstance(t.name, bytes) else str(t.name),
        dtype=_enum_names("TensorType").get(t.type, str(t.type)),
        shape=_ints(t.shape),
        scales=tuple(float(v) for v in (q.scale if q is not None and q.scale is not None else [])),
        zero_points=_ints(q.zeroPoint if q is not None else None),
        is_constant=has_data,
    )


def _operator(op: Any, codes: list[Any], op_names: dict[int, str]) -> OpInfo:
    code = codes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    name = op_names.get(builtin, f"OP_{builtin}")
    if name == "CUSTOM" and code.customCode:
        name = f"CUSTOM:{code.customCode.decode()}"
    return OpInfo(name=name, inputs=_ints(op.inputs), outputs=_ints(op.outputs))


def read_model(data: bytes | Path, source: str = "model") -> ModelInfo:
    """Parse the first subgraph; a file that is not a TFLite flatbuffer raises ExportError."""
    if isinstance(data, Path):
        source = str(data)
        data = data.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ExportError(f"{source}: not a TFLite flatbuffer (missing the 'TFL3' identifier).")
    s = _schema()
    try:
        model = s.ModelT.InitFromPackedBuf(data, 0)
    except Exception as exc:  # the generated parser raises anything on a corrupt buffer
        raise ExportError(
            f"{source}: corrupt TFLite flatbuffer ({type(exc).__name__}: {exc})."
        ) from None
    if not model.subgraphs:
        raise ExportError(f"{source}: the flatbuffer holds no subgraph.")
    graph = model.subgraphs[0]
    tensors = [_tensor(t, model.buffers) for t in graph.tensors]
    op_names = _enum_names("BuiltinOperator")
    ops = [_operator(op, model.operatorCodes, op_names) for op in graph.operators]
    return ModelInfo(
        ops=tuple(ops),
        tensors=tuple(tensors),
        inputs=tuple(int(i) for i in graph.inputs),
        outputs=tuple(int(i) for i in graph.outputs),
    )


def int8_violations(info: ModelInfo) -> list[str]:
    """Every reason the model is not full-integer int8; empty when it is."""
    problems: list[str] = []
    for role, ids in (("input", info.inputs), ("output", info.outputs)):
        for i in ids:
            t = info.tensors[i]
            if t.dtype != "INT8":
                problems.append(f"model {role} '{t.name}' is {t.dtype}, not INT8")
            elif not t.scales:
                problems.append(f"model {role} '{t.name}' has no quantization parameters")
    float_acts = weight_int8 = False
    for n, op in enumerate(info.ops):
        if op.name == "DEQUANTIZE":
            problems.append(
                f"op {n} DEQUANTIZE turns int8 back into float (a float island follows)"
            )
            continue
        bias = _BIAS_INPUT.get(op.name)
        skip = _SHAPE_INPUTS.get(op.name, set())
        for pos, i in enumerate(op.inputs):
            if i < 0 or pos in skip:
                continue
            t = info.tensors[i]
            wanted = "INT32" if pos == bias else "INT8"
            if t.dtype != wanted:
                kind = "weight" if t.is_constant else "activation"
                problems.append(
                    f"op {n} {op.name}: {kind} '{t.name}' is {t.dtype}, expected {wanted}"
                )
                float_acts |= kind == "activation" and t.dtype.startswith("FLOAT")
            elif t.dtype == "INT8" and not t.scales:
                problems.append(
                    f"op {n} {op.name}: '{t.name}' is INT8 without quantization parameters"
                )
            weight_int8 |= t.is_constant and t.dtype == "INT8"
        for i in op.outputs:
            t = info.tensors[i]
            if t.dtype != "INT8":
                problems.append(f"op {n} {op.name}: output '{t.name}' is {t.dtype}, expected INT8")
    if float_acts and weight_int8:
        problems.insert(0, "dynamic-range quantization: int8 weights but float activations")
    return problems


def check_full_int8(data: bytes | Path, source: str = "model") -> ModelInfo:
    """Raise QuantizationCheckError unless every compute op, input and output is integer."""
    if isinstance(data, Path):
        source = str(data)
    info = read_model(data, source)
    problems = int8_violations(info)
    if problems:
        shown = "\n  ".join(problems[:12])
        more = f"\n  … and {len(problems) - 12} more" if len(problems) > 12 else ""
        raise QuantizationCheckError(
            f"{source}: not a full-integer int8 model ({len(problems)} problem(s)):\n  {shown}{more}\n"
            "TFLite Micro targets need int8 everywhere; re-export with static (calibrated) int8."
        )
    return info


def count_macs(info: ModelInfo) -> int:
    """Multiply-accumulates of one inference (conv, depthwise conv, fully connected)."""
    total = 0
    for op in info.ops:
        if op.name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        out = info.tensors[op.outputs[0]].shape
        weight = info.tensors[op.inputs[1]].shape
        if op.name == "CONV_2D":  # out [N,H,W,Cout], filter [Cout,kh,kw,Cin]
            total += out[0] * out[1] * out[2] * out[3] * weight[1] * weight[2] * weight[3]
        elif op.name == "DEPTHWISE_CONV_2D":  # filter [1,kh,kw,Cout]
            total += out[0] * out[1] * out[2] * out[3] * weight[1] * weight[2]
        else:  # out [N,units], weights [units,in]
            rows = 1
            for d in out[:-1]:
                rows *= d
            total += rows * weight[0] * weight[1]
    return total
