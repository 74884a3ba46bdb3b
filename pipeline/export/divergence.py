"""Where int8 loses accuracy: each quantized layer's output tensor compared with the float one.

Both graphs come from the same calibrated pt2e graph, so their nodes share names: the float
reference is that graph before conversion (its observers only watch), the int8 one is after
conversion, each output read after its quantize → dequantize pair, i.e. as the int8 model holds
it. Per tensor: SNR in dB (10·log10 of signal power over error power) and cosine similarity,
over a calibration batch run sample by sample (sequence graphs fix batch 1). Errors compound:
a layer's figure includes everything quantized before it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Ops that only move or name data: their tensors repeat their input's, so they are left out.
MOVES = {
    "alias", "reshape", "view", "select", "slice", "getitem", "transpose", "permute", "unsqueeze",
    "squeeze", "flatten", "contiguous", "clone", "zeros", "split", "expand", "t", "pad",
}  # fmt: skip
QUANTIZE = "quantize_per_tensor"
DEQUANTIZE = "dequantize_per_tensor"


def _capture(graph: Any, rows: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Every call_function node's output for each row (float tensors only)."""
    import torch
    from torch.fx import Interpreter

    seen: dict[str, list[np.ndarray]] = {}

    class Recorder(Interpreter):
        def run_node(self, n: Any) -> Any:
            out = super().run_node(n)
            if (
                n.op == "call_function"
                and isinstance(out, torch.Tensor)
                and out.is_floating_point()
            ):
                seen.setdefault(n.name, []).append(out.detach().numpy().copy())
            return out

    with torch.no_grad():
        for row in rows:
            Recorder(graph).run(torch.from_numpy(row[None]))
    return seen


def _quantized_outputs(graph: Any) -> dict[str, tuple[str, str]]:
    """Compute node → (the dequantize node holding its int8 output, its op name)."""
    out = {}
    for node in graph.graph.nodes:
        if (
            node.op != "call_function"
            or QUANTIZE in str(node.target)
            or DEQUANTIZE in str(node.target)
        ):
            continue
        for q in node.users:
            if QUANTIZE in str(q.target):
                dq = next((u for u in q.users if DEQUANTIZE in str(u.target)), None)
                if dq is not None:
                    op = str(getattr(node.target, "__name__", node.target)).split(".")[0]
                    if op not in MOVES:
                        out[node.name] = (dq.name, op)
                break
    return out


def snr_db(reference: np.ndarray, error: np.ndarray) -> float:
    signal, noise = float((reference**2).sum()), float((error**2).sum())
    if noise == 0.0:
        return 120.0  # exact: shown as 120 dB rather than infinity
    return round(10 * math.log10(max(signal, 1e-30) / noise), 3)


def layer_divergence(float_graph: Any, int8_graph: Any, batch: np.ndarray) -> list[dict[str, Any]]:
    """One row per quantized output tensor, in graph order: name, op, SNR (dB), cosine."""
    ref, got = _capture(float_graph, batch), _capture(int8_graph, batch)
    rows = []
    for i, (name, (dq, op)) in enumerate(_quantized_outputs(int8_graph).items()):
        if name not in ref or dq not in got:
            continue
        a = np.concatenate([r.ravel() for r in ref[name]]).astype(np.float64)
        b = np.concatenate([r.ravel() for r in got[dq]]).astype(np.float64)
        if a.shape != b.shape:
            continue
        norm = float(np.linalg.norm(a) * np.linalg.norm(b))
        cosine = float(a @ b) / norm if norm else 1.0
        rows.append({"index": i, "name": name, "op": op, "snr_db": snr_db(a, a - b),
                     "cosine": round(cosine, 6)})  # fmt: skip
    return rows


def summary(rows: list[dict[str, Any]], framework: str) -> dict[str, Any]:
    """The layers and the worst one (lowest SNR), as metrics/int8_layers.json holds them."""
    worst = min(rows, key=lambda r: r["snr_db"]) if rows else None
    note = (
        "each quantized layer's output against float, on the first 32 calibration samples"
        if rows
        else f"not measured for {framework} models (the pt2e graphs are torch's)"
    )
    return {"framework": framework, "layers": rows, "worst": worst, "note": note}
