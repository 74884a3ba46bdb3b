"""The job's shape (pipeline/core/parallel.py): impossible combinations are params errors that
name what to change, before any worker starts."""

from __future__ import annotations

import pytest

from pipeline.core.config import parse_params
from pipeline.core.errors import ConfigError
from pipeline.core.parallel import balanced_split, make_plan, worker_model_state_bytes


def _params(train: dict, channels: list[int] | None = None):  # type: ignore[no-untyped-def]
    return parse_params({"train": train, "model": {"channels": channels or [32, 64, 128]}})


@pytest.mark.parametrize(
    ("train", "channels", "phrases"),
    [
        (
            {"parallelism": "pipeline", "pipeline_stages": 4, "nproc_per_node": 4,
             "oversubscribe": True},
            None,
            ["train.pipeline_stages = 4 is more stages than the model's 3 blocks"],
        ),
        (
            {"parallelism": "pipeline"},
            [64],
            ["needs a model of at least 2 blocks to split", "model.channels has 1"],
        ),
        (
            {"parallelism": "hybrid", "nproc_per_node": 2},
            None,
            ["hybrid needs a mesh dp × pp = world with dp ≥ 2",
             "a world of 2 workers cannot be factored over pp = 2"],
        ),
        (
            {"parallelism": "hybrid", "nproc_per_node": 3, "oversubscribe": True},
            None,
            ["a world of 3 workers cannot be factored over pp = 2"],
        ),
        (
            {"parallelism": "pipeline", "nproc_per_node": 1},
            None,
            ["runs one pipeline over all 1 workers", "needs 2"],
        ),
        (
            {"parallelism": "pipeline", "schedule": "interleaved_1f1b", "pipeline_stages": 3},
            None,
            ["interleaved_1f1b puts 2 stages on each pipeline worker", "must be even"],
        ),
        (
            {"parallelism": "pipeline", "microbatches": 1},
            None,
            ["train.microbatches = 1 is fewer than the 2 pipeline workers"],
        ),
        ({"parallelism": "tensor"}, None, ["'train.parallelism'", "'data', 'pipeline', 'hybrid' or 'fsdp'"]),
        ({"schedul": "gpipe"}, None, ["unknown key 'train.schedul'", "Did you mean 'schedule'?"]),
        ({"schedule": "1F1B"}, None, ["'train.schedule'", "'gpipe', '1f1b' or 'interleaved_1f1b'"]),
        ({"microbatches": "many"}, None, ["'train.microbatches': must be a positive integer or auto"]),
        ({"max_worker_memory_mb": -1.0}, None, ["'train.max_worker_memory_mb'", "greater than 0"]),
    ],
)  # fmt: skip
def test_impossible_shapes_are_params_errors(
    train: dict, channels: list[int] | None, phrases: list[str]
) -> None:
    with pytest.raises(ConfigError) as err:
        _params(train, channels)
    for phrase in phrases:
        assert phrase in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("train", "shape"),
    [
        ({}, ("data dp2", 2, 1, 1)),
        ({"parallelism": "fsdp"}, ("fsdp dp2", 2, 1, 1)),
        ({"parallelism": "pipeline"}, ("pipeline pp2 1f1b m4 (2 stages)", 1, 2, 4)),
        (
            {"parallelism": "hybrid", "nproc_per_node": 4, "oversubscribe": True,
             "microbatches": 2, "schedule": "gpipe"},
            ("hybrid dp2×pp2 gpipe m2 (2 stages)", 2, 2, 2),
        ),
    ],
)  # fmt: skip
def test_valid_shapes(train: dict, shape: tuple) -> None:
    from pipeline.core.config import parallel_plan

    plan = parallel_plan(_params(train))
    assert (plan.describe(), plan.dp, plan.pp, plan.microbatches) == shape


def test_the_batch_must_split_over_replicas_and_microbatches() -> None:
    from pipeline.core.config import parallel_plan

    with pytest.raises(
        ConfigError, match="over 1 replica\\(s\\) × 4 microbatches; use a multiple of 4"
    ):
        parallel_plan(_params({"parallelism": "pipeline", "batch_size": 66}))


def test_stages_are_balanced_by_parameters_and_contiguous() -> None:
    assert balanced_split([1, 1, 1, 1], 2) == [range(0, 2), range(2, 4)]
    assert balanced_split([352, 18560, 73984, 74506], 2) == [range(0, 3), range(3, 4)]
    assert balanced_split([10, 1, 1, 1], 3) == [range(0, 1), range(1, 2), range(2, 4)]
    assert [len(r) for r in balanced_split([5] * 5, 5)] == [1] * 5


def test_worker_model_state_follows_the_strategy() -> None:
    blocks = [1000, 3000]
    data = worker_model_state_bytes(make_plan("data", 2, blocks=2), blocks)
    assert data == 4000 * 16
    assert worker_model_state_bytes(make_plan("pipeline", 2, blocks=2), blocks) == 3000 * 16
    fsdp = worker_model_state_bytes(make_plan("fsdp", 2, blocks=2), blocks)
    assert fsdp == 2000 * 16 + 3000 * 8  # a shard, plus the largest block gathered in full


def test_block_parameters_match_torch() -> None:
    from pipeline.models.architecture import Architecture, block_parameters, build_model

    for arch in (
        Architecture((8, 8, 1), 10, (32, 64, 128)),
        Architecture((32, 32, 3), 5, (8, 16), 5),
    ):
        model = build_model(arch)
        assert sum(block_parameters(arch)) == sum(p.numel() for p in model.parameters())
