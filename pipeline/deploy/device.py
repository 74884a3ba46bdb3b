"""Stage `deploy` for one device: assess every variant the device accepts, pick the best that
fits, register its bundle in MLflow, and move `production` (and deploy/<device>/) only when it
is no worse than what the device runs now.

deploy/<device>/ always holds the production bundle. A candidate that fits nowhere leaves a
rejected.json there (beside the production bundle, if one exists); a candidate that fits but is
worse stays in the registry, unpromoted, and the report says why.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import catalog, interrupt
from pipeline.core.catalog import DatasetMeta, DeployStatus, Manifest, VariantInfo, Variants
from pipeline.core.config import DeviceProfile, Params, require_device
from pipeline.core.errors import ArtifactError, DeviceBudgetError
from pipeline.core.provenance import git_commit, sha256_bytes
from pipeline.core.tracking import Run
from pipeline.data.prepare import Splits, load_processed
from pipeline.deploy import champion, mcu, registry
from pipeline.deploy.bundle import (
    MODEL_FILE,
    REJECTED_FILE,
    build_bundle,
    cpp_sources,
    replace_bundle,
    reserved_arena,
    verify_bundle,
)
from pipeline.deploy.champion import Champion
from pipeline.deploy.fit import Candidate, Check, Firmware, assess, choose
from pipeline.models.tasks import task_from
from pipeline.tflite import tflm
from pipeline.tflite.flatbuffer import read_model
from pipeline.tflite.litert import quantize_input


@dataclass(frozen=True)
class DeployContext:
    """Everything one device's deploy reads, built once (`deploy_context`): the helpers below
    take it whole, so none looks a profile or a default path up again."""

    params: Params
    device: str
    run: Run
    export_dir: Path
    target: Path  # deploy/<device>/
    status_file: Path  # metrics/deploy/<device>.json
    data: Splits  # the prepared splits (the test split, meta)
    variants: Variants

    @property
    def profile(self) -> DeviceProfile:
        return self.params.devices[self.device]

    @property
    def meta(self) -> DatasetMeta:
        return self.data.meta

    def model(self, variant: str) -> bytes:
        return catalog.variant_file(variant, self.export_dir).read_bytes()


def deploy_context(
    params: Params,
    device: str,
    run: Run,
    export_dir: Path = catalog.EXPORT_DIR,
    deploy_root: Path = catalog.DEPLOY_ROOT,
    status_dir: Path = catalog.DEPLOY_STATUS_DIR,
    processed_dir: Path = catalog.PROCESSED_DIR,
    variants_file: Path = catalog.VARIANTS_FILE,
) -> DeployContext:
    """The device checked against params, its paths, the prepared data and evaluate's variants."""
    require_device(params, device)
    variants = catalog.read(variants_file, catalog.Variants, "evaluate")
    return DeployContext(
        params, device, run, export_dir, deploy_root / device,
        catalog.deploy_status_file(device, status_dir), load_processed(processed_dir), variants,
    )  # fmt: skip


@dataclass(frozen=True)
class DeployResult:
    device: str
    status: str  # promoted | kept | rejected
    record: DeployStatus


def _io_quantization(model: bytes) -> dict[str, Any]:
    info = read_model(model)
    inp, out = info.tensors[info.inputs[0]], info.tensors[info.outputs[0]]
    return {
        "input_scale": inp.scales[0],
        "input_zero_point": inp.zero_points[0],
        "output_scale": out.scales[0],
        "output_zero_point": out.zero_points[0],
    }


