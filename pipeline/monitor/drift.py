"""Drift, measured. Each sample becomes two features per channel (its mean and its spread over
every axis but the channel's), so a sensor's gain or offset, or an image's contrast, moves a
feature whatever the input's layout. An interval is judged by a two-sample Kolmogorov-Smirnov
test per feature against the training split, a two-sample Hotelling T² test of all features at
once (a joint move that no single feature shows), and a chi-square test of its predicted class
mix against the training labels' mix; the smallest p-value, Bonferroni-corrected over those
tests, is the interval's, so a clean stream drifts in at most `threshold` of its intervals."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.core.catalog import Manifest
from pipeline.core.config import MonitorParams


def features(x: np.ndarray) -> np.ndarray:
    """(n, …, C) inputs → (n, 2C): each channel's mean, then each channel's std."""
    flat = x.reshape(len(x), -1, x.shape[-1]).astype(np.float64)
    return np.concatenate([flat.mean(axis=1), flat.std(axis=1)], axis=1)


def feature_names(channels: list[str]) -> list[str]:
    return [f"{c} mean" for c in channels] + [f"{c} std" for c in channels]


def dequantized(samples: np.ndarray, manifest: Manifest) -> np.ndarray:
    """A bundle's inputs back in the model's normalized space (where the training split is)."""
    if manifest.input_scale is None:
        return samples.astype(np.float32)
    zero = manifest.input_zero_point or 0
    return ((samples.astype(np.float32) - zero) * manifest.input_scale).astype(np.float32)


@dataclass(frozen=True)
class Reference:
    """What the training split looks like to the monitor."""

    features: np.ndarray
    class_share: np.ndarray
    names: list[str]

    @property
    def mean(self) -> np.ndarray:
        return self.features.mean(axis=0)

    @property
    def cov(self) -> np.ndarray:
        return np.atleast_2d(np.cov(self.features, rowvar=False))

    @classmethod
    def of(
        cls, x_train: np.ndarray, y_train: np.ndarray, classes: int, channels: list[str]
    ) -> Reference:
        share = np.bincount(y_train, minlength=classes) / len(y_train)
        names = channels or [f"ch{i}" for i in range(x_train.shape[-1])]
        return cls(features(x_train), share, feature_names(names))


@dataclass(frozen=True)
class Interval:
    """One monitor interval's verdict."""

    index: int
    samples: int
    p_value: float  # the smallest, Bonferroni-corrected
    drifted: bool
    feature_p: dict[str, float]
    joint_p: float  # every feature at once (Hotelling T²)
    class_mix_p: float
    confidence: float  # mean top-class probability of the int8 outputs
    labelled: int
    accuracy: float | None  # on the labelled samples, where any came back


def judge(ref: Reference, x: np.ndarray, outputs: np.ndarray, labels: np.ndarray,
          index: int, params: MonitorParams) -> Interval:  # fmt: skip
    """One interval: inputs `x` (normalized space), the raw outputs (any scale: only their
    ranking and softmax matter after `probabilities`), labels (-1: none)."""
    from scipy import stats

    current = features(x)
    feature_p = {
        name: float(stats.ks_2samp(ref.features[:, i], current[:, i]).pvalue)
        for i, name in enumerate(ref.names)
    }
    predicted = outputs.argmax(axis=1)
    observed = np.bincount(predicted, minlength=len(ref.class_share)).astype(np.float64)
    expected = np.maximum(ref.class_share, 1e-9) * observed.sum()
    expected *= observed.sum() / expected.sum()
    class_p = float(stats.chisquare(observed, expected).pvalue)
    joint_p = hotelling(ref, current)
    tests = len(feature_p) + 2
    corrected = min(1.0, min([*feature_p.values(), joint_p, class_p]) * tests)
    known = labels >= 0
    accuracy = float((predicted[known] == labels[known]).mean()) if known.any() else None
    return Interval(
        index, len(x), corrected, corrected < params.threshold, feature_p, joint_p, class_p,
        float(probabilities(outputs).max(axis=1).mean()), int(known.sum()), accuracy,
    )  # fmt: skip


def hotelling(ref: Reference, current: np.ndarray) -> float:
    """Two-sample Hotelling T² p-value of the features' means, pooled covariance, F-distributed
    (exact for normal features; the pseudo-inverse and rank handle a constant feature)."""
    from scipy import stats

    n1, n2 = len(ref.features), len(current)
    pooled = ((n1 - 1) * ref.cov + (n2 - 1) * np.atleast_2d(np.cov(current, rowvar=False))) / (
        n1 + n2 - 2
    )
    rank = int(np.linalg.matrix_rank(pooled))
    dof = n1 + n2 - rank - 1
    if rank == 0 or dof <= 0:
        return 1.0
    diff = current.mean(axis=0) - ref.mean
    t2 = n1 * n2 / (n1 + n2) * float(diff @ np.linalg.pinv(pooled) @ diff)
    return float(stats.f.sf(dof / (rank * (n1 + n2 - 2)) * t2, rank, dof))


def probabilities(outputs: np.ndarray) -> np.ndarray:
    """Softmax of the outputs (int8 outputs dequantize with one positive scale, which only
    sharpens or flattens this; the monitor compares like with like)."""
    z = outputs.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class DeviceDrift:
    """Every complete interval of a device's stream, and where drift was confirmed."""

    device: str
    intervals: list[Interval] = field(default_factory=list)
    confirmed_at: int | None = None  # the interval that completed `params.intervals` in a row
    pending_samples: int = 0

    def add(self, interval: Interval, params: MonitorParams) -> None:
        self.intervals.append(interval)
        run = 0
        for seen in reversed(self.intervals):
            if not seen.drifted:
                break
            run += 1
        if self.confirmed_at is None and run >= params.intervals:
            self.confirmed_at = interval.index


def monitor_stream(ref: Reference, x: np.ndarray, outputs: np.ndarray, labels: np.ndarray,
                   device: str, params: MonitorParams) -> DeviceDrift:  # fmt: skip
    """A whole stream in arrival order, cut into intervals of `params.interval_samples`."""
    size = params.interval_samples
    result = DeviceDrift(device, pending_samples=len(x) % size)
    for k in range(len(x) // size):
        part = slice(k * size, (k + 1) * size)
        result.add(judge(ref, x[part], outputs[part], labels[part], k, params), params)
    return result
