"""Bad Keras model folders: a clear error naming the folder, and the earlier exports untouched.
(No TensorFlow is loaded: the folder is refused before.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.core import catalog
from pipeline.core.config import ExportParams
from pipeline.core.errors import ArtifactError
from pipeline.export.convert import export


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"model.json": "{not json"}, r"models/trained: not a usable tinyops Keras model"),
        ({"model.json": "{}", "model.pt": "x"}, r"models/trained: files of torch and keras"),
        ({}, r"models/trained: no trained model"),
    ],
)
def test_a_bad_trained_folder_is_named_and_the_exports_stay(
    files: dict[str, str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    catalog.TRAINED_DIR.mkdir(parents=True)
    for name, text in files.items():
        (catalog.TRAINED_DIR / name).write_text(text)
    earlier = catalog.variant_file("int8")
    earlier.parent.mkdir()
    earlier.write_bytes(b"the previous export")
    x = np.zeros((4, 8, 8, 1), dtype=np.float32)
    with pytest.raises(ArtifactError, match=message):
        export(ExportParams(calibration_samples=2), x, 0)
    assert earlier.read_bytes() == b"the previous export"
    assert sorted(p.name for p in earlier.parent.iterdir()) == ["model_int8.tflite"]
