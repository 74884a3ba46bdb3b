"""Stage prepare on tiny real data: every source, the split, normalisation, and bad datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.config import PrepareParams
from pipeline.core.errors import DataValidationError
from pipeline.data.prepare import load_processed, prepare
from tests.conftest import tree_digest


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _blobs(n_per_class: int = 12, classes: int = 3, shape: tuple[int, ...] = (6, 6)) -> tuple:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(classes), n_per_class)
    x = rng.normal(size=(len(y), *shape)).astype(np.float32) + y.reshape(-1, *([1] * len(shape)))
    return x, y


def _png_folder(
    root: Path, classes: int = 2, per_class: int = 12, size: tuple[int, int] = (10, 12)
) -> Path:
    rng = np.random.default_rng(1)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(root / f"class_{c}" / f"{i:03d}.png")
    return root


def test_digits_default(tmp_path: Path) -> None:
    out = tmp_path / "processed"
    meta = prepare(PrepareParams(), out).meta
    data = load_processed(out)
    assert meta.input_shape == [8, 8, 1] and meta.num_classes == 10
    assert sum(meta.splits.values()) == 1797
    for split in ("train", "val", "test"):
        assert set(np.unique(data.y[split])) == set(range(10)), f"{split} split is not stratified"
    # Normalised with training statistics only: train is centred, the others merely close.
    assert abs(float(data.x["train"].mean())) < 1e-5
    assert abs(float(data.x["train"].std()) - 1.0) < 1e-4
    assert len(meta.data_sha256) == 64


def test_prepare_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    prepare(PrepareParams(), a)
    prepare(PrepareParams(), b)
    assert tree_digest(a) == tree_digest(b)
    prepare(PrepareParams(seed=7), b)
    assert tree_digest(a) != tree_digest(b), "a different seed must give a different split"


def test_npz_source_with_class_names(tmp_path: Path) -> None:
    x, y = _blobs()
    path = _npz(tmp_path / "d.npz", x=x, y=y, classes=np.array(["cat", "dog", "owl"]))
    meta = prepare(PrepareParams(source="npz", path=str(path)), tmp_path / "out").meta
    assert meta.classes == ["cat", "dog", "owl"]
    assert meta.input_shape == [6, 6, 1]
    assert meta.class_counts == {"cat": 12, "dog": 12, "owl": 12}


def test_imagefolder_source_resizes_and_converts(tmp_path: Path) -> None:
    root = _png_folder(tmp_path / "images")
    params = PrepareParams(source="imagefolder", path=str(root), image_size=(8, 8))
    meta = prepare(params, tmp_path / "out").meta
    assert meta.classes == ["class_0", "class_1"]
    assert meta.input_shape == [8, 8, 1]
    rgb = prepare(params.model_copy(update={"color_mode": "rgb"}), tmp_path / "out_rgb").meta
    assert rgb.input_shape == [8, 8, 3]
    assert len(rgb.normalization["mean"]) == 3


def _bad_npz(tmp_path: Path, case: str) -> tuple[PrepareParams, str]:
    x, y = _blobs()
    path = tmp_path / "bad.npz"
    if case == "nan":
        x[5, 0, 0] = np.nan
        _npz(path, x=x, y=y)
        return PrepareParams(source="npz", path=str(path)), "x[5] contains NaN"
    if case == "inf":
        x[7, 1, 1] = np.inf
        _npz(path, x=x, y=y)
        return PrepareParams(source="npz", path=str(path)), "x[7] contains inf"
    if case == "label_out_of_range":
        y = y.copy()
        y[3] = 9
        _npz(path, x=x, y=y, classes=np.array(["a", "b", "c"]))
        return PrepareParams(source="npz", path=str(path)), "y[3] = 9 is out of range"
    if case == "negative_label":
        y = y.copy()
        y[4] = -1
        _npz(path, x=x, y=y)
        return PrepareParams(source="npz", path=str(path)), "y[4] = -1 is out of range"
    if case == "float_labels":
        _npz(path, x=x, y=y.astype(np.float32))
        return PrepareParams(source="npz", path=str(path)), "labels must be integers"
    if case == "mismatched_lengths":
        _npz(path, x=x, y=y[:-2])
        return PrepareParams(source="npz", path=str(path)), "x has 36 samples but y has 34 labels"
    if case == "bad_shape":
        _npz(path, x=x.reshape(len(x), -1), y=y)
        return PrepareParams(source="npz", path=str(path)), "expected (N, H, W) or (N, H, W, C)"
    if case == "class_below_minimum":
        keep = np.r_[0:12, 12:24, 24:28]
        _npz(path, x=x[keep], y=y[keep])
        return PrepareParams(source="npz", path=str(path)), "'2' has 4 sample(s)"
    if case == "single_class":
        _npz(path, x=x[:12], y=y[:12])
        return PrepareParams(source="npz", path=str(path)), "only 1 class"
    if case == "missing_arrays":
        _npz(path, images=x, y=y)
        return PrepareParams(source="npz", path=str(path)), "missing array(s) ['x']"
    if case == "truncated":
        _npz(path, x=x, y=y)
        path.write_bytes(path.read_bytes()[:300])
        return PrepareParams(source="npz", path=str(path)), "not a readable .npz"
    if case == "not_npz":
        path.write_text("label,pixel\n1,2\n")
        return PrepareParams(source="npz", path=str(path)), "not a readable .npz"
    if case == "too_large":
        _npz(path, x=x, y=y)
        return PrepareParams(
            source="npz", path=str(path), max_file_bytes=1000
        ), "refused before reading"
    if case == "missing_file":
        return PrepareParams(source="npz", path=str(tmp_path / "absent.npz")), "no such file"
    raise AssertionError(case)


def _bad_folder(tmp_path: Path, case: str) -> tuple[PrepareParams, str]:
    root = tmp_path / "images"
    if case == "unreadable_image":
        _png_folder(root)
        (root / "class_1" / "005.png").write_bytes(b"this is not a png")
        return PrepareParams(
            source="imagefolder", path=str(root)
        ), "class_1/005.png: not a readable image"
    if case == "wrong_size_no_resize":
        _png_folder(root, size=(10, 12))
        return (
            PrepareParams(source="imagefolder", path=str(root), image_size=(8, 8), resize=False),
            "image is 10×12 (H×W) but prepare.image_size is 8×8",
        )
    if case == "empty_class_folder":
        _png_folder(root)
        (root / "class_2").mkdir()
        return PrepareParams(
            source="imagefolder", path=str(root)
        ), "class 'class_2' holds no PNG/JPEG"
    if case == "no_class_folders":
        root.mkdir()
        return PrepareParams(source="imagefolder", path=str(root)), "no class folders found"
    raise AssertionError(case)


NPZ_CASES = [
    "nan",
    "inf",
    "label_out_of_range",
    "negative_label",
    "float_labels",
    "mismatched_lengths",
    "bad_shape",
    "class_below_minimum",
    "single_class",
    "missing_arrays",
    "truncated",
    "not_npz",
    "too_large",
    "missing_file",
]
FOLDER_CASES = [
    "unreadable_image",
    "wrong_size_no_resize",
    "empty_class_folder",
    "no_class_folders",
]


@pytest.mark.parametrize("case", NPZ_CASES + FOLDER_CASES)
def test_bad_dataset_clear_error_and_nothing_written(tmp_path: Path, case: str) -> None:
    out = tmp_path / "processed"
    prepare(PrepareParams(), out)  # a good earlier result that must survive
    before = tree_digest(out)
    params, phrase = (_bad_npz if case in NPZ_CASES else _bad_folder)(tmp_path, case)
    with pytest.raises(DataValidationError) as err:
        prepare(params, out)
    assert phrase in str(err.value)
    assert str(Path(params.path or "").name) in str(err.value), "the message names the file"
    assert tree_digest(out) == before
    assert json.loads((out / "meta.json").read_text())["source"] == "digits"
    assert not list(tmp_path.glob(".processed*")), "no temporary folder left behind"
