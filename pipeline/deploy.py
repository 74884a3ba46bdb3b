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

from pipeline import atomic, interrupt, registry, tflm
from pipeline.bundle import (
    MODEL_FILE,
    REJECTED_FILE,
    build_bundle,
    cpp_sources,
    reserved_arena,
    verify_bundle,
)
from pipeline.config import Params, require_device
from pipeline.errors import ArtifactError, TinyopsError
from pipeline.export import EXPORT_DIR, variant_file
from pipeline.fit import Candidate, assess, choose
from pipeline.provenance import git_commit, sha256_bytes
from pipeline.tflite_inspect import read_model
from pipeline.tracking import Run

DEPLOY_ROOT = Path("deploy")
STATUS_DIR = Path("metrics/deploy")


class DeviceBudgetError(TinyopsError):
    """No variant fits a device and deploy.require_all is set."""

    exit_code = 10


@dataclass(frozen=True)
class DeployResult:
    device: str
    status: str  # promoted | kept | rejected
    record: dict[str, Any]


def _read_json(path: Path, stage: str) -> dict[str, Any]:
    if not path.is_file():
        raise ArtifactError(f"{path}: missing. Run `tinyops stage {stage}` (or `dvc repro`) first.")
    return json.loads(path.read_text())


def _io_quantization(model: bytes) -> dict[str, Any]:
    info = read_model(model)
    inp, out = info.tensors[info.inputs[0]], info.tensors[info.outputs[0]]
    return {
        "input_scale": inp.scales[0],
        "input_zero_point": inp.zero_points[0],
        "output_scale": out.scales[0],
        "output_zero_point": out.zero_points[0],
    }


def assess_device(params: Params, device: str, variants: dict, export_dir: Path) -> list[Candidate]:
    profile = params.devices[device]
    candidates = []
    for variant in profile.variants:
        model = (export_dir / variant_file(variant)).read_bytes()
        figures = variants[variant]
        runs = None
        if profile.runtime == "tflm":
            runs = tflm.runs_with_arena(model, reserved_arena(int(figures["tflm_arena_bytes"])))
        candidates.append(assess(variant, model, figures, profile, params.deploy, runs))
    return candidates


def manifest_for(
    params: Params,
    device: str,
    chosen: Candidate,
    model: bytes,
    meta: dict,
    variants: dict,
    run_id: str,
) -> dict[str, Any]:
    profile = params.devices[device]
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
        "estimated_latency_ms": chosen.latency_ms if profile.runtime == "tflm" else None,
        "checks": chosen.to_dict()["checks"],
        "labels": meta["classes"],
        "input_shape": meta["input_shape"],
        "normalization": {k: meta["normalization"][k] for k in ("mean", "std")},
        "mlflow_run_id": run_id,
        "git_commit": git_commit(),
        "data_sha256": meta["data_sha256"],
    }
    if profile.runtime == "tflm":
        manifest |= {
            "arena_bytes": reserved_arena(int(chosen.arena_measured or 0)),
            "arena_measured_bytes": chosen.arena_measured,
            "ops": variants["int8"]["ops"],
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


def deploy_device(
    params: Params,
    device: str,
    run: Run,
    export_dir: Path = EXPORT_DIR,
    deploy_root: Path = DEPLOY_ROOT,
    status_dir: Path = STATUS_DIR,
) -> DeployResult:
    require_device(params, device)
    interrupt.import_modules(
        "ai_edge_litert.interpreter", "tflite_micro.python.tflite_micro.runtime"
    )
    profile = params.devices[device]
    variants = _read_json(Path("metrics/variants.json"), "evaluate")
    meta = _read_json(Path("data/processed/meta.json"), "prepare")
    candidates = assess_device(params, device, variants, export_dir)
    chosen = choose(candidates)
    target = deploy_root / device
    client = run.client
    record: dict[str, Any] = {
        "device": device,
        "runtime": profile.runtime,
        "candidates": [c.to_dict() for c in candidates],
    }
    if chosen is None:
        failed = [
            f"{c.variant}: {ch.name}: {ch.reason}"
            for c in candidates
            for ch in c.checks
            if not ch.passed
        ]
        rejection = {
            "device": device,
            "reason": "no variant passes every check",
            "failed_checks": failed,
            "candidates": record["candidates"],
            "mlflow_run_id": run.run_id,
        }
        prod = _keep_production(client, device, target)
        with atomic.atomic_dir(target) as staged:
            if prod is not None:
                for f in sorted(target.iterdir()):
                    if f.name != REJECTED_FILE:
                        shutil.copy2(f, staged / f.name)
            atomic.write_json(staged / REJECTED_FILE, rejection)
        current = registry.production(client, device)
        record |= {
            "status": "rejected",
            "reason": "; ".join(failed),
            "production_version": current.version if current else None,
        }
        atomic.write_json(status_dir / f"{device}.json", record)
        run.set_tags({"device": device, "deploy.status": "rejected"})
        if params.deploy.require_all:
            raise DeviceBudgetError(
                f"device '{device}': no variant fits ({'; '.join(failed)}). deploy.require_all is set."
            )
        return DeployResult(device, "rejected", record)

    model = (export_dir / variant_file(chosen.variant)).read_bytes()
    manifest = manifest_for(params, device, chosen, model, meta, variants, run.run_id)
    cpp = (
        cpp_sources(
            model,
            manifest | {"arena_measured": chosen.arena_measured},
            device,
            manifest["model_sha256"],
        )
        if profile.runtime == "tflm"
        else None
    )
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        manifest = build_bundle(staged, model, manifest, cpp)
        verify_bundle(staged)  # what gets registered and promoted is exactly what was built
        run.client.log_artifacts(run.run_id, str(staged), "bundle")
        # The manifest's scalar fields, as the version's tags (lists stay in manifest.json).
        tags = {k: str(v) for k, v in manifest.items() if isinstance(v, str | int | float)}
        version = registry.register(client, device, run.run_id, tags)
        decision = registry.decide(
            client, device, chosen.accuracy, params.deploy.promotion_tolerance
        )
        if decision.promote:
            with interrupt.deferred():  # the alias and the bundle move together, or neither
                registry.promote(client, device, version.version)
                with atomic.atomic_dir(target) as swap:
                    for f in sorted(staged.iterdir()):
                        shutil.copy2(f, swap / f.name)
        else:
            _keep_production(client, device, target)
    status = "promoted" if decision.promote else "kept"
    record |= {
        "status": status,
        "reason": decision.reason,
        "variant": chosen.variant,
        "version": version.version,
        "production_version": version.version if decision.promote else decision.previous_version,
        "model_bytes": len(model),
        "arena_bytes": manifest.get("arena_bytes"),
        "accuracy": chosen.accuracy,
        "latency_ms": chosen.latency_ms,
    }
    atomic.write_json(status_dir / f"{device}.json", record)
    run.set_tags({"device": device, "deploy.status": status, "deploy.reason": decision.reason})
    run.log_metrics(
        {
            "accuracy": chosen.accuracy,
            "model_bytes": len(model),
            "latency_ms": chosen.latency_ms,
            **({"arena_bytes": manifest["arena_bytes"]} if "arena_bytes" in manifest else {}),
        }
    )
    return DeployResult(device, status, record)
