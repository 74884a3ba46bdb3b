"""What a family's outputs mean, and so how it trains and how it is scored: one interface,
two tasks. Training, export, evaluate and deploy ask the task; none of them branches on the
family.

    classification  class logits: cross-entropy, argmax, accuracy
    reconstruction  the autoencoder's rebuilt window: squared error trained on the normal class
                    only; a window's anomaly score is its mean squared error; a threshold chosen
                    on the validation split makes it a detector (accuracy), AUC ranks the scores

Outputs reach the numpy side as floats: int8 outputs are dequantized first (argmax does not
change; the reconstruction error needs the real values).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from pipeline.models.spec import Architecture


class Classification:
    """Class logits."""

    kind = "classification"
    metric = "accuracy"  # the figure export's PTQ-or-QAT decision compares
    calibrated = False  # needs no decision threshold from the validation split

    def labels(self, y: np.ndarray) -> np.ndarray:
        return y

    def class_names(self, classes: list[str]) -> list[str]:
        return list(classes)

    def training_rows(self, y: np.ndarray) -> np.ndarray:
        return np.ones(len(y), dtype=bool)

    def loss(self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from torch import nn

        return nn.functional.cross_entropy(out, y)

    def evaluate(
        self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[float, float, int]:
        """(loss sum, correct, samples) of a validation share: what training all-reduces."""
        from torch import nn

        if not len(y):
            return 0.0, 0.0, 0
        loss = nn.functional.cross_entropy(out, y, reduction="sum")
        return float(loss), float((out.argmax(1) == y).sum()), len(y)

    def evaluate_array(
        self, out: np.ndarray, x: np.ndarray, y: np.ndarray
    ) -> tuple[float, float, int]:
        """`evaluate` on numpy outputs (Keras): float64 log-softmax cross-entropy."""
        if not len(y):
            return 0.0, 0.0, 0
        logits = out - out.max(axis=1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        loss = -log_probs[np.arange(len(y)), y].sum()
        return float(loss), float((out.argmax(1) == y).sum()), len(y)

    def keras_loss(self) -> Any:
        """The per-sample training loss for Keras, as `fn(out, x, y)`."""
        import keras

        ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
        return lambda out, x, y: ce(y, out)

    def threshold(self, out: np.ndarray, x: np.ndarray, y: np.ndarray) -> float | None:
        return None

    def predict(self, out: np.ndarray, x: np.ndarray, threshold: float | None) -> np.ndarray:
        return out.argmax(1)

    def quality(self, out: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
        """The figure export's PTQ-or-QAT decision compares: accuracy."""
        return round(float((out.argmax(1) == y).mean()), 6)

    def scores(self, out: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Metrics beyond accuracy, per level (none for classification)."""
        return {}

    def describe(self, threshold: float | None) -> dict[str, Any]:
        """What a bundle's manifest records so its model can be scored again later."""
        return {"kind": self.kind}

    def header_lines(self, threshold: float | None) -> list[str]:
        """Constants a bundle's C++ header adds for this task."""
        return []

    def firmware_steps(self) -> list[str]:
        """What firmware does with the output (C++ comment lines of the bundle's README)."""
        return ["  // invoke, then argmax over interpreter.output(0)->data.int8 → kLabels[i]"]


class Reconstruction(Classification):
    """The autoencoder: class `normal` is normal, every other class an anomaly."""

    kind = "reconstruction"
    metric = "auc"
    calibrated = True

    def __init__(self, normal: int) -> None:
        self.normal = normal

    def labels(self, y: np.ndarray) -> np.ndarray:
        return (y != self.normal).astype(np.int64)

    def class_names(self, classes: list[str]) -> list[str]:
        return [f"normal ({classes[self.normal]})", "anomaly"]

    def training_rows(self, y: np.ndarray) -> np.ndarray:
        return y == self.normal

    def loss(self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((out - x.flatten(1)) ** 2).mean()

    def evaluate(
        self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[float, float, int]:
        """Over the normal windows only (the best epoch is the one that rebuilds normal data
        best); "correct" counts those rebuilt better than the per-channel mean would (error
        below 1 on standardised data), so val_accuracy reads as that share."""
        keep = y == self.normal
        if not bool(keep.any()):
            return 0.0, 0.0, 0
        error = ((out[keep] - x[keep].flatten(1)) ** 2).mean(1)
        return float(error.sum()), float((error < 1.0).sum()), int(keep.sum())

    def evaluate_array(
        self, out: np.ndarray, x: np.ndarray, y: np.ndarray
    ) -> tuple[float, float, int]:
        keep = y == self.normal
        if not bool(keep.any()):
            return 0.0, 0.0, 0
        error = self.error(out[keep], x[keep])
        return float(error.sum()), float((error < 1.0).sum()), int(keep.sum())

    def keras_loss(self) -> Any:
        import keras

        def loss(out: Any, x: Any, y: Any) -> Any:
            return keras.ops.mean((out - keras.ops.reshape(x, (keras.ops.shape(x)[0], -1))) ** 2, 1)

        return loss

    @staticmethod
    def error(out: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Each window's anomaly score: its mean squared reconstruction error."""
        flat = x.reshape(len(x), -1).astype(np.float64)
        return ((out.reshape(len(x), -1).astype(np.float64) - flat) ** 2).mean(1)

    def threshold(self, out: np.ndarray, x: np.ndarray, y: np.ndarray) -> float | None:
        """The score cut with the best balanced accuracy on these (validation) windows."""
        return best_threshold(self.error(out, x), self.labels(y))

    def predict(self, out: np.ndarray, x: np.ndarray, threshold: float | None) -> np.ndarray:
        if threshold is None:
            raise ValueError("an autoencoder's detection needs its validation threshold")
        return (self.error(out, x) > threshold).astype(np.int64)

    def quality(self, out: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
        """AUC: the PTQ-or-QAT decision compares ranking, not one threshold's luck."""
        return auc(self.error(out, x), self.labels(y))

    def scores(self, out: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        return {"auc": auc(self.error(out, x), self.labels(y))}

    def describe(self, threshold: float | None) -> dict[str, Any]:
        return {"kind": self.kind, "normal_class": self.normal, "threshold": threshold}

    def header_lines(self, threshold: float | None) -> list[str]:
        return [
            "// Anomaly score: mean over i of ((out[i] - kOutputZeroPoint) * kOutputScale - x[i])^2,",
            "// x the normalised input window; chosen on the validation split.",
            f"constexpr float kAnomalyThreshold = {float(threshold or 0.0)!r}f;",
        ]

    def firmware_steps(self) -> list[str]:
        return [
            "  // invoke; output(0) is the rebuilt window: dequantize each value with",
            "  //   (q - kOutputZeroPoint) * kOutputScale, subtract the normalised input, square,",
            "  //   average → score; score > kAnomalyThreshold is an anomaly (kLabels[1])",
        ]


def auc(scores: np.ndarray, anomalous: np.ndarray) -> float:
    """ROC AUC from ranks (Mann-Whitney U, ties averaged): the chance an anomaly scores above a
    normal window. NaN unless both kinds are present."""
    pos, neg = int(anomalous.sum()), int((anomalous == 0).sum())
    if not pos or not neg:
        return float("nan")
    _, tie, counts = np.unique(scores, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # 1-based rank of each distinct value's last member
    ranks = (last - (counts - 1) / 2)[tie]  # ties share their average rank
    u = ranks[anomalous == 1].sum() - pos * (pos + 1) / 2
    return round(float(u / (pos * neg)), 6)


def best_threshold(scores: np.ndarray, anomalous: np.ndarray) -> float:
    """The midpoint between adjacent sorted scores with the best balanced accuracy (the
    highest-scoring normal window when only one kind is present)."""
    values = np.unique(scores)
    cuts = np.concatenate([(values[:-1] + values[1:]) / 2, values[-1:]])
    normal, anomaly = anomalous == 0, anomalous == 1
    best, best_cut = -1.0, float(values[-1])
    for cut in cuts:
        hit = scores > cut
        tpr = hit[anomaly].mean() if anomaly.any() else 0.0
        tnr = (~hit[normal]).mean() if normal.any() else 0.0
        if (tpr + tnr) / 2 > best:
            best, best_cut = (tpr + tnr) / 2, float(cut)
    return float(f"{best_cut:.6g}")


def task_for(arch: Architecture) -> Classification:
    """The task of `arch`'s family."""
    rebuilds = arch.arch == "autoencoder" or arch.task == "reconstruction"
    return Reconstruction(arch.normal_class) if rebuilds else Classification()


def task_from(description: dict[str, Any] | None) -> tuple[Classification, float | None]:
    """A task and its threshold back from what `describe` recorded (a bundle's manifest; an
    older manifest without one is a classifier)."""
    d = description or {"kind": "classification"}
    if d["kind"] == "reconstruction":
        return Reconstruction(int(d["normal_class"])), d["threshold"]
    return Classification(), None
