"""Champion against challenger on the same data: the production bundle's model is run on the
current test split, in the runtime the challenger was measured in, and the promotion rule
decides (`decide`): the registry (registry.py) only reads and writes MLflow.

Comparing the challenger with the accuracy production scored on its own test split, months
ago, is meaningless once the data changed, which is what scheduled retraining is for. So the
champion is scored again here: the current test split is brought back to raw values with this
run's normalisation and normalised with the champion's own (both are in the manifests), then
quantised with the champion's own input parameters, exactly as its firmware would.

A retrain on new data (field data, say) also answers to production's own test split, kept with
its registered version by its sha256: the challenger, scored there, must not be worse than
production was there by more than the same tolerance (`HeldOut`). A model that wins the new
split by forgetting the old one is not promoted.

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
class HeldOut:
    """The challenger on the test split production was promoted on, beside production's score
    there (recorded when it was registered: the same split, the same runtime)."""

    accuracy: float
    production: float
    sha256: str


SPLIT_ARTIFACT = "test_split"  # in each deploy run: the test split it judged on (split.npz)


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
    accuracy: float, champion: Champion | None, tolerance: float, new_lineage: str = "refuse",
    held: HeldOut | None = None,
) -> Decision:  # fmt: skip
    """Promote unless the challenger scores lower than production, on the same test split, by
    more than the tolerance (and, where production's own split differs, lower there than
    production scored); a champion of another lineage is replaced only if asked."""
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
    reason = f"accuracy {accuracy:.4f} vs {both}"
    if held is None:
        return Decision(True, reason, champion.version)
    there = (
        f"on the test split production v{champion.version} was promoted on "
        f"({held.sha256[:12]}), {held.accuracy:.4f} vs its {held.production:.4f}"
    )
    if held.accuracy + tolerance < held.production:
        return Decision(
            False, f"{reason}, but {there}: lower by more than the tolerance {tolerance}",
            champion.version,
        )  # fmt: skip
    return Decision(True, f"{reason}; {there}", champion.version)


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
    model: bytes, manifest: Manifest, x: np.ndarray, y: np.ndarray, normalization: dict[str, Any]
) -> float:
    """Accuracy of a bundle's model on a test split normalised with `normalization`, in the
    bundle's own runtime, decided the way its manifest's task says (argmax; an autoencoder's
    threshold)."""
    x = renormalised(x, normalization, manifest.normalization)
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
    accuracy = score(model, manifest, x, y, meta.normalization)
    return Champion(str(current.version), accuracy, recorded, None)


def keep_split(client: Any, run_id: str, x: np.ndarray, y: np.ndarray, normalization: dict) -> None:
    """The test split a deploy judged on, with its normalisation, as the run's artifact: a later
    retrain on other data is also scored on it (`on_production_split`)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "split.npz"
        mean, std = np.asarray(normalization["mean"]), np.asarray(normalization["std"])
        np.savez(path, x=x, y=y, mean=mean, std=std)
        client.log_artifact(run_id, str(path), SPLIT_ARTIFACT)


def on_production_split(
    client: Any, device: str, model: bytes, manifest: Manifest, current_sha256: str
) -> HeldOut | None:
    """The challenger scored on production's own test split, when production was judged on
    another split than today's and kept it (versions registered before splits were kept did
    not: None, and the current split alone decides)."""
    from mlflow.exceptions import MlflowException

    from pipeline.core.errors import RegistryError
    from pipeline.deploy import registry

    current = registry.production(client, device)
    sha = current.tags.get("test_split_sha256") if current is not None else None
    if current is None or not sha or sha == current_sha256:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = Path(client.download_artifacts(current.run_id, SPLIT_ARTIFACT, tmp))
        except (MlflowException, OSError):
            return None
        with np.load(folder / "split.npz") as kept:
            x, y = kept["x"], kept["y"]
            normalization = {"mean": kept["mean"].tolist(), "std": kept["std"].tolist()}
    if split_sha256(x, y) != sha:
        raise RegistryError(
            f"{device}: production v{current.version}'s kept test split does not match the "
            f"sha256 it was registered with ({sha[:12]}): refusing to judge against it"
        )
    accuracy = score(model, manifest, x, y, normalization)
    return HeldOut(accuracy, float(current.tags.get("accuracy", "nan")), sha)
