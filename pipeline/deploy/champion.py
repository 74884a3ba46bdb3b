"""Champion against challenger on the same data: the production bundle's model is run on the
current test split, in the runtime the challenger was measured in, and the promotion rule
decides (`decide`): the registry (registry.py) only reads and writes MLflow.

Comparing the challenger with the accuracy production scored on its own test split, months
ago, is meaningless once the data changed, which is what scheduled retraining is for. So the
champion is scored again here: the current test split is brought back to raw values with this
run's normalisation and normalised with the champion's own (both are in the manifests), then
quantised with the champion's own input parameters, exactly as its firmware would.

A champion whose input (shape and element type: int8 or float) or class list differs from the
challenger's is of another lineage: no score can compare them, and `deploy.new_lineage` says
what to do. Input scale and zero point are not part of a lineage (a retrain on new data moves
them, and every bundle carries its own), nor is the variant among those with float input.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.catalog import DatasetMeta, Manifest
from pipeline.data.prepare import renormalised
from pipeline.models.tasks import task_from
from pipeline.tflite import litert, tflm
from pipeline.tflite.flatbuffer import read_model


@dataclass(frozen=True)
class Signature:
    """What a model takes and gives, as firmware sees it."""

    input_shape: tuple[int, ...]
    input_dtype: str
    classes: tuple[str, ...]

    def describe(self) -> str:
        shape = "×".join(str(d) for d in self.input_shape)
        return f"{shape} {self.input_dtype.lower()} input with {len(self.classes)} classes"


@dataclass(frozen=True)
class Champion:
    """Production, as seen against this run's challenger."""

    version: str
    accuracy: float | None  # on the current test split; None for another lineage
    recorded_accuracy: float  # what it scored on its own split when registered
    lineage: str | None  # None: same lineage; else why it is another one


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    previous_version: str | None


def describe(manifest: Manifest, decision: Decision) -> str:
    """The version's description in the MLflow UI: what it is and how it compared."""
    m = manifest
    arena = f", arena {m.arena_bytes:,} B" if m.arena_bytes else ""
    return (
        f"{m.device}: {m.variant} for {m.runtime}, "
        f"{m.model_bytes:,} B{arena}, test accuracy {m.accuracy:.4f}. "
        f"{'Promoted' if decision.promote else 'Not promoted'}: {decision.reason}."
    )


def decide(
    accuracy: float, champion: Champion | None, tolerance: float, new_lineage: str = "refuse"
) -> Decision:
    """Promote unless the challenger scores lower than production, on the same test split, by
    more than the tolerance; a champion of another lineage is replaced only if asked."""
    if champion is None:
        return Decision(True, "first version for this device", None)
    if champion.lineage:
        if new_lineage == "promote":
            return Decision(
                True, f"{champion.lineage}; deploy.new_lineage is promote", champion.version
            )
        return Decision(
            False,
            f"{champion.lineage}. Production stays; set deploy.new_lineage: promote to replace "
            "it, or deploy the new model under another device name.",
            champion.version,
        )
    assert champion.accuracy is not None
    both = f"production v{champion.version} ({champion.accuracy:.4f}) on the same test split"
    if accuracy + tolerance < champion.accuracy:
        return Decision(
            False,
            f"accuracy {accuracy:.4f} is lower than {both} by more than the tolerance {tolerance}",
            champion.version,
        )
    return Decision(True, f"accuracy {accuracy:.4f} vs {both}", champion.version)


def split_sha256(x: np.ndarray, y: np.ndarray) -> str:
    """Content hash of the test split both models were scored on."""
    import hashlib

    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes())
    digest.update(np.ascontiguousarray(y).tobytes())
    return digest.hexdigest()


def signature(model: bytes, classes: list[str]) -> Signature:
    info = read_model(model)
    tensor = info.tensors[info.inputs[0]]
    return Signature(tuple(tensor.shape[1:]), tensor.dtype, tuple(classes))


def lineage_difference(champion: Signature, challenger: Signature, version: str) -> str | None:
    """None when both belong to one lineage; else one sentence that says how they differ."""
    if champion == challenger:
        return None
    if (
        champion.input_shape == challenger.input_shape
        and champion.input_dtype == challenger.input_dtype
    ):
        return f"production v{version} predicts other classes ({', '.join(champion.classes)}): a new lineage"
    return (
        f"production v{version} takes {champion.describe()}; this model takes "
        f"{challenger.describe()}: a new lineage"
    )


def score(
    model: bytes, manifest: Manifest, x: np.ndarray, y: np.ndarray, meta: DatasetMeta
) -> float:
    """Accuracy of a bundle's model on this test split, in the bundle's own runtime, decided
    the way its manifest's task says (argmax; an autoencoder's threshold)."""
    x = renormalised(x, meta.normalization, manifest.normalization)
    if manifest.runtime == "tflm":
        scale, zp = manifest.input_scale or 1.0, manifest.input_zero_point or 0
        outputs = tflm.predict(model, litert.quantize_input(x, scale, zp), manifest.host_arena())
    else:
        outputs, _ = litert.run_batch(model, x)
    task, threshold = task_from(manifest.task)
    predicted = task.predict(litert.dequantized(model, outputs), x, threshold)
    return round(float((predicted == task.labels(y)).mean()), 6)


def assess_production(
    client: Any, device: str, challenger: Signature, x: np.ndarray, y: np.ndarray, meta: DatasetMeta
) -> Champion | None:
    """Production's bundle, verified, scored on the current test split (or named another
    lineage); None when the device has no production version yet."""
    from pipeline.deploy import registry

    current = registry.production(client, device)
    if current is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        manifest = registry.download_bundle(client, current, Path(tmp))
        model = (registry.bundle_folder(Path(tmp)) / manifest.model_file).read_bytes()
    recorded = float(current.tags.get("accuracy", "nan"))
    theirs = signature(model, list(manifest.labels))
    different = lineage_difference(theirs, challenger, str(current.version))
    if different:
        return Champion(str(current.version), None, recorded, different)
    return Champion(str(current.version), score(model, manifest, x, y, meta), recorded, None)
