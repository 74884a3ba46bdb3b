"""Time-series sources (samples of T steps × C channels) and their checks: UEA archive files
bundled in the sktime wheel, an .npz of (N, T, C), or a folder of CSV files.

Every loader returns the series as they are (possibly ragged) with a name per sample, so that
a NaN, a wrong channel count or a too-short series is reported by file, row or index; then
`fixed_length` makes one (N, T, C) array, keeping each series' true length for normalisation.
"""

from __future__ import annotations

import csv
import importlib.util
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.config import PrepareParams
from pipeline.core.errors import DataValidationError

# prepare.source → the UEA problem in sktime/datasets/data/ (train and test files are pooled,
# then split by tinyops's own seeded, stratified split).
BUNDLED = {"basicmotions": "BasicMotions", "japanesevowels": "JapaneseVowels"}
# Channel names from the archive's descriptions (the .ts files carry none).
CHANNELS = {
    "BasicMotions": ("accel_x", "accel_y", "accel_z", "gyro_x", "gyro_y", "gyro_z"),
    "JapaneseVowels": tuple(f"lpc{i}" for i in range(1, 13)),
}


OWNER_ARRAYS = ("subject", "owner")  # series_npz: the array naming each sample's owner


@dataclass(frozen=True)
class RaggedSeries:
    """Validated series, each (T_i, C) float32, with a name (file, row or index) per sample."""

    series: list[np.ndarray]
    y: np.ndarray
    classes: tuple[str, ...]
    names: list[str]
    channels: tuple[str, ...]
    origin: str
    owners: tuple[str, ...] = ()  # who each sample came from (a `subject` or `owner` array)


def _check_values(arr: np.ndarray, name: str, min_length: int, width: int) -> None:
    """One series: (T, C) with C = width, at least min_length steps, every value finite."""
    if arr.ndim != 2 or arr.shape[1] != width:
        got = arr.shape[1] if arr.ndim == 2 else arr.shape
        raise DataValidationError(f"{name}: has {got} channel(s); the dataset has {width}.")
    if arr.shape[0] < min_length:
        raise DataValidationError(
            f"{name}: {arr.shape[0]} step(s) is too short; every series needs at least "
            f"{min_length} (prepare.min_sequence_length)."
        )
    bad = ~np.isfinite(arr)
    if bad.any():
        step, channel = (int(v) for v in np.argwhere(bad)[0])
        kind = "NaN" if np.isnan(arr[step, channel]) else "inf"
        raise DataValidationError(
            f"{name}: step {step}, channel {channel} is {kind} ({int(bad.sum())} bad value(s) in "
            "this series). Clean or drop it before training."
        )


def sktime_data_dir() -> Path:
    """sktime/datasets/data/ of the installed wheel, found without importing sktime (slow)."""
    spec = importlib.util.find_spec("sktime")
    if spec is None or not spec.submodule_search_locations:
        raise DataValidationError(
            "the bundled UEA datasets come from the sktime wheel, which is not installed; "
            "run `make install` (requirements.lock pins it)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def _ts_header(lines: list[str], path: Path) -> tuple[list[str], int]:
    """Class labels from @classLabel and the index of the first data line."""
    labels: list[str] = []
    for i, line in enumerate(lines):
        words = line.strip().split()
        if words and words[0].lower() == "@classlabel":
            labels = words[2:]
        if words and words[0].lower() == "@data":
            if not labels:
                raise DataValidationError(f"{path}: no '@classLabel true ...' line before @data.")
            return labels, i + 1
    raise DataValidationError(f"{path}: no @data line; not a .ts file of the UEA archive.")


def read_ts(path: Path) -> tuple[list[np.ndarray], list[str], list[str]]:
    """A UEA/sktime .ts file: per line, one comma-separated series per channel separated by ':'
    and the label last. Returns series (T, C), labels, and the header's class names."""
    lines = path.read_text(encoding="utf-8").splitlines()
    classes, start = _ts_header(lines, path)
    series, labels = [], []
    for number, line in enumerate(lines[start:], start=start + 1):
        if not line.strip():
            continue
        *dims, label = line.strip().split(":")
        try:
            rows = [np.array(d.split(","), dtype=np.float32) for d in dims]
        except ValueError as exc:
            raise DataValidationError(f"{path}, line {number}: {exc}.") from None
        if len({len(r) for r in rows}) != 1:
            raise DataValidationError(f"{path}, line {number}: channels differ in length.")
        series.append(np.stack(rows, axis=1))
        labels.append(label)
    return series, labels, classes


def load_bundled(source: str, min_length: int) -> RaggedSeries:
    """BasicMotions or JapaneseVowels: the archive's TRAIN and TEST files, pooled."""
    problem = BUNDLED[source]
    folder = sktime_data_dir() / problem
    series, labels, names, classes = [], [], [], []
    for part in ("TRAIN", "TEST"):
        path = folder / f"{problem}_{part}.ts"
        if not path.is_file():
            raise DataValidationError(f"{path}: missing from the installed sktime wheel.")
        got, got_labels, classes = read_ts(path)
        series += got
        labels += got_labels
        names += [f"{path.name}, sample {i}" for i in range(len(got))]
    width = series[0].shape[1]
    for arr, name in zip(series, names, strict=True):
        _check_values(arr, name, min_length, width)
    y = np.array([classes.index(label) for label in labels], dtype=np.int64)
    channels = CHANNELS.get(problem, tuple(f"dim{i}" for i in range(width)))
    return RaggedSeries(series, y, tuple(classes), names, channels, f"{problem} (UEA, sktime)")


def load_series_npz(path: Path, params: PrepareParams) -> RaggedSeries:
    """Arrays `x` (N, T, C) and integer `y` (N,); optional `classes` and `channels` names."""
    if not path.is_file():
        raise DataValidationError(
            f"{path}: no such file. Set prepare.path to an .npz with x (N, T, C) and y (N,)."
        )
    size = path.stat().st_size
    if size > params.max_file_bytes:
        raise DataValidationError(
            f"{path}: {size:,} bytes is over prepare.max_file_bytes ({params.max_file_bytes:,})."
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataValidationError(
            f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})."
        ) from None
    x, y = arrays.get("x"), arrays.get("y")
    if x is None or y is None:
        raise DataValidationError(f"{path}: needs arrays x and y; found {sorted(arrays)}.")
    if x.ndim != 3 or not np.issubdtype(x.dtype, np.number):
        raise DataValidationError(
            f"{path}: x has shape {x.shape} and dtype {x.dtype}; expected numbers (N, T, C)."
        )
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataValidationError(
            f"{path}: y has shape {y.shape} and dtype {y.dtype}; expected {len(x)} integer labels."
        )
    names = [f"{path}: x[{i}]" for i in range(len(x))]
    series = [row.astype(np.float32) for row in x]
    for arr, name in zip(series, names, strict=True):
        _check_values(arr, name, params.min_sequence_length, x.shape[2])
    top = int(y.max()) + 1 if len(y) else 0
    classes = tuple(str(c) for c in arrays.get("classes", np.arange(top)))
    channels = tuple(str(c) for c in arrays.get("channels", np.arange(x.shape[2])))
    owners = _owners(arrays, len(x), path)
    return RaggedSeries(series, y.astype(np.int64), classes, names, channels, str(path), owners)