def cpp_info(
    model: bytes,
    variant: str,
    arena: int,
    sample: tuple[list[int], list[str]],
    ops: list[str],
    task: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What the bundle's C++ header and source say of the model (arena: measured, unreserved;
    `sample`: one sample's shape and the data's classes; `task`: what evaluate recorded of the
    variant's task)."""
    shape, classes = sample
    return {
        "ops": ops,
        "input_shape": list(shape),
        "labels": task_from(task)[0].class_names(list(classes)),
        "task": task,
        "arena_measured": arena,
        "arena_bytes": reserved_arena(arena),
        "int8_kernels": variant == "int8",
        "model_sha256": sha256_bytes(model),
        **_io_quantization(model),
    }


def _task(figures: VariantInfo) -> dict[str, Any] | None:
    """What evaluate recorded of a variant's task (older evaluations: none, a classifier)."""
    return getattr(figures, "task", None)


def firmware_check(ctx: DeployContext, variant: str, model: bytes) -> Firmware:
    """Build and run the bundle on the device's core; compare with Python's TFLite Micro."""
    reason = mcu.skip_reason(ctx.params, ctx.device)
    if reason is not None:
        return Firmware(skipped=reason)
    figures: VariantInfo = getattr(ctx.variants, variant)
    x = ctx.data.x["test"][: ctx.params.firmware.samples]
    xq = quantize_input(x, figures.input_scale or 1.0, figures.input_zero_point or 0)
    arena = figures.tflm_arena_bytes or 0
    expected = tflm.predict(model, xq, reserved_arena(arena))
    sample = (ctx.meta.input_shape, ctx.meta.classes)
    info = cpp_info(model, variant, arena, sample, list(figures.ops or []), _task(figures))
    return mcu.prove(ctx.params, ctx.device, model, info, xq, expected)


def assess_device(ctx: DeployContext) -> tuple[list[Candidate], dict[str, Firmware]]:
    """Every check of every variant the device accepts, and each TFLite Micro variant's firmware
    check (its sources are what the bundle ships)."""
    profile = ctx.profile
    candidates, proofs = [], {}
    for variant in profile.variants:
        figures: VariantInfo | None = getattr(ctx.variants, variant)
        if figures is None:
            candidates.append(not_exported(variant))
            continue
        model = ctx.model(variant)
        runs = firmware = None
        if profile.runtime == "tflm":
            runs = tflm.runs_with_arena(model, reserved_arena(figures.tflm_arena_bytes or 0))
            if runs:
                firmware = proofs[variant] = firmware_check(ctx, variant, model)
        candidates.append(
            assess(variant, model, figures, profile, ctx.params.deploy, runs, firmware)
        )
    return candidates, proofs


def not_exported(variant: str) -> Candidate:
    """A variant the device accepts but export did not make (a model trained elsewhere, model.arch
    tflite, is int8 alone): a candidate that fails, saying so."""
    reason = (
        f"{variant} was not exported: a model trained elsewhere (model.arch tflite) is int8 only"
    )
    return Candidate(variant, 0, 0, 0.0, 0.0, "none", (Check("exported", False, 0, 1, "", reason),))


def _mac_estimate(chosen: Candidate) -> float:
    """The MAC-based latency estimate, kept beside the instruction-based one when measured."""
    return float((chosen.firmware or {}).get("estimated", {}).get("latency_ms", chosen.latency_ms))


def manifest_for(ctx: DeployContext, chosen: Candidate, model: bytes) -> Manifest:
    profile, meta, variants = ctx.profile, ctx.meta, ctx.variants
    task_info = _task(getattr(variants, chosen.variant))
    fields: dict[str, Any] = {
        "device": ctx.device,
        "description": profile.description,
        "runtime": profile.runtime,
        "variant": chosen.variant,
        "model_file": MODEL_FILE,
        "model_sha256": sha256_bytes(model),
        "model_bytes": len(model),
        "accuracy": chosen.accuracy,
        "latency_ms": chosen.latency_ms,
        "latency_kind": chosen.latency_kind,
        "estimated_latency_ms": _mac_estimate(chosen) if profile.runtime == "tflm" else None,
        "checks": chosen.to_dict()["checks"],
        "labels": task_from(task_info)[0].class_names(list(meta.classes)),
        "task": task_info,
        "input_shape": meta.input_shape,
        "layout": meta.layout[1:],  # HWC or TC, the batch left out
        "channels": meta.channels,
        "normalization": getattr(variants.int8, "normalization", None)
        or {k: meta.normalization[k] for k in ("mean", "std")},  # the model's own, else prepare's
        "mlflow_run_id": ctx.run.run_id,
        "git_commit": git_commit(),
        "data_sha256": meta.data_sha256,
    }
    if profile.runtime == "tflm":
        fields |= {
            "arena_bytes": reserved_arena(int(chosen.arena_measured or 0)),
            "arena_measured_bytes": chosen.arena_measured,
            # Python's TFLite Micro (64-bit pointers) needs more than the MCU: host runs use this
            "arena_host_bytes": reserved_arena(int(variants.int8.tflm_arena_bytes or 0)),
            "ops": variants.int8.ops,
            "cpu": profile.cpu,
            "kernels": profile.kernels,
            "firmware": chosen.firmware,
            **_io_quantization(model),
        }
    return Manifest.model_validate(fields)


def _keep_production(ctx: DeployContext) -> Manifest | None:
    """Make sure deploy/<device>/ holds the production bundle (restoring it when missing or
    altered); returns its manifest, or None when the device has no production version."""
    current = registry.production(ctx.run.client, ctx.device)
    if current is None:
        return None
    try:
        manifest = verify_bundle(ctx.target)
        if manifest.model_sha256 == current.tags.get("model_sha256"):
            if (ctx.target / REJECTED_FILE).exists():  # from an earlier candidate: stale now
                replace_bundle(ctx.target, ctx.target)
            return manifest
    except (ArtifactError, OSError, ValueError, KeyError):
        pass
    return registry.restore(ctx.run.client, current, ctx.target)


def reject(ctx: DeployContext, candidates: list[Candidate]) -> DeployStatus:
    """No variant fits: write rejected.json beside the production bundle (kept as it is)."""
    failed = [
        f"{c.variant}: {ch.name}: {ch.reason}"
        for c in candidates
        for ch in c.checks
        if not ch.passed
    ]
    listed = [c.to_dict() for c in candidates]
    rejection = {
        "device": ctx.device,
        "reason": "no variant passes every check",
        "failed_checks": failed,
        "candidates": listed,
        "mlflow_run_id": ctx.run.run_id,
    }
    prod = _keep_production(ctx)
    replace_bundle(ctx.target if prod is not None else None, ctx.target, {REJECTED_FILE: rejection})
    current = registry.production(ctx.run.client, ctx.device)
    ctx.run.set_tags({"device": ctx.device, "deploy.status": "rejected"})
    if ctx.params.deploy.require_all:
        raise DeviceBudgetError(
            f"device '{ctx.device}': no variant fits ({'; '.join(failed)}). "
            "deploy.require_all is set."
        )
    return DeployStatus(
        device=ctx.device,
        runtime=ctx.profile.runtime,
        candidates=listed,
        status="rejected",
        reason="; ".join(failed),
        production_version=int(current.version) if current else None,
    )


def build_and_verify(
    ctx: DeployContext, chosen: Candidate, staged: Path, firmware: Firmware | None = None
) -> tuple[bytes, Manifest]:
    """The bundle in `staged`, verified, then logged to the stage's MLflow run. A TFLite Micro
    bundle ships the very sources its firmware check built and ran."""
    model = ctx.model(chosen.variant)
    manifest = manifest_for(ctx, chosen, model)
    cpp = firmware.sources if firmware else None
    if cpp is None and ctx.profile.runtime == "tflm":
        arena = int(chosen.arena_measured or 0)
        sample = (ctx.meta.input_shape, ctx.meta.classes)
        info = cpp_info(model, chosen.variant, arena, sample, manifest.ops or [], manifest.task)
        cpp = cpp_sources(model, info, ctx.device, manifest.model_sha256)
    manifest = build_bundle(staged, model, manifest, cpp)
    verify_bundle(staged)  # what gets registered and promoted is exactly what was built
    ctx.run.client.log_artifacts(ctx.run.run_id, str(staged), "bundle")
    return model, manifest


def face_champion(
    ctx: DeployContext, manifest: Manifest, staged: Path
) -> tuple[Champion | None, champion.HeldOut | None, dict[str, str]]:
    """Production scored on the current test split beside the challenger (and the challenger on
    production's own split, where that differs), and what the new version records of the match.
    The current split is kept with this run, for the next challenger."""
    x, y = ctx.data.x["test"], ctx.data.y["test"]
    model = (staged / manifest.model_file).read_bytes()
    challenger = champion.signature(model, list(manifest.labels))
    client = ctx.run.client
    champ = champion.assess_production(client, ctx.device, challenger, x, y, ctx.meta)
    facts = {"test_split_sha256": champion.split_sha256(x, y)}
    champion.keep_split(client, ctx.run.run_id, x, y, ctx.meta.normalization)
    held = None
    if champ is not None:
        facts |= {"champion_version": champ.version, "champion_lineage": champ.lineage or "same"}
        if champ.accuracy is not None:
            facts["champion_accuracy"] = f"{champ.accuracy:.6f}"
            held = champion.on_production_split(
                client, ctx.device, model, manifest, facts["test_split_sha256"]
            )
    if held is not None:
        facts |= {"held_out_accuracy": f"{held.accuracy:.6f}", "held_out_split": held.sha256}
    return champ, held, facts


def register_and_promote(
    ctx: DeployContext, chosen: Candidate, manifest: Manifest, staged: Path
) -> tuple[str, champion.Decision, dict[str, str]]:
    """Register the bundle; move `production` and deploy/<device>/ together only when the
    candidate is no worse than production on the same test split."""
    champ, held, facts = face_champion(ctx, manifest, staged)
    # The manifest's scalar fields, as the version's tags (lists stay in manifest.json).
    scalars = {k: v for k, v in manifest.dump().items() if isinstance(v, str | int | float)}
    tags = {k: str(v) for k, v in scalars.items()} | facts
    deploy = ctx.params.deploy
    decision = champion.decide(
        chosen.accuracy, champ, deploy.promotion_tolerance, deploy.new_lineage, held
    )
    description = champion.describe(manifest, decision)
    client = ctx.run.client
    version = registry.register(client, ctx.device, ctx.run.run_id, tags, description)
    if decision.promote:
        judged = champ.version if champ else None
        with registry.promotion_lock(client, ctx.device):  # compare and set: no lost update
            registry.require_unmoved(client, ctx.device, version.version, judged)
            with interrupt.deferred():  # the alias and the bundle move together, or neither
                registry.promote(client, ctx.device, version.version)
                replace_bundle(staged, ctx.target)
    else:
        _keep_production(ctx)
    return version.version, decision, facts


def deploy_device(ctx: DeployContext) -> DeployResult:
    """Choose the best fitting variant; reject, or bundle, register and maybe promote it."""
    interrupt.import_modules(
        "ai_edge_litert.interpreter", "tflite_micro.python.tflite_micro.runtime"
    )
    candidates, proofs = assess_device(ctx)
    chosen = choose(candidates)
    if chosen is None:
        record = reject(ctx, candidates)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            model, manifest = build_and_verify(ctx, chosen, Path(tmp), proofs.get(chosen.variant))
            version, decision, facts = register_and_promote(ctx, chosen, manifest, Path(tmp))
        record = _promoted_record(ctx, candidates, chosen, model, manifest)
        record = DeployStatus.model_validate(  # validated: versions come as text
            record.model_dump() | _decision_fields(version, decision, facts)
        )
        _log_decision(ctx.run, ctx.device, record, manifest)
        _link_logged_model(ctx.run, ctx.device, record)
    catalog.write(ctx.status_file, record)
    return DeployResult(ctx.device, record.status, record)


def _decision_fields(
    version: str, decision: champion.Decision, facts: dict[str, str]
) -> dict[str, Any]:
    champion_accuracy = facts.get("champion_accuracy")
    return {
        "status": "promoted" if decision.promote else "kept",
        "reason": decision.reason,
        "version": int(version),
        "production_version": int(version) if decision.promote else decision.previous_version,
        "test_split_sha256": facts["test_split_sha256"],
        "champion_version": facts.get("champion_version"),
        "champion_accuracy": float(champion_accuracy) if champion_accuracy else None,
    }


def _promoted_record(
    ctx: DeployContext,
    candidates: list[Candidate],
    chosen: Candidate,
    model: bytes,
    manifest: Manifest,
) -> DeployStatus:
    return DeployStatus(
        device=ctx.device,
        runtime=ctx.profile.runtime,
        candidates=[c.to_dict() for c in candidates],
        status="registered",
        variant=chosen.variant,
        model_bytes=len(model),
        arena_bytes=manifest.arena_bytes,
        accuracy=chosen.accuracy,
        latency_ms=chosen.latency_ms,
    )


def _link_logged_model(run: Run, device: str, record: DeployStatus) -> None:
    """The deploy run consumed the exported model, and the model names the bundle made of it
    (when the export stage logged one for this very model.pt)."""
    from mlflow.entities import LoggedModelInput

    model_id = catalog.logged_model_id()
    if model_id is None:
        return
    run.client.log_inputs(run.run_id, models=[LoggedModelInput(model_id)])
    tag = f"v{record.version} ({record.variant}, {record.status})"
    run.client.set_logged_model_tags(model_id, {f"bundle.{device}": tag})


def _log_decision(run: Run, device: str, record: DeployStatus, manifest: Manifest) -> None:
    run.set_tags({"device": device, "deploy.status": record.status, "deploy.reason": record.reason})
    run.log_metrics(
        {
            "accuracy": record.accuracy or 0.0,
            "model_bytes": record.model_bytes or 0,
            "latency_ms": record.latency_ms or 0.0,
            **({"arena_bytes": manifest.arena_bytes} if manifest.arena_bytes is not None else {}),
            **_firmware_metrics(manifest),
        }
    )


def _firmware_metrics(manifest: Manifest) -> dict[str, float]:
    """The measured firmware figures, as the deploy run's metrics (none when estimated)."""
    measured = (manifest.firmware or {}).get("measured") or {}
    keys = (
        "flash_bytes",
        "ram_bytes",
        "arena_min_bytes",
        "stack_peak_bytes",
        "instructions_per_inference",
    )
    return {f"firmware_{k}": float(measured[k]) for k in keys if k in measured}
