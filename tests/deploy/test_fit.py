"""Fit checks: each names its figure and its budget; the best passing variant wins."""

from __future__ import annotations

import pytest

from pipeline.core.catalog import VariantInfo
from pipeline.core.config import DeployParams, DeviceProfile
from pipeline.deploy.bundle import reserved_arena
from pipeline.deploy.fit import Candidate, assess, choose
from tests.conftest import TinyRun

INT8 = VariantInfo(
    bytes=1000,
    file="x",
    litert_accuracy=0.9,
    macs=1_000_000,
    tflm_accuracy=0.9,
    tflm_arena_bytes=6000,
)


def _mcu(**overrides: object) -> DeviceProfile:
    base = {"runtime": "tflm", "flash_bytes": 1 << 20, "ram_bytes": 1 << 18, "clock_mhz": 100.0}
    return DeviceProfile.model_validate({**base, "cycles_per_mac": 2.0, **overrides})


def _failed(c: Candidate) -> dict[str, str]:
    return {ch.name: ch.reason for ch in c.checks if not ch.passed}


def test_a_fitting_mcu_passes_every_check_with_an_estimated_latency() -> None:
    c = assess("int8", b"\0" * 1000, INT8, _mcu(), DeployParams(), runs_in_tflm=True)
    assert c.fits and _failed(c) == {}
    assert c.latency_ms == 20.0  # 1e6 MACs × 2 cycles / 100 MHz
    assert c.latency_kind.startswith("estimate")
    assert c.ram_bytes == reserved_arena(6000) + DeployParams().runtime_ram_bytes["tflm"]


@pytest.mark.parametrize(
    ("device", "runs", "check", "phrase"),
    [
        (
            {"flash_bytes": 60_000},
            True,
            "flash",
            "model 1,000 B + tflm runtime 65,536 B = 66,536 B > budget 60,000 B",
        ),
        ({"ram_bytes": 10_000}, True, "ram", "> budget 10,000 B"),
        ({}, False, "ops", "does not run in the TFLite Micro interpreter"),
        ({"min_accuracy": 0.95}, True, "accuracy", "int8 accuracy in tflm 0.9 < budget 0.95"),
        ({"max_latency_ms": 10.0}, True, "latency", "latency (estimate) 20 ms > budget 10 ms"),
    ],
)
def test_each_failing_check_names_its_budget(
    device: dict, runs: bool, check: str, phrase: str
) -> None:
    c = assess("int8", b"\0" * 1000, INT8, _mcu(**device), DeployParams(), runs_in_tflm=runs)
    assert not c.fits
    assert set(_failed(c)) == {check}
    assert phrase in _failed(c)[check]


def test_choose_prefers_accuracy_then_size() -> None:
    def cand(variant: str, acc: float, size: int, fits: bool = True) -> Candidate:
        check = assess("int8", b"\0" * size, INT8, _mcu(), DeployParams(), runs_in_tflm=fits)
        return Candidate(variant, size, 1, acc, 1.0, "x", check.checks)

    best = choose(
        [
            cand("a", 0.9, 500),
            cand("b", 0.95, 900),
            cand("c", 0.95, 800),
            cand("d", 0.99, 10, False),
        ]
    )
    assert best is not None and best.variant == "c"
    assert choose([cand("d", 0.99, 10, False)]) is None


@pytest.mark.slow
def test_a_litert_device_measures_host_latency_and_activation_memory(tiny_run: TinyRun) -> None:
    phone = DeviceProfile.model_validate(
        {
            "runtime": "litert",
            "flash_bytes": 1 << 30,
            "ram_bytes": 1 << 30,
            "clock_mhz": 2000.0,
            "cycles_per_mac": 1.0,
            "variants": ["fp32", "int8"],
        }
    )
    figures = VariantInfo(bytes=len(tiny_run.fp32), file="x", litert_accuracy=0.5, macs=1)
    c = assess("fp32", tiny_run.fp32, figures, phone, DeployParams(latency_runs=5))
    assert c.fits and c.latency_kind.startswith("host")
    assert c.ram_bytes > len(tiny_run.fp32) + DeployParams().runtime_ram_bytes["litert"]
