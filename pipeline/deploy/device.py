"""Stage `deploy` for one device: assess every variant the device accepts, pick the best that
fits, register its bundle in MLflow, and move `production` (and deploy/<device>/) only when it
is no worse than what the device runs now.

deploy/<device>/ always holds the production bundle. A candidate that fits nowhere leaves a
rejected.json there (beside the production bundle, if one exists); a candidate that fits but is
worse stays in the registry, unpromoted, and the report says why.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import atomic, catalog, interrupt
from pipeline.core.catalog import DatasetMeta, DeployStatus, VariantInfo, Variants
from pipeline.core.config import Params, require_device
from pipeline.core.errors import ArtifactError, DeviceBudgetError
from pipeline.core.provenance import git_commit, sha256_bytes
from pipeline.core.tracking import Run
from pipeline.data.prepare import load_meta, load_processed
from pipeline.deploy import champion, mcu, registry
from pipeline.deploy.bundle import (
    MANIFEST_FILE,
    MODEL_FILE,
    REJECTED_FILE,
    build_bundle,
    cpp_sources,
    reserved_arena,
    verify_bundle,
)
from pipeline.deploy.champion import Champion
from pipeline.deploy.fit import Candidate, Firmware, assess, choose
from pipeline.models.tasks import task_from
from pipeline.tflite import tflm
from pipeline.tflite.flatbuffer import read_model
from pipeline.tflite.litert import quantize_input


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
    meta: DatasetMeta,
    ops: list[str],
    task: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What the bundle's C++ header and source say of the model (arena: measured, unreserved;
    `task`: what evaluate recorded of the variant's task)."""
    return {
        "ops": ops,
        "input_shape": meta.input_shape,
        "labels": task_from(task)[0].class_names(list(meta.classes)),
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


def firmware_check(
    params: Params, device: str, variant: str, model: bytes, figures: VariantInfo, meta: DatasetMeta
) -> Firmware:
    """Build and run the bundle on the device's core; compare with Python's TFLite Micro."""
    reason = mcu.skip_reason(params, device)
    if reason is not None:
        return Firmware(skipped=reason)
    x = load_processed().x["test"][: params.firmware.samples]
    xq = quantize_input(x, figures.input_scale or 1.0, figures.input_zero_point or 0)
    arena = figures.tflm_arena_bytes or 0
    expected = tflm.predict(model, xq, reserved_arena(arena))
    info = cpp_info(model, variant, arena, meta, list(figures.ops or []), _task(figures))
    return mcu.prove(params, device, model, info, xq, expected)


def assess_device(
    params: Params, device: str, variants: Variants, export_dir: Path
) -> tuple[list[Candidate], dict[str, Firmware]]:
    """Every check of every variant the device accepts, and each TFLite Micro variant's firmware
    check (its sources are what the bundle ships)."""
    profile = params.devices[device]
    candidates, proofs = [], {}
    for variant in profile.variants:
        model = catalog.variant_file(variant, export_dir).read_bytes()
        figures: VariantInfo = getattr(variants, variant)
        runs = firmware = None
        if profile.runtime == "tflm":
            runs = tflm.runs_with_arena(model, reserved_arena(figures.tflm_arena_bytes or 0))
            if runs:
                firmware = proofs[variant] = firmware_check(
                    params, device, variant, model, figures, load_meta()
                )
        candidates.append(assess(variant, model, figures, profile, params.deploy, runs, firmware))
    return candidates, proofs


def _mac_estimate(chosen: Candidate) -> float:
    """The MAC-based latency estimate, kept beside the instruction-based one when measured."""
    return float((chosen.firmware or {}).get("estimated", {}).get("latency_ms", chosen.latency_ms))


def manifest_for(
    params: Params,
    device: str,
    chosen: Candidate,
    model: bytes,
    meta: DatasetMeta,
    variants: Variants,
    run_id: str,
) -> dict[str, Any]:
    profile = params.devices[device]
    task_info = _task(getattr(variants, chosen.variant))
    manifest: dict[str, Any] = {
        "device": device,
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
        "normalization": {k: meta.normalization[k] for k in ("mean", "std")},
        "mlflow_run_id": run_id,
        "git_commit": git_commit(),
        "data_sha256": meta.data_sha256,
    }
    if profile.runtime == "tflm":
        manifest |= {
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
    return manifest


def _keep_production(client: Any, device: str, target: Path) -> dict[str, Any] | None:
    """Make sure deploy/<device>/ holds the production bundle (restoring it when missing or
    altered); returns its manifest, or None when the device has no production version."""
    current = registry.production(client, device)
    if current is None:
        return None
    try:
        manifest = verify_bundle(target)
        if manifest.get("model_sha256") == current.tags.get("model_sha256"):
            if (target / REJECTED_FILE).exists():  # from an earlier candidate: stale now
                with atomic.atomic_dir(target) as staged:
                    for f in sorted(target.iterdir()):
                        if f.name != REJECTED_FILE:
                            shutil.copy2(f, staged / f.name)
            return manifest
    except (ArtifactError, OSError, ValueError, KeyError):
        pass
    return registry.restore(client, current, target)


def reject(
    params: Params, device: str, candidates: list[Candidate], run: Run, target: Path
) -> DeployStatus:
    """No variant fits: write rejected.json beside the production bundle (kept as it is)."""
    failed = [
        f"{c.variant}: {ch.name}: {ch.reason}"
        for c in candidates
        for ch in c.checks
        if not ch.passed
    ]
    listed = [c.to_dict() for c in candidates]
    rejection = {
        "device": device,
        "reason": "no variant passes every check",
        "failed_checks": failed,
        "candidates": listed,
        "mlflow_run_id": run.run_id,
    }
    prod = _keep_production(run.client, device, target)
    with atomic.atomic_dir(target) as staged:
        if prod is not None:
            for f in sorted(target.iterdir()):
                if f.name != REJECTED_FILE:
                    shutil.copy2(f, staged / f.name)
        atomic.write_json(staged / REJECTED_FILE, rejection)
    current = registry.production(run.client, device)
    run.set_tags({"device": device, "deploy.status": "rejected"})
    if params.deploy.require_all:
        raise DeviceBudgetError(
            f"device '{device}': no variant fits ({'; '.join(failed)}). deploy.require_all is set."
        )
    return DeployStatus(
        device=device,
        runtime=params.devices[device].runtime,
        candidates=listed,
        status="rejected",
        reason="; ".join(failed),
        production_version=int(current.version) if current else None,
    )


def build_and_verify(
    params: Params,
    device: str,
    chosen: Candidate,
    variants: Variants,
    run: Run,
    staged: Path,
    export_dir: Path,
    firmware: Firmware | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """The bundle in `staged`, verified, then logged to the stage's MLflow run. A TFLite Micro
    bundle ships the very sources its firmware check built and ran."""
    model = catalog.variant_file(chosen.variant, export_dir).read_bytes()
    meta = load_meta()
    manifest = manifest_for(params, device, chosen, model, meta, variants, run.run_id)
    cpp = firmware.sources if firmware else None
    if cpp is None and params.devices[device].runtime == "tflm":
        info = cpp_info(
            model,
            chosen.variant,
            int(chosen.arena_measured or 0),
            meta,
            manifest["ops"],
            manifest["task"],
        )
        cpp = cpp_sources(model, info, device, manifest["model_sha256"])
    manifest = build_bundle(staged, model, manifest, cpp)
    verify_bundle(staged)  # what gets registered and promoted is exactly what was built
    run.client.log_artifacts(run.run_id, str(staged), "bundle")
    return model, manifest


def face_champion(run: Run, device: str, staged: Path) -> tuple[Champion | None, dict[str, str]]:
    """Production scored on the current test split beside the challenger, and what the new
    version records of the match."""
    manifest = json.loads((staged / MANIFEST_FILE).read_text())
    data = load_processed()
    x, y = data.x["test"], data.y["test"]
    model = (staged / manifest["model_file"]).read_bytes()
    challenger = champion.signature(model, list(manifest["labels"]))
    champ = champion.assess_production(run.client, device, challenger, x, y, data.meta)
    facts = {"test_split_sha256": champion.split_sha256(x, y)}
    if champ is not None:
        facts |= {"champion_version": champ.version, "champion_lineage": champ.lineage or "same"}
        if champ.accuracy is not None:
            facts["champion_accuracy"] = f"{champ.accuracy:.6f}"
    return champ, facts


def register_and_promote(
    params: Params, device: str, chosen: Candidate, run: Run, staged: Path, target: Path
) -> tuple[str, champion.Decision, dict[str, str]]:
    """Register the bundle; move `production` and deploy/<device>/ together only when the
    candidate is no worse than production on the same test split."""
    manifest = json.loads((staged / MANIFEST_FILE).read_text())
    champ, facts = face_champion(run, device, staged)
    # The manifest's scalar fields, as the version's tags (lists stay in manifest.json).
    tags = {k: str(v) for k, v in manifest.items() if isinstance(v, str | int | float)} | facts
    decision = champion.decide(
        chosen.accuracy, champ, params.deploy.promotion_tolerance, params.deploy.new_lineage
    )
    description = champion.describe(manifest, decision)
    version = registry.register(run.client, device, run.run_id, tags, description)
    if decision.promote:
        with interrupt.deferred():  # the alias and the bundle move together, or neither
            registry.promote(run.client, device, version.version)
            with atomic.atomic_dir(target) as swap:
                for f in sorted(staged.iterdir()):
                    shutil.copy2(f, swap / f.name)
    else:
        _keep_production(run.client, device, target)
    return version.version, decision, facts


def deploy_device(
    params: Params,
    device: str,
    run: Run,
    export_dir: Path = catalog.EXPORT_DIR,
    deploy_root: Path = catalog.DEPLOY_ROOT,
    status_dir: Path = catalog.DEPLOY_STATUS_DIR,
) -> DeployResult:
    """Choose the best fitting variant; reject, or bundle, register and maybe promote it."""
    require_device(params, device)
    interrupt.import_modules(
        "ai_edge_litert.interpreter", "tflite_micro.python.tflite_micro.runtime"
    )
    variants = catalog.read(catalog.VARIANTS_FILE, catalog.Variants, "evaluate")
    candidates, proofs = assess_device(params, device, variants, export_dir)
    chosen = choose(candidates)
    target = deploy_root / device
    if chosen is None:
        record = reject(params, device, candidates, run, target)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            model, manifest = build_and_verify(
                params,
                device,
                chosen,
                variants,
                run,
                Path(tmp),
                export_dir,
                proofs.get(chosen.variant),
            )
            version, decision, facts = register_and_promote(
                params, device, chosen, run, Path(tmp), target
            )
        record = _promoted_record(params, device, candidates, chosen, model, manifest)
        record = DeployStatus.model_validate(  # validated: versions come as text
            record.model_dump() | _decision_fields(version, decision, facts)
        )
        _log_decision(run, device, record, manifest)
        _link_logged_model(run, device, record)
    catalog.write(catalog.deploy_status_file(device, status_dir), record)
    return DeployResult(device, record.status, record)


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
    params: Params,
    device: str,
    candidates: list[Candidate],
    chosen: Candidate,
    model: bytes,
    manifest: dict[str, Any],
) -> DeployStatus:
    return DeployStatus(
        device=device,
        runtime=params.devices[device].runtime,
        candidates=[c.to_dict() for c in candidates],
        status="registered",
        variant=chosen.variant,
        model_bytes=len(model),
        arena_bytes=manifest.get("arena_bytes"),
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


def _log_decision(run: Run, device: str, record: DeployStatus, manifest: dict[str, Any]) -> None:
    run.set_tags({"device": device, "deploy.status": record.status, "deploy.reason": record.reason})
    run.log_metrics(
        {
            "accuracy": record.accuracy or 0.0,
            "model_bytes": record.model_bytes or 0,
            "latency_ms": record.latency_ms or 0.0,
            **({"arena_bytes": manifest["arena_bytes"]} if "arena_bytes" in manifest else {}),
            **_firmware_metrics(manifest),
        }
    )


def _firmware_metrics(manifest: dict[str, Any]) -> dict[str, float]:
    """The measured firmware figures, as the deploy run's metrics (none when estimated)."""
    measured = (manifest.get("firmware") or {}).get("measured") or {}
    keys = (
        "flash_bytes",
        "ram_bytes",
        "arena_min_bytes",
        "stack_peak_bytes",
        "instructions_per_inference",
    )
    return {f"firmware_{k}": float(measured[k]) for k in keys if k in measured}
