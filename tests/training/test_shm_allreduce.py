"""The shared-memory gradient all-reduce: when it applies, and a real 2-worker torchrun job that
checks its arithmetic, DDP's weights against gloo's, its errors, and that nothing is left in
/dev/shm."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.config import parse_params
from pipeline.core.errors import ConfigError
from pipeline.training.shm_allreduce import SHM_DIR_ENV, unavailable_reason


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (("gloo", 2, 2, "x86_64"), None),
        (("nccl", 2, 2, "x86_64"), "backend is nccl"),
        (("gloo", 1, 1, "x86_64"), "single worker"),
        (("gloo", 4, 2, "x86_64"), "span several hosts"),
        (("gloo", 2, 2, "aarch64"), "only x86-64"),
    ],
)
def test_when_shared_memory_applies(args: tuple, phrase: str | None) -> None:
    reason = unavailable_reason(*args)
    assert reason is None if phrase is None else phrase in str(reason)


@pytest.mark.parametrize(
    ("train", "phrase"),
    [
        ({"allreduce": "shared_memory", "nnodes": 2, "rdzv_endpoint": "h:1"}, "one host"),
        ({"allreduce": "shared_memory", "backend": "nccl"}, "gloo backend"),
        ({"allreduce": "tcp"}, "allreduce"),
    ],
)
def test_impossible_allreduce_settings_are_config_errors(train: dict, phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase):
        parse_params({"train": train})


@pytest.mark.slow
def test_two_workers_agree_exactly_with_gloo() -> None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("shared-memory all-reduce is x86-64 only")
    shm = Path("/dev/shm")
    before = set(shm.glob("tinyops-allreduce-*")) if shm.is_dir() else set()
    job = Path(__file__).with_name("shm_allreduce_job.py")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(job),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["auto"] is True and out["backend"] is False
    # The mean of every worker's tensor, summed in rank order, bit for bit, on every worker.
    assert out["exact"] and out["same_on_every_rank"]
    assert "exceeds the 800,000 B slot" in out["too_big"]
    # Two workers: (g0 + g1) / 2 equals DDP's own g0/2 + g1/2, so the weights do too.
    assert out["ddp_equal_to_gloo"], out["ddp_max_diff"]
    assert "rank 1 did not reach all-reduce" in out["timeout"]
    after = set(shm.glob("tinyops-allreduce-*")) if shm.is_dir() else set()
    assert after == before, "the shared mapping must be unlinked once every worker has it"


def _run_job(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    job = Path(__file__).with_name("shm_allreduce_job.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.run(
        [*cmd, str(job), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})),
        timeout=300,
    )


def _fallback_ok(proc: subprocess.CompletedProcess, cause: str) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"used_shared_memory": False, "equal_to_gloo": True}
    warned = [ln for ln in proc.stderr.splitlines() if "shared-memory all-reduce unavailable" in ln]
    # The job builds DDP twice with shared memory asked for: one warning each, from rank 0 only.
    assert len(warned) == 2, proc.stderr[-3000:]
    assert cause in warned[0], warned[0]


@pytest.mark.slow
def test_no_folder_for_the_mapping_falls_back_on_every_rank(tmp_path: Path) -> None:
    """rank 0's mkstemp fails: rank 1 must not wait for a mapping that never comes."""
    proc = _run_job("fallback", env={SHM_DIR_ENV: str(tmp_path / "missing")})
    _fallback_ok(proc, "No such file or directory")


@pytest.mark.slow
def test_a_full_tmpfs_falls_back_instead_of_sigbus(tmp_path: Path) -> None:
    """A /dev/shm stand-in of 64 KiB (Docker's is 64 MiB): the reservation fails up front."""
    tiny = tmp_path / "shm"
    tiny.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tiny)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        # The job's model needs 2 × 2 slots of 3,392 B: more than the one free page left.
        (tiny / "filler").write_bytes(b"\0" * 60_000)
        _fallback_ok(_run_job("fallback", env={SHM_DIR_ENV: str(tiny)}), "No space left")
    finally:
        subprocess.run(["umount", str(tiny)], check=False)
