"""The streaming export of a recurrent family: exports/streaming/model_int8_step.tflite, the
cell alone (one frame and the state in; the logits and the new state out), fully int8, which
firmware calls once per frame. Its description, streaming.json, says how to feed it; for other
families it says there is none.

Calibration runs the float model frame by frame over the calibration windows, so the state
inputs are observed over the values they take in real use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import atomic
from pipeline.tflite.flatbuffer import check_full_int8

RECURRENT = ("gru", "lstm")
STEP_FILE = "model_int8_step.tflite"
DESCRIPTION = "streaming.json"
MAX_CALIBRATION_STEPS = 1024


def frames_of(x: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """(N, T, C) windows → (N, frames, stride × C), as the unrolled model cuts them."""
    n, frames, stride = len(x), spec["frames"], spec["stride"]
    return x[:, : frames * stride].reshape(n, frames, -1)


def _calibration(model: Any, x: np.ndarray, spec: dict[str, Any]) -> list[tuple[np.ndarray, ...]]:
    """(frame, *state) at every frame of every window, evenly thinned to the cap."""
    import torch

    rows = []
    with torch.no_grad():
        for window in frames_of(x, spec):
            state = tuple(torch.zeros(1, spec["hidden_size"]) for _ in range(spec["states"]))
            for frame in window:
                f = torch.from_numpy(frame[None])
                rows.append((frame[None], *(s.numpy() for s in state)))
                state = model.step(model.input_proj(f), *state)
    keep = np.linspace(0, len(rows) - 1, min(len(rows), MAX_CALIBRATION_STEPS)).astype(int)
    return [rows[i] for i in keep]


def spec_for(arch: Any) -> dict[str, Any]:
    steps, channels = arch.input_shape
    return {"arch": arch.arch, "frames": steps // arch.stride, "stride": arch.stride,
            "frame_size": arch.stride * channels, "hidden_size": arch.hidden_size,
            "states": 1 if arch.arch == "gru" else 2, "file": STEP_FILE,
            "inputs": "frame (1, stride × C), then each state (1, hidden_size)",
            "outputs": "logits (1, classes), then each new state",
            "feeding": "states start at 0; after each invoke, requantize every output state to "
            "its input's scale and zero point and feed it back; the logits after the last frame "
            "of a window are the prediction"}  # fmt: skip


def convert_step(model: Any, arch: Any, calibration: np.ndarray) -> tuple[bytes, dict[str, Any]]:
    """The int8 step model of an unrolled RNN, checked fully int8."""
    import torch

    from pipeline.export.pt2e import quantize_static, to_tflite
    from pipeline.models.recurrent import step_module

    spec = spec_for(arch)
    step = step_module(model)
    states = (torch.zeros(1, spec["hidden_size"]) for _ in range(spec["states"]))
    samples = (torch.zeros(1, spec["frame_size"]), *states)
    converted, quantizer, _ = quantize_static(step, samples, _calibration(model, calibration, spec))
    data = to_tflite(converted, samples, quantizer)
    check_full_int8(data, "int8 streaming step export")
    return data, spec


def write(out_dir: Path, step: bytes | None, spec: dict[str, Any]) -> None:
    """exports/streaming/: the step model (recurrent families) and streaming.json, replaced as one."""
    with atomic.atomic_dir(out_dir) as tmp:
        if step is not None:
            (tmp / STEP_FILE).write_bytes(step)
        (tmp / DESCRIPTION).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
