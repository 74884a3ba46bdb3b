"""Stage `prepare`: load, validate, split (stratified, seeded), normalise from train only, write."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import atomic, catalog
from pipeline.core.catalog import PROCESSED_DIR, DatasetMeta
from pipeline.core.config import FederatedParams, PrepareParams
from pipeline.core.errors import ArtifactError, DataValidationError
from pipeline.data.datasets import Dataset, load_dataset

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PrepareResult:
    out_dir: Path
    meta: DatasetMeta


def content_sha256(ds: Dataset) -> str:
    """Hash of what the data says (pixels, labels, class names), independent of file format."""
    h = hashlib.sha256()
    h.update(json.dumps({"shape": list(ds.x.shape), "classes": list(ds.classes)}).encode())
    h.update(np.ascontiguousarray(ds.x, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(ds.y, dtype=np.int64).tobytes())
    return h.hexdigest()


def split_indices(y: np.ndarray, params: PrepareParams) -> dict[str, np.ndarray]:
    """Stratified train/val/test indices; the same seed and labels give the same split."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    held_out = params.val_fraction + params.test_fraction
    try:
        train, rest = train_test_split(
            idx, test_size=held_out, stratify=y, random_state=params.seed, shuffle=True
        )
        val, test = train_test_split(
            rest,
            test_size=params.test_fraction / held_out,
            stratify=y[rest],
            random_state=params.seed,
            shuffle=True,
        )
    except ValueError as exc:
        raise DataValidationError(
            f"cannot split {len(y)} samples stratified by class with val_fraction="
            f"{params.val_fraction}, test_fraction={params.test_fraction}: {exc}. "
            "Add samples or raise prepare.min_samples_per_class."
        ) from None
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _valid_steps(lengths: np.ndarray, steps: int) -> np.ndarray:
    """(N, T, 1) mask: 1 for a series' own steps, 0 for padding."""
    return (np.arange(steps)[None, :] < lengths[:, None]).astype(np.float64)[..., None]


def channel_statistics(ds: Dataset, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over the training split (a series' padding left out)."""
    channels = ds.x.shape[-1]
    values = ds.x[train].reshape(-1, channels).astype(np.float64)
    if ds.lengths is not None:
        values = values[_valid_steps(ds.lengths[train], ds.x.shape[1]).reshape(-1) > 0]
    mean, std = values.mean(axis=0), values.std(axis=0)
    return mean, np.where(std < 1e-8, 1.0, std)


def prepare(
    params: PrepareParams, out_dir: Path = PROCESSED_DIR, federated: FederatedParams | None = None
) -> PrepareResult:
    """Validate first, then write every split and meta.json in one atomic folder swap; with
    `federated`, the training split's client shards too (pipeline/data/partition.py)."""
    ds = load_dataset(params)
    parts = split_indices(ds.y, params)
    mean, std = channel_statistics(ds, parts["train"])
    arrays: dict[str, np.ndarray] = {}
    for name in SPLITS:
        sel = parts[name]
        x = (ds.x[sel] - mean) / std
        if ds.lengths is not None:  # padding stays 0 = the training mean
            x = x * _valid_steps(ds.lengths[sel], ds.x.shape[1])
        arrays[f"x_{name}"] = x.astype(np.float32)
        arrays[f"y_{name}"] = ds.y[sel].astype(np.int64)
    processed = hashlib.sha256()
    for key in sorted(arrays):
        processed.update(arrays[key].tobytes())
    meta = DatasetMeta(
        source=params.source,
        classes=list(ds.classes),
        num_classes=len(ds.classes),
        input_shape=list(ds.x.shape[1:]),
        layout=ds.layout,
        normalization={
            "mean": [round(float(m), 8) for m in mean],
            "std": [round(float(s), 8) for s in std],
            "note": "model input = (raw - mean) / std, per channel; statistics from train only"
            + ("; steps after a series' end are 0" if ds.lengths is not None else ""),
        },
        channels=list(ds.channels),
        splits={name: len(parts[name]) for name in SPLITS},
        class_counts={c: int(n) for c, n in zip(ds.classes, np.bincount(ds.y), strict=True)},
        seed=params.seed,
        data_sha256=content_sha256(ds),
        processed_sha256=processed.hexdigest(),
    )
    with atomic.atomic_dir(out_dir) as tmp:
        for key, arr in arrays.items():
            np.save(tmp / f"{key}.npy", arr, allow_pickle=False)
        catalog.write(tmp / catalog.META_FILE.name, meta)
        _partition(tmp, ds, parts["train"], arrays, meta, params.seed, federated)
    return PrepareResult(out_dir=out_dir, meta=meta)


def _partition(tmp: Path, ds: Dataset, train: np.ndarray, arrays: dict[str, np.ndarray],
               meta: DatasetMeta, seed: int, federated: FederatedParams | None) -> None:  # fmt: skip
    """clients/partitions.json: federated, a shard per client; centralized, one holder."""
    from pipeline.data import partition

    if federated is None:
        partition.write_whole(tmp, arrays["y_train"], meta.classes, seed)
        return
    owners = tuple(ds.owners[i] for i in train) if ds.owners else ()
    partition.write_shards(tmp, arrays["x_train"], arrays["y_train"], owners, meta.classes,
                           federated, seed)  # fmt: skip


@dataclass(frozen=True)
class Splits:
    """The processed data as the later stages read it."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    meta: DatasetMeta


def renormalised(x: np.ndarray, now: dict[str, Any], then: dict[str, Any]) -> np.ndarray:
    """Inputs normalised with `now`'s mean and std, normalised with `then`'s instead (a
    champion's, or a model's trained elsewhere): back to raw values, then forward again. The
    same statistics leave `x` as it is, bit for bit."""
    if [now["mean"], now["std"]] == [then["mean"], then["std"]]:
        return x

    def arrays(norm: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(norm["mean"], dtype=np.float64),
                np.asarray(norm["std"], dtype=np.float64))  # fmt: skip

    (mean_now, std_now), (mean_then, std_then) = arrays(now), arrays(then)
    raw = x.astype(np.float64) * std_now + mean_now
    return ((raw - mean_then) / std_then).astype(np.float32)


def load_meta(out_dir: Path = PROCESSED_DIR) -> DatasetMeta:
    """data/processed/meta.json, validated."""
    return catalog.read(out_dir / catalog.META_FILE.name, DatasetMeta, "prepare")


def load_processed(out_dir: Path = PROCESSED_DIR) -> Splits:
    meta = load_meta(out_dir)
    xs, ys = {}, {}
    for name in SPLITS:
        try:
            xs[name] = np.load(out_dir / f"x_{name}.npy", allow_pickle=False)
            ys[name] = np.load(out_dir / f"y_{name}.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ArtifactError(
                f"{out_dir}: split '{name}' is unreadable ({exc}); rerun `tinyops stage prepare`."
            ) from None
    return Splits(x=xs, y=ys, meta=meta)
