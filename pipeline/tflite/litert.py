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


def run_batch(model: bytes, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Every sample through LiteRT, in one batched invoke where the graph allows a batch (a
    sequence model's reshapes fix batch 1: then sample by sample); raw outputs and the input's
    details."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model, num_threads=1)
    inp = interp.get_input_details()[0]
    try:
        interp.resize_tensor_input(inp["index"], [len(x), *inp["shape"][1:]])
        interp.allocate_tensors()
    except (RuntimeError, ValueError):
        interp = Interpreter(model_content=model, num_threads=1)
        interp.allocate_tensors()
        rows = [_invoke(interp, x[i : i + 1]) for i in range(len(x))]
        return np.concatenate(rows), interp.get_input_details()[0]
    return _invoke(interp, x), interp.get_input_details()[0]


def measure_host_latency_ms(model: bytes, runs: int) -> float:
    """Median LiteRT invoke time on this host, 1 thread, batch 1 (a host figure, not the device's)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model, num_threads=1)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], np.zeros(inp["shape"], dtype=inp["dtype"]))
    return median_invoke_ms(interp.invoke, runs, warmup=5)
