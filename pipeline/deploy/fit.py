"""Fit checks: does a model variant fit a device? Flash, RAM, ops, accuracy, latency; each check
has its figure, its budget and a reason that names the budget. The best fitting variant wins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.core.catalog import VariantInfo
from pipeline.core.config import DeployParams, DeviceProfile
from pipeline.tflite import litert


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    value: float
    budget: float
    unit: str
    reason: str


@dataclass(frozen=True)
class Candidate:
    variant: str
    model_bytes: int
    ram_bytes: int
    accuracy: float
    latency_ms: float
    latency_kind: str
    checks: tuple[Check, ...] = field(default_factory=tuple)
    arena_measured: int | None = None

    @property
    def fits(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["checks"] = [asdict(c) for c in self.checks]
        d["fits"] = self.fits
        return d


def activation_bytes(model: bytes) -> int:
    """Upper bound of LiteRT's tensor memory: every non-constant tensor, no reuse."""
    from pipeline.tflite.flatbuffer import read_model

    sizes = {"FLOAT32": 4, "INT32": 4, "FLOAT16": 2, "INT8": 1, "UINT8": 1, "INT64": 8, "INT16": 2}
    total = 0
    for t in read_model(model).tensors:
        if not t.is_constant:
            n = 1
            for d in t.shape:
                n *= max(d, 1)
            total += n * sizes.get(t.dtype, 4)
    return total


def _fmt(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}" if unit == "B" else f"{value:.4g}{' ' + unit if unit else ''}"


def _check(
    name: str, value: float, budget: float, unit: str, what: str, higher_ok: bool = False
) -> Check:
    passed = value >= budget if higher_ok else value <= budget
    relation = (">=" if passed else "<") if higher_ok else ("<=" if passed else ">")
    reason = f"{what} {_fmt(value, unit)} {relation} budget {_fmt(budget, unit)}"
    return Check(name, passed, value, budget, unit, reason)


@dataclass(frozen=True)
class _Runtime:
    """What the runtime decides: its RAM and ops checks, accuracy, latency and how it was got."""

    checks: tuple[Check, ...]
    ram_need: int
    accuracy: float
    latency_ms: float
    latency_kind: str
    arena: int | None


def _tflm(
    figures: VariantInfo, device: DeviceProfile, deploy: DeployParams, runs: bool | None
) -> _Runtime:
    from pipeline.deploy.bundle import reserved_arena

    arena = figures.tflm_arena_bytes or 0
    runtime_ram = deploy.runtime_ram_bytes["tflm"]
    ram_need = reserved_arena(arena) + runtime_ram
    ram = _check(
        "ram",
        ram_need,
        device.ram_bytes,
        "B",
        f"arena {reserved_arena(arena):,} B (measured {arena:,} + margin) + runtime "
        f"{runtime_ram:,} B =",
    )
    ok = bool(runs)
    ops = Check(
        "ops",
        ok,
        float(ok),
        1.0,
        "",
        "every op resolved and ran in the TFLite Micro interpreter"
        if ok
        else "the model does not run in the TFLite Micro interpreter (unsupported op or type)",
    )
    macs = figures.macs
    latency = macs * device.cycles_per_mac / (device.clock_mhz * 1e3)
    kind = (
        f"estimate: {macs:,} MACs × {device.cycles_per_mac} cycles/MAC at {device.clock_mhz:g} MHz"
    )
    return _Runtime((ram, ops), ram_need, figures.tflm_accuracy or 0.0, latency, kind, arena)


def _litert(
    model: bytes, figures: VariantInfo, device: DeviceProfile, deploy: DeployParams
) -> _Runtime:
    ram_need = len(model) + activation_bytes(model) + deploy.runtime_ram_bytes["litert"]
    ram = _check(
        "ram",
        ram_need,
        device.ram_bytes,
        "B",
        "model + activations (upper bound) + LiteRT runtime =",
    )
    ops = Check("ops", True, 1.0, 1.0, "", "every op ran in LiteRT (ai_edge_litert) on the host")
    latency = litert.measure_host_latency_ms(model, deploy.latency_runs)
    kind = "host: median LiteRT invoke on the build machine, 1 thread"
    return _Runtime((ram, ops), ram_need, figures.litert_accuracy, latency, kind, None)


def assess(
    variant: str,
    model: bytes,
    figures: VariantInfo,
    device: DeviceProfile,
    deploy: DeployParams,
    runs_in_tflm: bool | None = None,
) -> Candidate:
    """Every check of one variant on one device. `figures` is the variant's entry of
    metrics/variants.json; `runs_in_tflm` the result of running it in TFLite Micro."""
    runtime = device.runtime
    runtime_flash = deploy.runtime_flash_bytes[runtime]
    flash = _check(
        "flash",
        len(model) + runtime_flash,
        device.flash_bytes,
        "B",
        f"model {len(model):,} B + {runtime} runtime {runtime_flash:,} B =",
    )
    rt = (
        _tflm(figures, device, deploy, runs_in_tflm)
        if runtime == "tflm"
        else _litert(model, figures, device, deploy)
    )
    latency = round(rt.latency_ms, 4)
    accuracy = _check(
        "accuracy",
        rt.accuracy,
        device.min_accuracy,
        "",
        f"{variant} accuracy in {runtime}",
        higher_ok=True,
    )
    within = _check(
        "latency",
        latency,
        device.max_latency_ms,
        "ms",
        f"latency ({rt.latency_kind.split(':')[0]})",
    )
    checks = (flash, *rt.checks, accuracy, within)
    return Candidate(
        variant, len(model), rt.ram_need, rt.accuracy, latency, rt.latency_kind, checks, rt.arena
    )


def choose(candidates: list[Candidate]) -> Candidate | None:
    """Highest accuracy, then smallest model, among the variants that pass every check."""
    fitting = [c for c in candidates if c.fits]
    return min(fitting, key=lambda c: (-c.accuracy, c.model_bytes)) if fitting else None
