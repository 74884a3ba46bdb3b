"""Client shards, DP accounting and strategy state (issue 26): fast, no Flower engine."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.config import FederatedParams
from pipeline.core.errors import DataValidationError
from pipeline.data.partition import partition
from pipeline.training.federated.dp import epsilon, privatize

LABELS = np.repeat(np.arange(10), 60)


def _fp(**keys: object) -> FederatedParams:
    return FederatedParams(**{"clients": 10, "min_samples": 1, **keys})


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "by_class"])
def test_every_training_sample_goes_to_exactly_one_client_the_same_way_per_seed(kind: str) -> None:
    shards = partition(LABELS, (), _fp(partition=kind), seed=7)
    held = np.concatenate([np.concatenate([t, v]) for t, v in shards])
    assert sorted(held.tolist()) == list(range(len(LABELS)))
    again = partition(LABELS, (), _fp(partition=kind), seed=7)
    assert all(
        (a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(shards, again, strict=True)
    )
    other = partition(LABELS, (), _fp(partition=kind), seed=8)
    assert any(
        len(a[0]) != len(b[0]) or (a[0] != b[0]).any() for a, b in zip(shards, other, strict=True)
    )


def _classes_held(shards: list) -> list[int]:
    return [len(np.unique(LABELS[np.concatenate([t, v])])) for t, v in shards]


def test_small_alpha_skews_the_clients_and_by_class_holds_k_classes_each() -> None:
    iid = _classes_held(partition(LABELS, (), _fp(partition="iid"), 2))
    skewed = _classes_held(partition(LABELS, (), _fp(partition="dirichlet", alpha=0.1), 2))
    mild = _classes_held(partition(LABELS, (), _fp(partition="dirichlet", alpha=100.0), 2))
    assert min(iid) == 10 and min(mild) == 10
    assert np.median(skewed) <= 5, skewed  # Hsu et al.'s α = 0.1: a few classes per client
    assert _classes_held(partition(LABELS, (), _fp(partition="by_class"), 1)) == [2] * 10


def test_each_client_keeps_a_local_validation_share() -> None:
    for train, val in partition(LABELS, (), _fp(local_val_fraction=0.25), 3):
        assert len(val) == 15 and len(train) == 45
        assert not set(train.tolist()) & set(val.tolist())


def test_natural_gives_one_client_per_owner() -> None:
    owners = tuple(f"s{i % 4}" for i in range(len(LABELS)))
    shards = partition(LABELS, owners, _fp(clients=4, partition="natural"), 0)
    for name, (train, val) in zip(["s0", "s1", "s2", "s3"], shards, strict=True):
        assert {owners[i] for i in np.concatenate([train, val])} == {name}
    with pytest.raises(DataValidationError, match=r"has 4 owners, train\.federated\.clients is 10"):
        partition(LABELS, owners, _fp(partition="natural"), 0)


def test_a_client_below_min_samples_is_named_with_its_count() -> None:
    with pytest.raises(DataValidationError) as err:
        partition(LABELS, (), _fp(clients=40, partition="dirichlet", alpha=0.05, min_samples=20), 0)
    assert "fewer than train.federated.min_samples 20" in str(err.value)
    assert "client " in str(err.value) and " has " in str(err.value)


def test_privatize_clips_to_the_norm_and_is_seeded() -> None:
    update = {"w": np.full(100, 1.0, np.float32), "b": np.full(4, 3.0, np.float32)}
    quiet = privatize(update, clip=1.0, noise_multiplier=1e-9, seed=5)
    norm = np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in quiet.values()))
    assert norm == pytest.approx(1.0, rel=1e-5)
    noisy = privatize(update, clip=1.0, noise_multiplier=1.0, seed=5)
    assert all((noisy[k] == privatize(update, 1.0, 1.0, 5)[k]).all() for k in update)
    assert all(v.dtype == np.float32 for v in noisy.values())


def test_epsilon_grows_with_rounds_and_falls_with_noise() -> None:
    assert epsilon(0, 1.0, 1e-5) == 0.0
    assert epsilon(10, 1.0, 1e-5) < epsilon(20, 1.0, 1e-5)
    assert epsilon(20, 2.0, 1e-5) < epsilon(20, 1.0, 1e-5)
    # One Gaussian release at σ = 1: RDP gives ε ≈ 4.4-4.8 at δ = 1e-5 (Mironov 2017, Table 1's
    # order of magnitude); a loose bound but a bound.
    assert 3.5 < epsilon(1, 1.0, 1e-5) < 6.0


def test_server_strategy_state_survives_a_checkpoint_round_trip() -> None:
    from flwr.app import Array, ArrayRecord

    from pipeline.training.federated.strategies import load_state, make_strategy, state_of

    strategy = make_strategy(_fp(strategy="fedavgm"))
    strategy.current_arrays = ArrayRecord({"w": Array(np.arange(3, dtype=np.float32))})
    strategy.momentum_vector = [np.ones(3, np.float32)]
    fresh = make_strategy(_fp(strategy="fedavgm"))
    load_state(fresh, state_of(strategy))
    assert (fresh.current_arrays["w"].numpy() == np.arange(3)).all()
    assert (fresh.momentum_vector[0] == 1).all()
