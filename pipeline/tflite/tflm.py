"""Run models in the real TensorFlow Lite Micro interpreter and measure the tensor arena they need."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from collections.abc import Iterator

import numpy as np


@contextlib.contextmanager
def _silenced_native_output() -> Iterator[None]:
    """TFLite Micro reports failed allocations with printf; the arena search expects many."""
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _interpreter(model: bytes, arena_size: int):  # type: ignore[no-untyped-def]
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(model, arena_size=arena_size)


def _probe(model: bytes, arena_size: int) -> None:
    """Child body: exit status 0 when the model allocates and completes one invoke."""
    try:
        with _silenced_native_output():
            interp = _interpreter(model, arena_size)
            details = interp.get_input_details(0)
            interp.set_input(np.zeros(details["shape"], dtype=details["dtype"]), 0)
            interp.invoke()
    except Exception:
        sys.exit(1)


def runs_with_arena(model: bytes, arena_size: int) -> bool:
    """True if the model allocates and completes one invoke within `arena_size` bytes.

    Each probe runs in its own process: TFLite Micro keeps its allocator inside the arena and
    crashes outright (SIGSEGV) on arenas of a few hundred bytes, which then simply reads as
    "does not fit". The processes come from a forkserver, a clean single-threaded parent, never
    from a fork of this process (torch and JAX threads make that deadlock-prone).
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["pipeline.tflite.tflm", "tflite_micro.python.tflite_micro.runtime"])
    proc = ctx.Process(target=_probe, args=(model, arena_size), daemon=True)
    proc.start()
    proc.join()
    return proc.exitcode == 0


def measure_arena_bytes(model: bytes, max_bytes: int, granularity: int = 16) -> int:
    """Smallest arena (to `granularity` bytes) with which the model allocates and runs.

    Binary search: a larger arena never fails where a smaller one succeeds.
    """
    if not runs_with_arena(model, max_bytes):
        raise ValueError(
            f"the model does not run in TFLite Micro even with a {max_bytes:,}-byte arena"
        )
    lo, hi = 0, max_bytes  # lo fails (or is zero), hi runs
    while hi - lo > granularity:
        mid = (lo + hi) // 2
        if runs_with_arena(model, mid):
            hi = mid
        else:
            lo = mid
    return -(-hi // granularity) * granularity


def predict(model: bytes, x: np.ndarray, arena_size: int) -> np.ndarray:
    """Raw outputs for each sample of x (already in the model's input dtype), one invoke each."""
    interp = _interpreter(model, arena_size)
    outputs = []
    for row in x:
        interp.set_input(row[None], 0)
        interp.invoke()
        outputs.append(np.array(interp.get_output(0))[0])
    return np.stack(outputs)


def measure_invoke_ms(model: bytes, arena_size: int, runs: int = 200) -> float:
    """Median TFLite Micro invoke time on this host (the reference kernels: a host figure, far
    from a Cortex-M's, but it tracks the model's cost from commit to commit)."""
    from pipeline.tflite.timing import median_invoke_ms

    interp = _interpreter(model, arena_size)
    shape = interp.get_input_details(0)["shape"]
    dtype = interp.get_input_details(0)["dtype"]
    interp.set_input(np.zeros(shape, dtype=dtype), 0)
    return median_invoke_ms(interp.invoke, runs, warmup=3)


def _quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)


def predict_streaming(model: bytes, frames: np.ndarray, arena_size: int) -> np.ndarray:
    """A streaming step model (frame, *state) → (logits, *state) run over each window's frames
    (N, F, frame_size, float): the states start at 0 and each output state is requantized to
    its input's scale and zero point, as firmware does. Raw int8 logits after the last frame."""
    from pipeline.tflite.flatbuffer import read_model

    info = read_model(model, "streaming step model")
    ins = [info.tensors[i] for i in info.inputs]
    outs = [info.tensors[i] for i in info.outputs]
    interp = _interpreter(model, arena_size)
    results = []
    for window in frames:
        states = [
            _quantize(np.zeros(t.shape, np.float32), t.scales[0], t.zero_points[0]) for t in ins[1:]
        ]
        for frame in window:
            interp.set_input(_quantize(frame[None], ins[0].scales[0], ins[0].zero_points[0]), 0)
            for k, state in enumerate(states, start=1):
                interp.set_input(state, k)
            interp.invoke()
            got = [np.array(interp.get_output(k)) for k in range(len(outs))]
            states = [
                _quantize((got[k].astype(np.float32) - outs[k].zero_points[0]) * outs[k].scales[0],
                          ins[k].scales[0], ins[k].zero_points[0])
                for k in range(1, len(outs))
            ]  # fmt: skip
        results.append(got[0][0])
    return np.stack(results)
