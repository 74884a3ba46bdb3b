"""Fair promotion through the real registry: production is re-scored on the current test split
in the device's runtime, and a model of another lineage is not compared at all."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.core import catalog, tracking
from pipeline.core.config import Params, parse_params
from pipeline.deploy.champion import Signature, lineage_difference
from tests.conftest import TinyRun

MCU = {
    "runtime": "tflm",
    "flash_bytes": 1 << 22,
    "ram_bytes": 1 << 20,
    "clock_mhz": 100.0,
    "cycles_per_mac": 1.0,
}


def test_another_input_shape_is_another_lineage() -> None:
    old = Signature((8, 8, 1), "INT8", tuple("0123456789"))
    new = Signature((28, 28, 1), "INT8", tuple("0123456789"))
    assert lineage_difference(old, old, "3") is None
    assert lineage_difference(old, new, "3") == (
        "production v3 takes 8×8×1 int8 input with 10 classes; this model takes "
        "28×28×1 int8 input with 10 classes: a new lineage"
    )
    other = Signature((8, 8, 1), "INT8", ("cat", "dog"))
    assert "predicts other classes (0, 1, 2" in str(lineage_difference(old, other, "3"))


@pytest.fixture()
def ws(
    tiny_run: TinyRun, tmp_path: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> Path:
    ws = Path(shutil.copytree(tiny_run.ws, tmp_path / "ws"))
    monkeypatch.chdir(ws)
    return ws


def _params(tiny_run: TinyRun, **deploy: object) -> Params:
    dumped = tiny_run.params.model_dump(mode="json")  # type: ignore[attr-defined]
    return parse_params({**dumped, "devices": {"mcu": MCU}, "deploy": deploy})


def _deploy(params: Params) -> catalog.DeployStatus:
    from pipeline.deploy.device import deploy_context, deploy_device

    client = tracking.client()
    run = tracking.start_parent(client, "deploy@mcu", {})
    return deploy_device(deploy_context(params, "mcu", run)).record


def _set_tflm_accuracy(value: float) -> None:
    variants = catalog.read(catalog.VARIANTS_FILE, catalog.Variants, "evaluate")
    int8 = variants.int8.model_copy(update={"tflm_accuracy": value})
    catalog.write(catalog.VARIANTS_FILE, variants.model_copy(update={"int8": int8}))


@pytest.mark.slow
def test_worse_is_kept_and_better_promoted_on_the_same_split(ws: Path, tiny_run: TinyRun) -> None:
    params = _params(tiny_run)
    first = _deploy(params)
    assert first.status == "promoted" and first.champion_version is None
    measured = catalog.read(catalog.VARIANTS_FILE, catalog.Variants, "evaluate").int8.tflm_accuracy
    assert measured is not None
    _set_tflm_accuracy(measured - 0.2)  # a challenger that scored lower on this split
    worse = _deploy(params)
    assert worse.status == "kept" and worse.champion_version == first.version
    assert worse.champion_accuracy == measured, "production re-scored on the same split"
    assert worse.test_split_sha256 == first.test_split_sha256
    assert "lower than production v1" in worse.reason and "on the same test split" in worse.reason
    _set_tflm_accuracy(min(1.0, measured + 0.2))
    better = _deploy(params)
    assert better.status == "promoted" and better.champion_accuracy == measured
    version = tracking.client().get_model_version("tinyops-mcu", str(better.version))
    assert version.tags["champion_accuracy"] == f"{measured:.6f}"
    assert version.tags["test_split_sha256"] == better.test_split_sha256
    assert "Promoted: accuracy" in version.description


@pytest.mark.slow
def test_a_changed_test_split_rescores_production(ws: Path, tiny_run: TinyRun) -> None:
    """New data (another split): production's recorded figure is not used; its model is run on
    the new split, so an unchanged model compares equal and is promoted."""
    from pipeline.data.prepare import load_processed, prepare
    from pipeline.evaluation.evaluate import evaluate, write_outputs

    params = _params(tiny_run)
    first = _deploy(params)
    prepare(params.prepare.model_copy(update={"seed": 7}))
    write_outputs(evaluate(params.evaluate, load_processed()))
    again = _deploy(params)
    assert again.test_split_sha256 != first.test_split_sha256
    assert again.champion_accuracy == again.accuracy, "the same model, re-scored on the new split"
    assert again.status == "promoted"


@pytest.mark.slow
def test_another_lineage_is_refused_then_promoted_when_asked(ws: Path, tiny_run: TinyRun) -> None:
    params = _params(tiny_run)
    _deploy(params)
    meta = catalog.read(catalog.META_FILE, catalog.DatasetMeta, "prepare")
    renamed = meta.model_copy(update={"classes": ["x", "y", "z"]})
    catalog.write(catalog.META_FILE, renamed)
    refused = _deploy(params)
    assert refused.status == "kept"
    assert "production v1 predicts other classes (a, b, c): a new lineage" in refused.reason
    assert "set deploy.new_lineage: promote" in refused.reason
    promoted = _deploy(_params(tiny_run, new_lineage="promote"))
    assert promoted.status == "promoted" and "deploy.new_lineage is promote" in promoted.reason


@pytest.mark.slow
def test_another_input_shape_through_the_registry(ws: Path, tiny_run: TinyRun) -> None:
    """The user's own data at another resolution: prepare, export and evaluate a 5×5 model; the
    6×6 production model is of another lineage and stays, with one sentence saying why."""
    import numpy as np
    import torch

    from pipeline.data.prepare import load_processed, prepare
    from pipeline.evaluation.evaluate import evaluate, write_outputs
    from pipeline.export.convert import export
    from pipeline.models.architecture import Architecture, build_model
    from pipeline.models.store import save_model

    params = _params(tiny_run)
    _deploy(params)
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 20)
    x = (rng.normal(size=(60, 5, 5, 1)) + y[:, None, None, None]).astype(np.float32)
    np.savez(ws / "five.npz", x=x, y=y, classes=np.array(["a", "b", "c"]))
    meta = prepare(params.prepare.model_copy(update={"path": str(ws / "five.npz")})).meta
    arch = Architecture((5, 5, 1), 3, (4, 8), 3, 0.0)
    torch.manual_seed(0)
    save_model(catalog.TRAINED_DIR, arch, build_model(arch).state_dict(), meta.model_dump(), 1)
    data = load_processed()
    export(params.export, data.x["train"], 0)
    write_outputs(evaluate(params.evaluate, data))
    refused = _deploy(params)
    assert refused.status == "kept"
    assert refused.reason.startswith(
        "production v1 takes 6×6×1 int8 input with 3 classes; this model takes 5×5×1 int8 input "
        "with 3 classes: a new lineage. Production stays"
    ), refused.reason
