"""models/trained/ for a Keras-trained model: model.json (architecture, classes, normalisation,
best epoch, the variables in order) and model.weights.npz (each variable by its path).

Not a `.keras` file: Keras writes the save time into it, and DVC outputs must come out byte for
byte the same from the same inputs. The npz is written with fixed zip timestamps and loads with
`numpy.load(allow_pickle=False)`; `load_model` rebuilds the Keras model from it.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core import atomic, catalog
from pipeline.core.errors import ArtifactError
from pipeline.models.architecture import Architecture, build_keras_model

if TYPE_CHECKING:
    import keras

KERAS_FORMAT = "tinyops.keras-model/1"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the zip format's earliest date: no wall clock in the file


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz numpy.load reads, with no timestamp in it (numpy.savez writes the current time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def save_model(
    trained_dir: Path,
    arch: Architecture,
    weights: dict[str, np.ndarray],
    meta: dict[str, Any],
    best_epoch: int,
) -> None:
    """The trained model: the folder is replaced whole (no torch model.pt stays beside it)."""
    import keras

    card = {
        "format": KERAS_FORMAT,
        "framework": "keras",
        "keras_version": keras.__version__,
        "architecture": arch.to_dict(),
        "classes": meta["classes"],
        "normalization": meta["normalization"],
        "best_epoch": best_epoch,
        "variables": list(weights),
    }
    with atomic.atomic_dir(trained_dir) as tmp:
        atomic.write_json(tmp / catalog.KERAS_CARD.name, card)
        atomic.write_bytes(tmp / catalog.KERAS_WEIGHTS.name, npz_bytes(weights))


def load_model(trained_dir: Path) -> tuple[keras.Model, Architecture, dict[str, Any]]:
    """The Keras model rebuilt from the card, with the stored weights; and the card."""
    card_path = trained_dir / catalog.KERAS_CARD.name
    if not card_path.is_file():
        raise ArtifactError(f"{card_path}: missing. Run `tinyops stage train` first.")
    try:
        card = json.loads(card_path.read_text())
        arch = Architecture.from_dict(card["architecture"])
        model = build_keras_model(arch)
        with np.load(trained_dir / catalog.KERAS_WEIGHTS.name, allow_pickle=False) as stored:
            by_path = {v.path: v for v in model.weights}
            for name in card["variables"]:
                by_path[name].assign(stored[name])
    except Exception as exc:
        raise ArtifactError(
            f"{trained_dir}: not a usable tinyops Keras model ({type(exc).__name__}: {exc}). "
            "Rerun `tinyops stage train`."
        ) from None
    return model, arch, card


def predict(trained_dir: Path, x: np.ndarray) -> tuple[np.ndarray, Architecture]:
    """fp32 logits on NHWC float32 `x` (inference mode: BatchNorm's moving statistics), and
    the architecture."""
    model, arch, _ = load_model(trained_dir)
    return np.asarray(model.predict_on_batch(x)), arch
