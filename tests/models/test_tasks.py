"""The task interface: what a family's outputs mean. The autoencoder's AUC and threshold are
checked against scikit-learn and a brute-force search, not against themselves."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.errors import ConfigError
from pipeline.models.architecture import Architecture, normal_index
from pipeline.models.tasks import (
    Classification,
    Reconstruction,
    auc,
    best_threshold,
    task_for,
    task_from,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_scikit_learn_with_ties(seed: int) -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(size=200) + labels, 1)  # rounding makes ties
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)


def test_auc_is_nan_with_one_kind_only() -> None:
    assert np.isnan(auc(np.arange(5.0), np.zeros(5, dtype=int)))


def test_best_threshold_maximises_balanced_accuracy() -> None:
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(40, int), np.ones(10, int)]
    scores = rng.normal(size=50) + 1.5 * labels

    def balanced(cut: float) -> float:
        hit = scores > cut
        return (hit[labels == 1].mean() + (~hit[labels == 0]).mean()) / 2

    cut = best_threshold(scores, labels)
    assert balanced(cut) == pytest.approx(max(balanced(c) for c in scores), abs=1e-9)
    separated = best_threshold(
        np.r_[np.arange(5.0), np.arange(10.0, 15.0)], np.r_[[0] * 5, [1] * 5]
    )
    assert 4 < separated < 10


def test_reconstruction_scores_windows_by_their_error() -> None:
    task = Reconstruction(normal=2)
    y = np.array([2, 0, 2, 1])
    x = np.zeros((4, 3, 2), np.float32)
    out = np.zeros((4, 6), np.float32)
    out[1] += 1.0  # a window rebuilt badly
    assert task.labels(y).tolist() == [0, 1, 0, 1]
    assert task.training_rows(y).tolist() == [True, False, True, False]
    assert task.error(out, x).tolist() == [0.0, 1.0, 0.0, 0.0]
    assert task.predict(out, x, 0.5).tolist() == [0, 1, 0, 0]
    assert task.class_names(["a", "b", "c"]) == ["normal (c)", "anomaly"]
    with pytest.raises(ValueError, match="validation threshold"):
        task.predict(out, x, None)


def test_a_manifest_gives_the_task_back() -> None:
    arch = Architecture((8, 2), 3, (4, 2), arch="autoencoder", normal_class=1)
    task = task_for(arch)
    again, threshold = task_from(task.describe(0.25))
    assert isinstance(again, Reconstruction) and again.normal == 1 and threshold == 0.25
    assert type(task_from(None)[0]) is Classification  # bundles from before tasks existed
    assert type(task_for(Architecture((8, 2), 3, (4,), arch="gru"))) is Classification


def test_normal_class_is_named_against_the_dataset() -> None:
    assert normal_index(None, ["a", "b"]) == 0
    assert normal_index("b", ["a", "b"]) == 1
    with pytest.raises(ConfigError, match="did you mean 'Standing'"):
        normal_index("standing", ["Walking", "Standing"])
