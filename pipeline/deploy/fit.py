"""Fit checks: does a model variant fit a device? Flash, RAM, ops, accuracy, latency; each check
has its figure, its budget and a reason that names the budget. The best fitting variant wins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.core.catalog import VariantInfo
from pipeline.core.config import DeployParams, DeviceProfile
from pipeline.firmware.check import Figures
from pipeline.tflite import litert


@dataclass(frozen=True)
class Firmware:
    """The firmware check of a TFLite Micro candidate: measured figures, the bundle sources they
    were measured on, or why there are none (skipped: estimates stand; error: the check fails)."""

    figures: Figures | None = None
    sources: dict[str, str] | None = None
    skipped: str | None = None
    error: str | None = None


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
    firmware: dict[str, Any] | None = None
    """Measured figures (or why there are none) next to the estimates they replace."""

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
    """What the runtime decides: its flash, RAM and ops checks, accuracy, latency and how it was
    got, and (TFLite Micro) the arena and the firmware record."""

    checks: tuple[Check, ...]
    ram_need: int
    accuracy: float
    latency_ms: float
    latency_kind: str
    arena: int | None
    firmware: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Estimates:
    flash: int
    ram: int
    arena: int
    latency_ms: float
    latency_kind: str


def _tflm_estimates(
    model: bytes, figures: VariantInfo, device: DeviceProfile, deploy: DeployParams
) -> _Estimates:
    """Datasheet-grade figures: the runtime's size from params, the arena Python measured."""
    from pipeline.deploy.bundle import reserved_arena

    arena = figures.tflm_arena_bytes or 0
    flash = len(model) + deploy.runtime_flash_bytes["tflm"]
    ram = reserved_arena(arena) + deploy.runtime_ram_bytes["tflm"]
    macs = figures.macs
    latency = macs * device.cycles_per_mac / (device.clock_mhz * 1e3)
    kind = (
        f"estimate: {macs:,} MACs × {device.cycles_per_mac} cycles/MAC at {device.clock_mhz:g} MHz"
    )
    return _Estimates(flash, ram, arena, latency, kind)


def _estimated_checks(
    model: bytes, est: _Estimates, device: DeviceProfile, deploy: DeployParams
) -> tuple[Check, Check]:
    from pipeline.deploy.bundle import reserved_arena

    runtime_flash, runtime_ram = (
        deploy.runtime_flash_bytes["tflm"],
        deploy.runtime_ram_bytes["tflm"],
    )
    flash = _check(
        "flash",
        est.flash,
        device.flash_bytes,
        "B",
        f"estimate: model {len(model):,} B + tflm runtime {runtime_flash:,} B =",
    )
    ram = _check(
        "ram",
        est.ram,
        device.ram_bytes,
        "B",
        f"estimate: arena {reserved_arena(est.arena):,} B (measured {est.arena:,} in Python + margin) "
        f"+ runtime {runtime_ram:,} B =",
    )
    return flash, ram


def _measured_checks(f: Figures, est: _Estimates, device: DeviceProfile) -> tuple[Check, ...]:
    what = f"{f.core}, {f.kernels}, {f.build_type} build"
    flash = _check(
        "flash",
        f.flash_bytes,
        device.flash_bytes,
        "B",
        f"measured ({what}): ELF .text+.data (estimate {est.flash:,} B) =",
    )
    ram = _check(
        "ram",
        f.ram_bytes,
        device.ram_bytes,
        "B",
        f"measured ({what}): .data+.bss {f.static_ram_bytes:,} B with the {f.arena_bytes:,} B arena "
        f"+ stack peak {f.stack_peak_bytes:,} B (estimate {est.ram:,} B) =",
    )
    same = Check(
        "firmware",
        f.identical,
        float(f.identical),
        1.0,
        "",
        f"{f.samples} test samples on QEMU {f.machine}: int8 outputs byte-identical to Python's "
        "TFLite Micro"
        if f.identical
        else f"outputs differ from Python's TFLite Micro: {f.mismatch}",
    )
    return flash, ram, same


