"""Time-series sources: the bundled UEA datasets, series npz and CSV folders, padding and
per-channel normalisation, and every bad input with the error that names it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import PrepareParams
from pipeline.core.errors import DataValidationError
from pipeline.data.prepare import load_processed, prepare
from tests.conftest import tree_digest


def _series(n_per_class: int = 12, classes: int = 3, steps: int = 20, channels: int = 2):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(classes), n_per_class)
    x = rng.normal(size=(len(y), steps, channels)).astype(np.float32) + y[:, None, None]
    return x, y


def _csv_folder(root: Path, lengths: dict[str, list[int]], header: str = "ax,ay") -> Path:
    rng = np.random.default_rng(1)
    for label, steps in lengths.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i, t in enumerate(steps):
            rows = "\n".join(",".join(f"{v:.4f}" for v in r) for r in rng.normal(size=(t, 2)))
            (root / label / f"{i:03d}.csv").write_text(f"{header}\n{rows}\n")
    return root


def test_basicmotions_bundled(tmp_path: Path) -> None:
    meta = prepare(PrepareParams(source="basicmotions"), tmp_path).meta
    assert meta.layout == "NTC" and meta.input_shape == [100, 6]
    assert meta.classes == ["Standing", "Running", "Walking", "Badminton"]
    assert sum(meta.splits.values()) == 80 and meta.channels[0] == "accel_x"
    x = load_processed(tmp_path).x["train"]
    assert np.allclose(x.reshape(-1, 6).mean(0), 0, atol=1e-5), "normalised from train"


def test_japanesevowels_ragged_needs_a_length_then_pads(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"different lengths.*JapaneseVowels_TRAIN.ts"):
        prepare(PrepareParams(source="japanesevowels"), tmp_path)
    meta = prepare(PrepareParams(source="japanesevowels", sequence_length=29), tmp_path).meta
    assert meta.input_shape == [29, 12] and sum(meta.splits.values()) == 640
    x = load_processed(tmp_path).x["train"]
    assert (x[:, -1] == 0).all(axis=1).sum() > len(x) // 2, "short series end in zero padding"
    real = x[np.abs(x).sum(axis=2) > 0]
    assert np.allclose(real.mean(0), 0, atol=1e-4), "statistics from real steps only"


def test_series_npz_and_csv_folder(tmp_path: Path) -> None:
    x, y = _series()
    np.savez(tmp_path / "s.npz", x=x, y=y, channels=np.array(["a", "b"]))
    params = PrepareParams(source="series_npz", path=str(tmp_path / "s.npz"))
    meta = prepare(params, tmp_path / "o").meta
    assert meta.input_shape == [20, 2] and meta.channels == ["a", "b"]
    folder = _csv_folder(tmp_path / "csv", {"walk": [30] * 12, "run": [25] * 12})
    params = PrepareParams(source="series_csv", path=str(folder), sequence_length=28)
    meta = prepare(params, tmp_path / "o2").meta
    assert meta.input_shape == [28, 2] and meta.classes == ["run", "walk"]
    assert meta.channels == ["ax", "ay"]


def _bad(tmp_path: Path, case: str) -> tuple[PrepareParams, str, str]:
    """(params, phrase in the error, what the error must name)."""
    x, y = _series()
    if case in ("nan", "inf", "short_npz"):
        if case == "short_npz":
            x = x[:, :3]
        else:
            x[7, 4, 1] = np.nan if case == "nan" else np.inf
        np.savez(tmp_path / "bad.npz", x=x, y=y)
        phrase = {"nan": "step 4, channel 1 is NaN", "inf": "step 4, channel 1 is inf",
                  "short_npz": "too short"}[case]  # fmt: skip
        return (
            PrepareParams(source="series_npz", path=str(tmp_path / "bad.npz")),
            phrase,
            "x[7]" if case != "short_npz" else "x[0]",
        )
    lengths = {"a": [20] * 12, "b": [20] * 12}
    if case == "ragged":
        lengths["b"][3] = 17
    if case == "short_csv":
        lengths["b"][5] = 2
    folder = _csv_folder(tmp_path / "csv", lengths)
    bad_file = folder / "b" / "005.csv"
    if case == "channels":
        bad_file.write_text("ax,ay\n1,2\n3\n")
        return PrepareParams(source="series_csv", path=str(folder)), "row 3: 1 value(s)", "005.csv"
    if case == "header":
        bad_file.write_text("ax,az\n" + "1,2\n" * 20)
        return PrepareParams(source="series_csv", path=str(folder)), "differs from", "005.csv"
    if case == "csv_nan":
        bad_file.write_text("ax,ay\n" + "1,2\n" * 5 + "nan,2\n" + "1,2\n" * 14)
        return (
            PrepareParams(source="series_csv", path=str(folder)),
            "step 5, channel 0 is NaN",
            "005.csv",
        )
    if case == "ragged":
        return PrepareParams(source="series_csv", path=str(folder)), "different lengths", "003.csv"
    return PrepareParams(source="series_csv", path=str(folder)), "too short", "005.csv"


CASES = ["nan", "inf", "short_npz", "ragged", "short_csv", "channels", "header", "csv_nan"]


@pytest.mark.parametrize("case", CASES)
def test_bad_series_named_error_and_nothing_written(tmp_path: Path, case: str) -> None:
    out = tmp_path / "processed"
    prepare(PrepareParams(), out)  # a good earlier result that must survive
    before = tree_digest(out)
    params, phrase, names = _bad(tmp_path, case)
    with pytest.raises(DataValidationError) as err:
        prepare(params, out)
    assert phrase in str(err.value) and names in str(err.value), str(err.value)
    assert tree_digest(out) == before
    assert json.loads((out / "meta.json").read_text())["source"] == "digits"
