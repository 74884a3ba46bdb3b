"""The drift demo's streams, from a prepared split: a simulated device sends held-out samples
(validation and test: never trained on), clean and then with one channel's sensor changed (gain
1.5×, offset +1σ of its training values; on digits' one channel, a contrast and brightness
change of the same size), quantized the way its int8 bundle's input is. Used by the bench and
the tests; seeded, so every run sees one stream."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.catalog import Manifest
from pipeline.core.config import MonitorParams, PrepareParams
from pipeline.monitor.drift import DeviceDrift, Reference, dequantized, monitor_stream

GAIN, OFFSET_SIGMA = 1.5, 1.0


def shifted(x: np.ndarray, normalization: dict, channel: int) -> np.ndarray:
    """Normalized inputs whose raw `channel` became GAIN × raw + OFFSET_SIGMA × σ: in normalized
    units x' = GAIN·x + (GAIN − 1)·μ/σ + OFFSET_SIGMA."""
    mean = float(normalization["mean"][channel])
    std = float(normalization["std"][channel])
    out = x.copy()
    out[..., channel] = GAIN * x[..., channel] + (GAIN - 1.0) * mean / std + OFFSET_SIGMA
    return out


def quantized(x: np.ndarray, manifest: Manifest) -> np.ndarray:
    """What an int8 bundle's device feeds its model (values beyond int8 saturate, as there)."""
    from pipeline.tflite.litert import quantize_input

    if manifest.input_scale is None:
        return x.astype(np.float32)
    return quantize_input(x, manifest.input_scale, manifest.input_zero_point or 0)


def perfect_outputs(y: np.ndarray, classes: int) -> np.ndarray:
    """int8 outputs of a classifier that is always right (the demo without a model at hand)."""
    out = np.full((len(y), classes), -100, dtype=np.int8)
    out[np.arange(len(y)), y] = 100
    return out


def intervals(x: np.ndarray, y: np.ndarray, count: int, size: int, seed: int
              ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """`count` intervals of `size` distinct samples each from a held-out pool (a long stream
    from a short split: each interval is a fresh draw, none repeats a sample within itself)."""
    rng = np.random.default_rng(seed)
    picks = np.concatenate([rng.permutation(len(x))[:size] for _ in range(count)])
    return x[picks], y[picks]


@dataclass(frozen=True)
class Scenario:
    """One dataset ready for the demo: the reference, the held-out pool, an int8 input."""

    reference: Reference
    pool_x: np.ndarray
    pool_y: np.ndarray
    normalization: dict
    classes: int
    manifest: Manifest


def scenario(prepare_params: PrepareParams, folder: Path) -> Scenario:
    """The dataset prepared into `folder` (seeded: the same split as a run's), with an int8 input
    scale calibrated on its training split, as export's would be."""
    from pipeline.data.prepare import load_processed, prepare

    prepare(prepare_params, out_dir=folder)
    s = load_processed(folder)
    meta = s.meta
    manifest = Manifest(
        device="demo", runtime="tflm", variant="int8", model_file="model.tflite",
        model_sha256="0" * 64, model_bytes=0, labels=meta.classes, task={"kind": "classification"},
        input_shape=meta.input_shape, input_scale=float(np.abs(s.x["train"]).max() / 127),
        input_zero_point=0, output_scale=1.0, output_zero_point=0,
    )  # fmt: skip
    return Scenario(
        Reference.of(s.x["train"], s.y["train"], meta.num_classes, meta.channels),
        np.concatenate([s.x["val"], s.x["test"]]), np.concatenate([s.y["val"], s.y["test"]]),
        meta.normalization, meta.num_classes, manifest,
    )  # fmt: skip


def run_stream(sc: Scenario, x: np.ndarray, y: np.ndarray, params: MonitorParams) -> DeviceDrift:
    """The monitor over what a device would send: x quantized to int8 and back, outputs of a
    classifier that is always right, every label returned."""
    seen = dequantized(quantized(x, sc.manifest), sc.manifest)
    return monitor_stream(sc.reference, seen, perfect_outputs(y, sc.classes), y, "demo", params)


def detection_delay(sc: Scenario, params: MonitorParams, channel: int, seed: int,
                    before: int = 5, after: int = 10) -> int | None:  # fmt: skip
    """Intervals after the shift until drift is confirmed (1: the first shifted interval); None:
    never; 0 or less: confirmed before the shift (a false alarm)."""
    size = min(params.interval_samples, len(sc.pool_x))
    x0, y0 = intervals(sc.pool_x, sc.pool_y, before, size, seed)
    x1, y1 = intervals(sc.pool_x, sc.pool_y, after, size, seed + 1)
    x = np.concatenate([x0, shifted(x1, sc.normalization, channel)])
    drift = run_stream(
        sc, x, np.concatenate([y0, y1]), params.model_copy(update={"interval_samples": size})
    )
    return None if drift.confirmed_at is None else drift.confirmed_at - before + 1


def false_alarms(sc: Scenario, params: MonitorParams, count: int, seed: int) -> DeviceDrift:
    """`count` clean intervals."""
    size = min(params.interval_samples, len(sc.pool_x))
    x, y = intervals(sc.pool_x, sc.pool_y, count, size, seed)
    return run_stream(sc, x, y, params.model_copy(update={"interval_samples": size}))
