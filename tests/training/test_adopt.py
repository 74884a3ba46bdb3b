"""A model trained elsewhere (model.arch tflite, issue 29 item 2), through the stage functions on
tiny real data: train adopts the file, export ships it as the int8 variant alone, evaluate
scores it down to TensorFlow Lite Micro exactly as it scored the same model trained here. And
every way the file can disagree with the data is refused, naming the key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.core import catalog
from pipeline.core.config import parse_params
from pipeline.core.errors import ConfigError, QuantizationCheckError
from pipeline.data.prepare import load_processed, renormalised
from tests.conftest import TinyRun

GIVEN = "user_models/elsewhere.tflite"


def _params(tiny: TinyRun, **model: object):  # type: ignore[no-untyped-def]
    raw = tiny.params.model_dump(mode="json")  # type: ignore[attr-defined]
    raw["model"] = {"arch": "tflite", "path": GIVEN, **model}
    return parse_params(raw)


@pytest.fixture()
def ws(tiny_run: TinyRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace holding tiny_run's prepared data and its int8 model as a user's file."""
    shutil.copytree(tiny_run.ws / catalog.PROCESSED_DIR, tmp_path / catalog.PROCESSED_DIR)
    (tmp_path / "user_models").mkdir()
    (tmp_path / GIVEN).write_bytes(tiny_run.int8)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_an_adopted_tflite_is_evaluated_as_the_same_model_trained_here(
    ws: Path, tiny_run: TinyRun
) -> None:
    from pipeline.evaluation.evaluate import evaluate
    from pipeline.export.convert import export
    from pipeline.training.adopt import adopt

    params, data = _params(tiny_run), load_processed()
    for stale in ("fp32", "float16"):  # a previous torch run's variants must not linger
        catalog.variant_file(stale).parent.mkdir(parents=True, exist_ok=True)
        catalog.variant_file(stale).write_bytes(b"stale")
    summary = adopt(params, data)
    assert (ws / catalog.TFLITE_MODEL).read_bytes() == tiny_run.int8
    assert catalog.trained_framework() == "tflite"
    assert summary["framework"] == "tflite" and summary["epochs_run"] == 0
    assert summary["parameters"] > 0 and "val_loss" not in summary
    result = export(params.export, data.x["train"], 0)
    assert set(result.paths) == {"int8"}
    assert sorted(p.name for p in (ws / catalog.EXPORT_DIR).glob("*.tflite")) == [
        "model_int8.tflite"
    ]
    assert catalog.variant_file("int8").read_bytes() == tiny_run.int8  # shipped as given
    got = evaluate(params.evaluate, data).metrics.model_dump(exclude_none=True)
    here = json.loads((tiny_run.ws / catalog.EVALUATE_METRICS).read_text())
    for key in ("tflite_int8_accuracy", "tflm_int8_accuracy", "tflm_arena_bytes"):
        assert got[key] == here[key], key
    assert got["framework"] == "tflite" and "framework_fp32_accuracy" not in got


def test_the_models_own_normalisation_is_applied_before_it_runs(
    ws: Path, tiny_run: TinyRun
) -> None:
    """Given as prepare's statistics, nothing changes bit for bit; given as another mean and
    std, the inputs are renormalised to them (raw → theirs), and the card says so."""
    from pipeline.evaluation.evaluate import own_normalization
    from pipeline.training.adopt import adopt

    data = load_processed()
    norm = data.meta.normalization
    x = data.x["test"]
    assert renormalised(x, norm, {"mean": norm["mean"], "std": norm["std"]}) is x
    theirs = {"mean": [m + 1.0 for m in norm["mean"]], "std": [s * 2 for s in norm["std"]]}
    raw = x.astype(np.float64) * np.asarray(norm["std"]) + np.asarray(norm["mean"])
    expected = (raw - np.asarray(theirs["mean"])) / np.asarray(theirs["std"])
    np.testing.assert_allclose(renormalised(x, norm, theirs), expected, rtol=1e-5, atol=1e-5)
    adopt(_params(tiny_run, input_mean=theirs["mean"], input_std=theirs["std"]), data)
    assert own_normalization(catalog.TRAINED_DIR) == theirs


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ({"labels": ["b", "a", "c"]}, "must be the data's classes in the model's output order"),
        ({"input_mean": [0.0, 0.0], "input_std": [1.0, 1.0]}, "the data has 1 channel"),
        ({"path": "user_models/missing.tflite"}, "no such file"),
        ({"task": "reconstruction"}, "values per sample (the input rebuilt"),
    ],
)
def test_a_file_that_disagrees_with_the_data_is_refused_naming_the_key(
    ws: Path, tiny_run: TinyRun, model: dict, says: str
) -> None:
    from pipeline.training.adopt import adopt

    with pytest.raises(ConfigError, match="model\\.") as err:
        adopt(_params(tiny_run, **model), load_processed())
    assert says in str(err.value)
    assert not (ws / catalog.TRAINED_DIR).exists()  # nothing recorded


def test_a_float_model_is_refused_naming_what_stays_float(ws: Path, tiny_run: TinyRun) -> None:
    from pipeline.training.adopt import adopt

    (ws / GIVEN).write_bytes(tiny_run.fp32)
    with pytest.raises(QuantizationCheckError, match="not a full-integer int8 model"):
        adopt(_params(tiny_run), load_processed())


def test_another_input_shape_is_refused_with_both_shapes(tiny_run: TinyRun) -> None:
    from pipeline.models.spec import Architecture
    from pipeline.tflite.flatbuffer import read_model
    from pipeline.training.adopt import check_io

    other = Architecture((8, 8, 1), 3, ())
    with pytest.raises(ConfigError, match=r"input shape \[1, 6, 6, 1\].*gives \[1, 8, 8, 1\]"):
        check_io(read_model(tiny_run.int8), other, GIVEN)


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ({"arch": "tflite"}, "needs model.path: user_models/NAME.tflite"),
        ({"arch": "tflite", "path": "/tmp/x.tflite"}, "needs model.path"),
        ({"arch": "cnn2d", "path": "user_models/x.tflite"}, "model.path is for model.arch tflite"),
        ({"arch": "tflite", "path": GIVEN, "input_mean": [0.0]}, "go together"),
        ({"arch": "tflite", "path": GIVEN, "framework": "keras"}, "leave it torch"),
    ],
)
def test_tflite_params_are_checked_when_they_load(model: dict, says: str) -> None:
    with pytest.raises(ConfigError, match="model") as err:
        parse_params({"model": model})
    assert says in str(err.value)


def test_a_missing_float_variant_of_a_model_trained_here_is_still_an_error(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    """Only a model trained elsewhere goes without float variants: a torch model's missing fp32
    file names itself and the stage to rerun, as before."""
    from pipeline.core.errors import ArtifactError
    from pipeline.evaluation.evaluate import evaluate

    for name in (catalog.PROCESSED_DIR, catalog.TRAINED_DIR, catalog.EXPORT_DIR):
        shutil.copytree(tiny_run.ws / name, tmp_path / name)
    catalog.variant_file("fp32", tmp_path / catalog.EXPORT_DIR).unlink()
    data = load_processed(tmp_path / catalog.PROCESSED_DIR)
    with pytest.raises(
        ArtifactError, match=r"model_fp32\.tflite: missing\. Run `tinyops stage export`"
    ):
        evaluate(tiny_run.params.evaluate, data, tmp_path / catalog.TRAINED_DIR,  # type: ignore[attr-defined]
                 tmp_path / catalog.EXPORT_DIR)  # fmt: skip
