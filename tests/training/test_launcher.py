"""The launcher's checks, and a real two-node DDP job on one machine through a c10d rendezvous."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.core.config import parse_params
from pipeline.core.errors import ConfigError
from pipeline.training.launcher import check_world_fits, resolve_backend, torchrun_command


@pytest.mark.parametrize(
    ("train", "n_train", "phrase"),
    [
        ({"nproc_per_node": 2, "threads_per_proc": 64}, 1000, "oversubscribing"),
        ({"nproc_per_node": 2, "batch_size": 33}, 1000, "does not split evenly over 2"),
        ({"nproc_per_node": 1, "batch_size": 512}, 100, "larger than the training split (100"),
    ],
)
def test_world_checks_fail_in_the_first_second(train: dict, n_train: int, phrase: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(phrase)):
        check_world_fits(parse_params({"train": train}), n_train, backend="gloo")


def test_nccl_without_a_gpu_is_refused() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        resolve_backend(parse_params({"train": {"backend": "nccl"}}))
    assert resolve_backend(parse_params({})) == "gloo"


def test_gpus_are_probed_only_where_a_gpu_driver_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No driver node: 0 at once, no torch import in a child. A driver node: the real probe runs
    (this CPU wheel's torch finds no device behind it, so nccl is still refused)."""
    import subprocess

    from pipeline.training import launcher

    if any(Path(node).exists() for node in launcher.GPU_DRIVER_NODES):
        pytest.skip("this machine has a GPU driver")
    probes: list[list[str]] = []
    real_run = subprocess.run
    monkeypatch.setattr(
        launcher.subprocess, "run", lambda cmd, **kw: probes.append(cmd) or real_run(cmd, **kw)
    )
    assert launcher._cuda_devices() == 0 and probes == []
    (tmp_path / "nvidia0").touch()
    monkeypatch.setattr(launcher, "GPU_DRIVER_NODES", (str(tmp_path / "nvidia0"),))
    assert launcher._cuda_devices() == 0 and len(probes) == 1
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        resolve_backend(parse_params({"train": {"backend": "nccl"}}))


def test_torchrun_command_shapes() -> None:
    single = torchrun_command(parse_params({}), Path("params.yaml"), "gloo")
    assert "--standalone" in single and single[single.index("--nproc-per-node") + 1] == "2"
    assert single[-2:] == ["--metrics-log", ".tinyops/train_metrics.jsonl"]
    multi = torchrun_command(
        parse_params({"train": {"nnodes": 3, "rdzv_endpoint": "10.0.0.1:29400"}}),
        Path("params.yaml"),
        "gloo",
    )
    assert "--standalone" not in multi
    assert multi[multi.index("--rdzv-endpoint") + 1] == "10.0.0.1:29400"
    assert multi[multi.index("--nnodes") + 1] == "3"
    assert multi[multi.index("--local-addr") + 1] == "10.0.0.1"  # node 0: the rendezvous host
    assert "is_host=1" in multi[multi.index("--rdzv-conf") + 1]
    elastic = parse_params({"train": {"nnodes": "1:2", "rdzv_endpoint": "10.0.0.1:29400"}})
    joining = torchrun_command(elastic, Path("params.yaml"), "gloo", False, "10.0.0.2")
    assert joining[joining.index("--nnodes") + 1] == "1:2"
    assert joining[joining.index("--local-addr") + 1] == "10.0.0.2"
    assert "is_host=0,join_timeout=120" in joining[joining.index("--rdzv-conf") + 1]
    via = torchrun_command(elastic, Path("params.yaml"), "gloo", False, "10.0.0.2", "node0:29400")
    assert via[via.index("--rdzv-endpoint") + 1] == "node0:29400", "tinyops worker --rdzv"


def test_pruning_keeps_complete_checkpoints_and_ignores_scratch_copies(tmp_path: Path) -> None:
    """A Keras worker's scratch copy (epoch-0004.worker-1) present while the chief prunes once
    pushed out epoch-0003, so a resumed run ended with other checkpoint bytes."""
    from pipeline.training.checkpoint import prune

    for name in ("epoch-0002", "epoch-0003", "epoch-0004", "epoch-0004.worker-1"):
        (tmp_path / name).mkdir()
    (tmp_path / "epoch-0005.partial").mkdir()
    prune(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch-0003", "epoch-0004", "epoch-0004.worker-1", "epoch-0005.partial",
    ]  # fmt: skip


def test_scratch_copies_a_killed_worker_left_are_removed_and_checkpoints_stay(
    tmp_path: Path,
) -> None:
    """A Keras worker killed while writing left epoch-0002.worker-1 behind (CI, run 31): the
    resumed run's checkpoints then differed from an uninterrupted run's by that folder."""
    from pipeline.training.checkpoint import remove_scratch

    for name in ("epoch-0003", "epoch-0002.worker-1", "epoch-0004.partial"):
        (tmp_path / name).mkdir()
    (tmp_path / "epoch-0005.pt").write_bytes(b"x")
    (tmp_path / "epoch-0006.pt.partial").write_bytes(b"x")
    remove_scratch(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0003", "epoch-0005.pt"]
