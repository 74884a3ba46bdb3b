"""The paradigm comparison's worker, run for real on 2 ranks: the figures the bench reports."""

from __future__ import annotations

import sys

import pytest

from pipeline.bench.harness import run_json as _run_json
from pipeline.bench.sections.paradigms import _paradigm_row
from pipeline.bench.sections.paradigms import targets as paradigm_targets


@pytest.mark.slow
def test_a_pipeline_config_reports_its_bubble_state_and_traffic() -> None:
    cmd = [sys.executable, "-m", "pipeline.bench.paradigms", "--parallelism", "pipeline",
           "--microbatches", "4", "--warmup", "0.1", "--seconds", "0.3"]  # fmt: skip
    got = _run_json(cmd, 1, 2)
    assert got["plan"] == "pipeline pp2 1f1b m4 (2 stages)" and got["samples_per_s"] > 0
    first, last = got["ranks"]
    # the default CNN's two stages hold exactly the whole model's 94,186 parameters × 16 B
    assert first["state_bytes"] + last["state_bytes"] == 94_186 * 16
    # 128 samples: 32 × 64 × 2 × 2 activations out of stage 0, as many gradients back
    assert first["sent_bytes"] == last["sent_bytes"] == 128 * 64 * 2 * 2 * 4
    assert first["bubble_theory"] == pytest.approx(1 / 5)
    row = _paradigm_row([got["samples_per_s"]], [got])
    assert 0 < row["busy_ms"] < row["step_ms"] and 0 <= row["bubble_and_overhead_measured"] < 1


def test_fsdp_state_target() -> None:
    rows = {"data 2 × 1": {"model_state_bytes_max_rank": 100}}
    r = {"paradigms": {"m": rows | {"fsdp 2 × 1": {"model_state_bytes_max_rank": 50}}}}
    assert paradigm_targets(r)[0]["status"] == "PASS"
    r["paradigms"]["m"]["fsdp 2 × 1"]["model_state_bytes_max_rank"] = 80
    assert paradigm_targets(r)[0]["status"] == "FAIL"
