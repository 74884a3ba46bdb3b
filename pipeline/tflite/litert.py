"""LiteRT (ai_edge_litert) on the host: batched outputs for accuracy, invoke time for latency."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.tflite.timing import median_invoke_ms


def quantize_input(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """float → int8 with the model's input parameters (what firmware does before invoke)."""
    return np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)


def _invoke(interp: Any, x: np.ndarray) -> np.ndarray:
    inp = interp.get_input_details()[0]
    if inp["dtype"] == np.int8:
        scale, zp = inp["quantization"]
        x = quantize_input(x, scale, zp)
    interp.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"]).copy()


def _one_by_one(model: bytes, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model, num_threads=1)
    interp.allocate_tensors()
    rows = [_invoke(interp, x[i : i + 1]) for i in range(len(x))]
    return np.concatenate(rows), interp.get_input_details()[0]


def run_batch(model: bytes, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Every sample through LiteRT; raw outputs and the input's details.

    One batched invoke where the graph really is batch-agnostic. A sequence model's slices and
    constant states are fixed to batch 1: resizing then fails, or worse, runs and computes the
    wrong thing. So the batched result must match the first samples run one by one, else every
    sample runs one by one."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model, num_threads=1)
    inp = interp.get_input_details()[0]
    try:
        interp.resize_tensor_input(inp["index"], [len(x), *inp["shape"][1:]])
        interp.allocate_tensors()
        batched = _invoke(interp, x)
    except (RuntimeError, ValueError):
        return _one_by_one(model, x)
    probe, _ = _one_by_one(model, x[:2])
    same = batched.shape[0] == len(x) and np.allclose(
        batched[:2].astype(np.float64), probe.astype(np.float64), rtol=1e-4, atol=1e-4
    )
    return (batched, interp.get_input_details()[0]) if same else _one_by_one(model, x)


def measure_host_latency_ms(model: bytes, runs: int) -> float:
    """Median LiteRT invoke time on this host, 1 thread, batch 1 (a host figure, not the device's)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model, num_threads=1)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], np.zeros(inp["shape"], dtype=inp["dtype"]))
    return median_invoke_ms(interp.invoke, runs, warmup=5)


def dequantized(model: bytes, out: np.ndarray) -> np.ndarray:
    """A model's raw outputs as real values: int8 through the output tensor's scale and zero
    point (argmax is unchanged; a reconstruction error is not), float as it is."""
    from pipeline.tflite.flatbuffer import read_model

    if out.dtype != np.int8:
        return out.astype(np.float32)
    info = read_model(model, "model")
    tensor = info.tensors[info.outputs[0]]
    return ((out.astype(np.float32) - tensor.zero_points[0]) * tensor.scales[0]).astype(np.float32)