def _ops_check(runs: bool | None) -> Check:
    ok = bool(runs)
    return Check(
        "ops",
        ok,
        float(ok),
        1.0,
        "",
        "every op resolved and ran in the TFLite Micro interpreter"
        if ok
        else "the model does not run in the TFLite Micro interpreter (unsupported op or type)",
    )


def _tflm(
    model: bytes,
    figures: VariantInfo,
    device: DeviceProfile,
    deploy: DeployParams,
    runs: bool | None,
    firmware: Firmware | None,
) -> _Runtime:
    est = _tflm_estimates(model, figures, device, deploy)
    record: dict[str, Any] = {
        "estimated": {
            "flash_bytes": est.flash,
            "ram_bytes": est.ram,
            "latency_ms": round(est.latency_ms, 4),
        }
    }
    f = firmware.figures if firmware else None
    if f is None:
        flash, ram = _estimated_checks(model, est, device, deploy)
        error = firmware.error if firmware else None
        failed = (Check("firmware", False, 0.0, 1.0, "", f"firmware check failed: {error}"),)
        record |= {"skipped": firmware.skipped if firmware else "not run", "error": error}
        return _Runtime(
            (flash, ram, _ops_check(runs), *(failed if error else ())),
            est.ram,
            figures.tflm_accuracy or 0.0,
            est.latency_ms,
            est.latency_kind,
            est.arena,
            record,
        )
    latency = (
        f.instructions_per_inference * device.cycles_per_instruction / (device.clock_mhz * 1e3)
    )
    kind = (
        f"estimate: {f.instructions_per_inference:,} instructions (QEMU) × "
        f"{device.cycles_per_instruction:g} cycles/instruction at {device.clock_mhz:g} MHz"
    )
    flash, ram, same = _measured_checks(f, est, device)
    record["measured"] = f.to_dict()
    return _Runtime(
        (flash, ram, _ops_check(runs), same),
        f.ram_bytes,
        figures.tflm_accuracy or 0.0,
        latency,
        kind,
        f.arena_min_bytes,
        record,
    )


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
    runtime_flash = deploy.runtime_flash_bytes["litert"]
    flash = _check(
        "flash",
        len(model) + runtime_flash,
        device.flash_bytes,
        "B",
        f"model {len(model):,} B + litert runtime {runtime_flash:,} B =",
    )
    latency = litert.measure_host_latency_ms(model, deploy.latency_runs)
    kind = "host: median LiteRT invoke on the build machine, 1 thread"
    return _Runtime((flash, ram, ops), ram_need, figures.litert_accuracy, latency, kind, None)


def assess(
    variant: str,
    model: bytes,
    figures: VariantInfo,
    device: DeviceProfile,
    deploy: DeployParams,
    runs_in_tflm: bool | None = None,
    firmware: Firmware | None = None,
) -> Candidate:
    """Every check of one variant on one device. `figures` is the variant's entry of
    metrics/variants.json; `runs_in_tflm` the result of running it in TFLite Micro; `firmware`
    its firmware check (measured figures replace the estimates)."""
    runtime = device.runtime
    rt = (
        _tflm(model, figures, device, deploy, runs_in_tflm, firmware)
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
    checks = (*rt.checks, accuracy, within)
    return Candidate(
        variant,
        len(model),
        rt.ram_need,
        rt.accuracy,
        latency,
        rt.latency_kind,
        checks,
        rt.arena,
        rt.firmware,
    )


def choose(candidates: list[Candidate]) -> Candidate | None:
    """Highest accuracy, then smallest model, among the variants that pass every check."""
    fitting = [c for c in candidates if c.fits]
    return min(fitting, key=lambda c: (-c.accuracy, c.model_bytes)) if fitting else None
