"""The catalog's typed artifacts: a missing or malformed one names the stage to rerun."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core import catalog
from pipeline.core.errors import ArtifactError


def test_missing_and_malformed_artifacts_name_the_stage(tmp_path: Path) -> None:
    path = tmp_path / "variants.json"
    with pytest.raises(ArtifactError, match=r"missing\. Run `tinyops stage evaluate`"):
        catalog.read(path, catalog.Variants, "evaluate")
    path.write_text('{"fp32": {"bytes": "many"}}')
    with pytest.raises(
        ArtifactError, match=r"not a valid Variants .*Rerun `tinyops stage evaluate`"
    ):
        catalog.read(path, catalog.Variants, "evaluate")


def test_the_logged_model_reference_is_followed_only_for_this_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert catalog.logged_model_id() is None  # nothing logged yet
    catalog.MODEL_FILE.parent.mkdir(parents=True)
    catalog.MODEL_FILE.write_bytes(b"weights")
    ref = catalog.LoggedModelRef(model_id="m-1", model_sha256=catalog.trained_sha256())
    catalog.write(catalog.LOGGED_MODEL, ref)
    assert catalog.logged_model_id() == "m-1"
    catalog.MODEL_FILE.write_bytes(b"retrained")
    assert catalog.logged_model_id() is None, "a stale reference is not followed"
    catalog.LOGGED_MODEL.write_text("{not json")
    assert catalog.logged_model_id() is None, "workspace state never fails a stage"


def test_the_trained_framework_is_read_from_the_model_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactError, match="no trained model"):
        catalog.trained_framework()
    catalog.TRAINED_DIR.mkdir(parents=True)
    catalog.KERAS_CARD.write_text("{}")
    assert catalog.trained_framework() == "keras"
    catalog.MODEL_FILE.write_bytes(b"weights")
    with pytest.raises(ArtifactError, match="files of torch and keras"):
        catalog.trained_framework()
