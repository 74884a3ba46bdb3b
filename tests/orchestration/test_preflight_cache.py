"""Preflight's cache keeps only answers worth keeping: estimates made because the TensorFlow Lite
Micro library was not cached yet are asked again, so the first preflight after `tinyops
firmware` (or a deploy) warmed it measures the firmware."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, TinyRun


def test_estimates_made_for_a_cold_library_are_asked_again(
    tiny_run: TinyRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from pipeline.core.config import parse_params
    from pipeline.orchestration.preflight import run_preflight
    from pipeline.orchestration.preflight_firmware import COLD_LIBRARY

    ws = Path(shutil.copytree(tiny_run.ws, tmp_path / "ws"))
    monkeypatch.chdir(ws)
    base = tiny_run.params.model_dump(mode="json")  # type: ignore[attr-defined]
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())
    source = str(REPO / shipped["tflm"]["source"])
    tflm = base["tflm"] | {"source": source, "cache_dir": str(tmp_path / "cold")}
    pico = {"raspberry_pi_pico": shipped["devices"]["raspberry_pi_pico"]}
    cold = parse_params(base | {"tflm": tflm, "devices": pico})

    report, hit = run_preflight(cold)
    sizes = report["devices"]["raspberry_pi_pico"]["sizes"]
    if COLD_LIBRARY not in sizes:  # no toolchain or no TensorFlow Lite Micro source here
        if os.environ.get("TINYOPS_REQUIRE_FIRMWARE") == "1":
            pytest.fail(sizes)
        pytest.skip(sizes)
    assert not hit and "tinyops firmware" in sizes
    assert run_preflight(cold)[1] is False, "a cold library's estimates are not cached"

    litert = parse_params(
        base | {"devices": {"raspberry_pi_4": shipped["devices"]["raspberry_pi_4"]}}
    )
    assert run_preflight(litert)[1] is False
    assert run_preflight(litert)[1] is True, "a complete answer is"
