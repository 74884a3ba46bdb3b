"""Data sources (images: digits, npz, imagefolder; time series: pipeline/data/sequences.py) and
the checks every dataset passes before use."""

from __future__ import annotations

import dataclasses
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.catalog import FIELD_LABELLED
from pipeline.core.config import PrepareParams
from pipeline.core.errors import DataValidationError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass(frozen=True)
class Dataset:
    """Validated samples: x is float32 NHWC (images) or NTC (time series, zero after each
    series' `lengths`), y int64 in [0, len(classes))."""

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    origin: str
    lengths: np.ndarray | None = None
    channels: tuple[str, ...] = ()
    owners: tuple[str, ...] = ()  # each sample's owner, when the data names one

    @property
    def layout(self) -> str:
        return "NHWC" if self.lengths is None else "NTC"


def _check_size(path: Path, limit: int) -> None:
    size = path.stat().st_size
    if size > limit:
        raise DataValidationError(
            f"{path}: {size:,} bytes is over the {limit:,}-byte limit for one data file "
            "(prepare.max_file_bytes); refused before reading. Raise the limit if this is intended."
        )


def load_digits_dataset() -> Dataset:
    """scikit-learn's bundled 8×8 handwritten digits (1,797 samples, values 0–16); no download."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[..., None]
    y = bunch.target.astype(np.int64)
    return Dataset(x=x, y=y, classes=tuple(str(c) for c in bunch.target_names), origin="digits")


def load_npz_dataset(path: Path, max_bytes: int) -> Dataset:
    """Arrays `x` (N,H,W) or (N,H,W,C) and integer `y` (N,); optional `classes` (K,) of names."""
    if not path.is_file():
        raise DataValidationError(
            f"{path}: no such file. Set prepare.path to an .npz with arrays x and y."
        )
    _check_size(path, max_bytes)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"x", "y"} - set(archive.files)
            if missing:
                raise DataValidationError(
                    f"{path}: missing array(s) {sorted(missing)}; found {sorted(archive.files)}. "
                    "Save with np.savez(path, x=images, y=labels)."
                )
            x, y = archive["x"], archive["y"]
            classes = archive["classes"] if "classes" in archive.files else None
    except DataValidationError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataValidationError(
            f"{path}: not a readable .npz file ({type(exc).__name__}: {exc}). "
            "It may be truncated or hold pickled objects, which are never loaded."
        ) from None
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataValidationError(
            f"{path}: x has shape {x.shape}; expected (N, H, W) or (N, H, W, C) with C = 1 or 3."
        )
    if not (np.issubdtype(x.dtype, np.number) and not np.issubdtype(x.dtype, np.complexfloating)):
        raise DataValidationError(f"{path}: x has dtype {x.dtype}; expected integers or floats.")
    if y.ndim != 1:
        raise DataValidationError(
            f"{path}: y has shape {y.shape}; expected one label per sample (N,)."
        )
    if len(x) != len(y):
        raise DataValidationError(
            f"{path}: x has {len(x)} samples but y has {len(y)} labels; they must match."
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise DataValidationError(
            f"{path}: y has dtype {y.dtype}; labels must be integers 0..K-1 (class indices)."
        )
    names: tuple[str, ...] | None = None
    if classes is not None:
        if classes.ndim != 1 or classes.dtype.kind not in "US":
            raise DataValidationError(f"{path}: classes must be a 1-D array of strings.")
        names = tuple(str(c) for c in classes)
    else:
        top = int(y.max()) if len(y) else -1
        names = tuple(str(i) for i in range(max(top + 1, 0)))
    return Dataset(x=x.astype(np.float32), y=y.astype(np.int64), classes=names, origin=str(path))


def load_imagefolder_dataset(root: Path, params: PrepareParams) -> Dataset:
    """One sub-folder per class (sorted names), PNG/JPEG files; hidden entries are skipped."""
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DataValidationError(
            f"{root}: no such folder. Set prepare.path to a folder of class folders."
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataValidationError(
            f"{root}: no class folders found; expected one sub-folder per class holding PNG/JPEG files."
        )
    mode = "L" if params.color_mode == "grayscale" else "RGB"
    height, width = params.image_size
    images: list[np.ndarray] = []
    labels: list[int] = []
    for label, folder in enumerate(class_dirs):
        files = sorted(
            p
            for p in folder.iterdir()
            if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise DataValidationError(f"{folder}: class '{folder.name}' holds no PNG/JPEG files.")
        for file in files:
            if not file.is_file():
                raise DataValidationError(
                    f"{file}: not a regular file (a folder, a broken link or a link loop). "
                    "Remove it or replace it with the image itself."
                )
            _check_size(file, params.max_file_bytes)
            try:
                with Image.open(file) as img:
                    img.load()
                    img = img.convert(mode)
                    if img.size != (width, height):
                        if not params.resize:
                            raise DataValidationError(
                                f"{file}: image is {img.size[1]}×{img.size[0]} (H×W) but "
                                f"prepare.image_size is {height}×{width} and prepare.resize is false."
                            )
                        img = img.resize((width, height), Image.Resampling.BILINEAR)
                    arr = np.asarray(img, dtype=np.float32)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise DataValidationError(
                    f"{file}: not a readable image ({type(exc).__name__}: {exc}). "
                    "Remove or replace the file."
                ) from None
            images.append(arr if arr.ndim == 3 else arr[..., None])
            labels.append(label)
    return Dataset(
        x=np.stack(images),
        y=np.asarray(labels, dtype=np.int64),
        classes=tuple(p.name for p in class_dirs),
        origin=str(root),
    )


def validate_dataset(ds: Dataset, min_per_class: int) -> None:
    """Checks that hold for every source; the message names the origin and the first bad index."""
    where = ds.origin
    if len(ds.x) == 0:
        raise DataValidationError(f"{where}: the dataset is empty.")
    finite = np.isfinite(ds.x).reshape(len(ds.x), -1).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        kind = "NaN" if np.isnan(ds.x[bad]).any() else "inf"
        raise DataValidationError(
            f"{where}: sample x[{bad}] contains {kind} ({int((~finite).sum())} bad sample(s) in all). "
            "Clean or drop them before training."
        )
    k = len(ds.classes)
    out_of_range = (ds.y < 0) | (ds.y >= k)
    if out_of_range.any():
        bad = int(np.flatnonzero(out_of_range)[0])
        raise DataValidationError(
            f"{where}: label y[{bad}] = {int(ds.y[bad])} is out of range; labels must be in 0..{k - 1} "
            f"for {k} classes."
        )
    if k < 2:
        raise DataValidationError(f"{where}: only {k} class found; a classifier needs at least 2.")
    counts = np.bincount(ds.y, minlength=k)
    low = [(ds.classes[i], int(c)) for i, c in enumerate(counts) if c < min_per_class]
    if low:
        listed = ", ".join(f"'{name}' has {c}" for name, c in low)
        raise DataValidationError(
            f"{where}: {listed} sample(s); every class needs at least {min_per_class} "
            "(prepare.min_samples_per_class). Add samples or drop the class."
        )


def load_dataset(params: PrepareParams) -> Dataset:
    """Load the configured source and validate it; nothing is written here."""
    if params.is_sequence:
        from pipeline.data import sequences

        data = sequences.load_sequences(params)
        x, lengths = sequences.fixed_length(data, params.sequence_length)
        ds = Dataset(x, data.y, data.classes, data.origin, lengths, data.channels, data.owners)
    elif params.source == "digits":
        ds = load_digits_dataset()
    elif params.source == "npz":
        ds = load_npz_dataset(Path(params.path or ""), params.max_file_bytes)
    else:
        ds = load_imagefolder_dataset(Path(params.path or ""), params)
    ds = with_field_samples(ds)
    validate_dataset(ds, params.min_samples_per_class)
    return ds


def with_field_samples(ds: Dataset, path: Path = FIELD_LABELLED) -> Dataset:
    """The source plus the labelled samples devices sent back (data/raw/field_labelled.npz, raw
    units), when there are any: the next split includes them. Their classes are matched by name."""
    if not path.is_file():
        return ds
    try:
        with np.load(path, allow_pickle=False) as data:
            x, y = data["x"].astype(np.float32), data["y"].astype(np.int64)
            names = [str(c) for c in data["classes"]]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DataValidationError(
            f"{path}: not the labelled field samples (arrays x, y, classes) that "
            f"`tinyops field monitor --retrain` writes ({exc}). Remove it, or write it again."
        ) from None
    if len(y) != len(x) or (len(y) and (y.min() < 0 or y.max() >= len(names))):
        raise DataValidationError(f"{path}: y must give a class of `classes` for each sample of x")
    if x.shape[1:] != ds.x.shape[1:]:
        raise DataValidationError(
            f"{path}: samples of shape {list(x.shape[1:])}, the source's are {list(ds.x.shape[1:])}"
        )
    unknown = sorted(set(names) - set(ds.classes))
    if unknown:
        raise DataValidationError(
            f"{path}: classes {unknown} are not the source's {list(ds.classes)}"
        )
    index = np.asarray([ds.classes.index(n) for n in names], dtype=np.int64)
    lengths = (
        None if ds.lengths is None else np.concatenate([ds.lengths, np.full(len(x), x.shape[1])])
    )
    return dataclasses.replace(
        ds, x=np.concatenate([ds.x, x]), y=np.concatenate([ds.y, index[y]]), lengths=lengths,
        origin=f"{ds.origin} + {len(x)} field samples",
        owners=ds.owners + ("field",) * len(x) if ds.owners else (),
    )  # fmt: skip
