"""The bench's own logic: interleaving with a warm-up round, and the PASS/FAIL summary."""

from __future__ import annotations

from pipeline.bench.harness import interleave, summary
from pipeline.bench.runner import SECTIONS, listing
from pipeline.bench.sections.overhead import FLOW_SERVER
from pipeline.bench.sections.throughput import TARGET_DDP


def targets(results: dict) -> list[dict]:
    return [t for s in SECTIONS.values() if s.in_full_run for t in s.targets(results)]


def test_runs_interleave_and_the_warm_up_is_not_counted() -> None:
    calls: list[str] = []
    values = iter(range(100))

    def make(name: str):  # type: ignore[no-untyped-def]
        return lambda: (calls.append(name), float(next(values)))[1]

    samples = interleave({"a": make("a"), "b": make("b")}, rounds=3, on_progress=lambda s: None)
    assert calls == ["a", "b"] * 4
    assert samples == {"a": [2.0, 4.0, 6.0], "b": [3.0, 5.0, 7.0]}, "round 0 is the warm-up"
    assert summary([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}


def _results(ddp: float, share: float, flow: float = 30.0) -> dict:
    t = {"median": 1.0, "min": 1.0, "max": 1.0}
    return {
        "machine": {"cores": 2},
        "throughput": {
            "default": {
                "1 proc × 1 thread": {"median": 100.0},
                "1 proc × 2 threads": {"median": 150.0},
                TARGET_DDP: {"median": ddp},
            }
        },
        "quantization": {
            "accuracy": {
                "framework_fp32_accuracy": 0.99,
                "tflite_fp32_accuracy": 0.99,
                "tflite_int8_accuracy": 0.985,
                "tflm_int8_accuracy": 0.97,
            },
            "int8_fp32_agreement": 0.99,
            "max_logit_diff": 1e-6,
            "arena_bytes": {"int8": 1000, "fp32": 4000},
            "bundled_arena_over_need": {"mcu": 1.1},
        },
        "resnet8_export": {
            "bytes": {"fp32": 400, "int8": 100},
            "arena_bytes": {"fp32": 2900, "int8": 1000},
        },
        "latency_ms": {"int8": {"median": 1.0}, "fp32": {"median": 1.0}},
        "overhead": {
            "tinyops --help (s)": t,
            "dvc repro, nothing changed (s)": t,
            "tinyops run, nothing new (s)": t,
            "plain stages, one process (s)": {"median": 20.0},
            FLOW_SERVER: {"median": flow},
            "MLflow logging / training time": {"median": share},
        },
    }


def test_targets_pass_and_fail_on_the_numbers() -> None:
    status = {t["target"]: t["status"] for t in targets(_results(ddp=140.0, share=0.01))}
    assert status["default: DDP 2×1 ÷ 1×1 ≥ 1.3"] == "PASS"
    assert status["default: DDP 2×1 ÷ 1×2 ≥ 0.85"] == "PASS"
    assert status["MLflow logging ≤ 2% of training"] == "PASS"
    assert status["int8 within 1.0 point of fp32 at every level (points)"] == "FAIL"  # tflm -2
    assert status["resnet8: fp32 ÷ int8 .tflite ≥ 3.0"] == "PASS"
    assert status["resnet8: fp32 ÷ int8 arena ≥ 3.0"] == "FAIL"  # 2.9
    flow = "Prefect flow (running server) ÷ plain stages ≤ 1.2"
    assert status[flow] == "FAIL", "30 s against 20 s is 1.5: no escape clause"
    status = {t["target"]: t["status"] for t in targets(_results(ddp=120.0, share=0.03, flow=24))}
    assert status[flow] == "PASS"
    assert status["default: DDP 2×1 ÷ 1×1 ≥ 1.3"] == "FAIL"
    assert status["MLflow logging ≤ 2% of training"] == "FAIL"


def test_every_section_is_listed_with_its_duration() -> None:
    text = listing()
    for name in SECTIONS:
        assert name in text
    assert "min" in text and "(--only)" in text  # families runs only when asked
