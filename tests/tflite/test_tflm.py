"""TFLite Micro on the host: the arena search finds the smallest arena that runs."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.tflite import tflm
from pipeline.tflite.litert import quantize_input, run_batch
from tests.conftest import TinyRun

pytestmark = pytest.mark.slow


def test_the_arena_search_is_minimal_to_its_granularity(tiny_run: TinyRun) -> None:
    arena = tflm.measure_arena_bytes(tiny_run.int8, 65536, 16)
    assert arena % 16 == 0
    assert tflm.runs_with_arena(tiny_run.int8, arena)
    assert not tflm.runs_with_arena(tiny_run.int8, arena - 16)


def test_a_model_that_fits_no_arena_is_an_error(tiny_run: TinyRun) -> None:
    with pytest.raises(ValueError, match="does not run in TFLite Micro even with a 64-byte arena"):
        tflm.measure_arena_bytes(tiny_run.int8, 64, 16)


def test_tflm_and_litert_agree_on_int8(tiny_run: TinyRun) -> None:
    """Same predictions; raw int8 outputs within one step (TFLite Micro's reference kernels and
    LiteRT's optimised ones may round a requantisation differently)."""
    x = np.load(tiny_run.ws / "data/processed/x_test.npy")
    lite, inp = run_batch(tiny_run.int8, x)
    scale, zp = inp["quantization"]
    micro = tflm.predict(tiny_run.int8, quantize_input(x, scale, zp), 65536)
    assert np.array_equal(micro.argmax(1), lite.argmax(1))
    assert np.abs(micro.astype(int) - lite.astype(int)).max() <= 1