def _owners(arrays: dict[str, np.ndarray], n: int, path: Path) -> tuple[str, ...]:
    """The optional `subject` (or `owner`) array: one owner per sample, for federated
    training's natural partition (one client per owner)."""
    key = next((k for k in OWNER_ARRAYS if k in arrays), None)
    if key is None:
        return ()
    owner = arrays[key]
    if owner.shape != (n,):
        raise DataValidationError(
            f"{path}: {key} has shape {owner.shape}; expected one owner per sample ({n},)."
        )
    return tuple(str(o) for o in owner)


def _read_csv(file: Path, header: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """One sample: a header row of channel names, then one row of numbers per step."""
    try:
        with file.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataValidationError(f"{file}: not a UTF-8 CSV file ({exc}).") from None
    if not rows:
        raise DataValidationError(f"{file}: empty; expected a header row naming the channels.")
    names = [c.strip() for c in rows[0]]
    if header is not None and names != header:
        raise DataValidationError(
            f"{file}: header {names} differs from the first file's {header}; every sample needs "
            "the same channels in the same order."
        )
    values = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(names):
            raise DataValidationError(
                f"{file}, row {line}: {len(row)} value(s) for {len(names)} channel(s) {names}."
            )
        try:
            values.append([float(v) for v in row])
        except ValueError as exc:
            raise DataValidationError(f"{file}, row {line}: {exc}.") from None
    return np.array(values, dtype=np.float32).reshape(-1, len(names)), names


def load_series_csv(root: Path, params: PrepareParams) -> RaggedSeries:
    """One sub-folder per class (sorted names), one .csv per sample; hidden entries skipped."""
    if not root.is_dir():
        raise DataValidationError(f"{root}: no such folder; expected one sub-folder per class.")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataValidationError(f"{root}: no class folders holding .csv files.")
    series, labels, names = [], [], []
    header: list[str] | None = None
    for label, folder in enumerate(class_dirs):
        files = sorted(p for p in folder.glob("*.csv") if not p.name.startswith("."))
        if not files:
            raise DataValidationError(f"{folder}: class '{folder.name}' holds no .csv files.")
        for file in files:
            if file.stat().st_size > params.max_file_bytes:
                raise DataValidationError(f"{file}: over prepare.max_file_bytes; refused.")
            arr, header = _read_csv(file, header)
            _check_values(arr, str(file), params.min_sequence_length, len(header))
            series.append(arr)
            labels.append(label)
            names.append(str(file))
    classes = tuple(p.name for p in class_dirs)
    y = np.array(labels, dtype=np.int64)
    return RaggedSeries(series, y, classes, names, tuple(header or ()), str(root))


def fixed_length(data: RaggedSeries, length: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(N, T, C) with zeros after each series' end, and each series' kept length. Without
    prepare.sequence_length, series of different lengths are an error naming one of each."""
    if not data.series:
        raise DataValidationError(f"{data.origin}: the dataset is empty.")
    lengths = np.array([len(s) for s in data.series], dtype=np.int64)
    if length is None:
        if (lengths != lengths[0]).any():
            odd = int(np.flatnonzero(lengths != lengths[0])[0])
            raise DataValidationError(
                f"{data.origin}: series have different lengths ({data.names[0]} has "
                f"{lengths[0]} steps, {data.names[odd]} has {lengths[odd]}; "
                f"{lengths.min()}–{lengths.max()} in all). Set prepare.sequence_length to pad "
                "or cut them to one length."
            )
        length = int(lengths[0])
    x = np.zeros((len(data.series), length, len(data.channels)), dtype=np.float32)
    for i, arr in enumerate(data.series):
        x[i, : min(len(arr), length)] = arr[:length]
    return x, np.minimum(lengths, length)


def load_sequences(params: PrepareParams) -> RaggedSeries:
    """The configured time-series source, every series checked."""
    if params.source in BUNDLED:
        return load_bundled(params.source, params.min_sequence_length)
    if params.source == "series_npz":
        return load_series_npz(Path(params.path or ""), params)
    return load_series_csv(Path(params.path or ""), params)
