"""models/trained/ for a model trained elsewhere (model.arch tflite): the .tflite as it was
given (model.tflite) and a card (card.json) with what tinyops needs beside it: the architecture
(input shape, classes, task), the labels and the normalisation its input expects.

Checking the file is the train stage's (pipeline/training/adopt.py); this module only stores
and reads back, so evaluate and export need nothing of how it was adopted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.core import atomic, catalog
from pipeline.core.errors import ArtifactError
from pipeline.models.spec import Architecture

TFLITE_FORMAT = "tinyops.tflite-model/1"


def save_model(trained_dir: Path, model: bytes, arch: Architecture, card: dict[str, Any]) -> None:
    """The file and its card; the folder is replaced whole (no other framework's files stay)."""
    full = {"format": TFLITE_FORMAT, "framework": "tflite", "architecture": arch.to_dict()}
    with atomic.atomic_dir(trained_dir) as tmp:
        atomic.write_bytes(tmp / catalog.TFLITE_MODEL.name, model)
        atomic.write_json(tmp / catalog.TFLITE_CARD.name, full | card)


def load_model(trained_dir: Path) -> tuple[bytes, Architecture, dict[str, Any]]:
    """The model's bytes, its architecture and its card."""
    path, card_path = (
        trained_dir / catalog.TFLITE_MODEL.name,
        trained_dir / catalog.TFLITE_CARD.name,
    )
    if not (path.is_file() and card_path.is_file()):
        raise ArtifactError(f"{trained_dir}: no adopted .tflite. Rerun `tinyops stage train`.")
    try:
        card = json.loads(card_path.read_text())
        return path.read_bytes(), Architecture.from_dict(card["architecture"]), card
    except (ValueError, KeyError) as exc:
        raise ArtifactError(
            f"{card_path}: not a tinyops card ({type(exc).__name__}: {exc}). "
            "Rerun `tinyops stage train`."
        ) from None
