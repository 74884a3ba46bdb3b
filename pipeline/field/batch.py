"""One batch of field data, as a device or its gateway sends it, checked against the manifest of
the bundle deployed to that device: the shape it was built for, the dtype it takes (whole numbers
in int8's range for an int8 input, finite floats otherwise), an output per class, labels among
its classes. Anything else is refused whole, with the reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.core.catalog import Manifest
from pipeline.core.errors import FieldRefusal

NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # a file name part: no dots, slashes or spaces


class Batch(BaseModel):
    """The wire format (JSON). `samples` are the model's inputs as the device fed them (int8 for
    an int8 bundle); `outputs` its raw outputs, one row per sample; `labels`, where known, a
    class name or index per sample. `model_sha256` names the model that saw them (a device may
    still run an older one than deploy/ holds)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    device: str = Field(pattern=NAME)
    batch_id: str = Field(pattern=NAME)
    model_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    samples: list[Any] = Field(min_length=1)
    outputs: list[Any] = Field(min_length=1)
    labels: list[str | int] | None = None


@dataclass(frozen=True)
class Checked:
    """A batch that passed: arrays as stored."""

    batch: Batch
    samples: np.ndarray
    outputs: np.ndarray
    labels: np.ndarray  # class index per sample, -1 where none came back


def parse(body: object) -> Batch:
    """The batch, or a refusal naming the first bad field."""
    try:
        return Batch.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "batch"
        raise FieldRefusal(f"{where}: {err['msg']}") from None


def check(batch: Batch, manifest: Manifest, max_samples: int) -> Checked:
    """The batch's arrays, validated against the device's bundle."""
    n = len(batch.samples)
    if n > max_samples:
        raise FieldRefusal(f"{n} samples in one batch; at most {max_samples}", http_status=413)
    int8_in, int8_out = manifest.input_scale is not None, manifest.output_scale is not None
    samples = _array("samples", batch.samples, (n, *manifest.input_shape), int8_in)
    width = len(manifest.labels) if (manifest.task or {}).get("kind") == "classification" else None
    outputs = _array("outputs", batch.outputs, (n, width), int8_out)
    return Checked(batch, samples, outputs, _labels(batch.labels, n, manifest.labels))


def _array(name: str, values: list, shape: tuple[int | None, ...], int8: bool) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError):
        raise FieldRefusal(f"{name}: not a rectangular array of numbers") from None
    fits = array.ndim == len(shape) and all(
        want in (None, got) for want, got in zip(shape, array.shape, strict=True)
    )
    if not fits:
        takes = ", ".join("any" if want is None else str(want) for want in shape)
        raise FieldRefusal(f"{name}: shape {list(array.shape)}; the bundle takes [{takes}]")
    if not np.isfinite(array).all():
        raise FieldRefusal(f"{name}: NaN or infinite values")
    if not int8:
        return array.astype(np.float32)
    if (array != np.round(array)).any() or array.min() < -128 or array.max() > 127:
        raise FieldRefusal(f"{name}: the bundle is int8; values must be whole numbers in -128..127")
    return array.astype(np.int8)


def _labels(labels: list[str | int] | None, n: int, classes: list[str]) -> np.ndarray:
    if labels is None:
        return np.full(n, -1, dtype=np.int16)
    if len(labels) != n:
        raise FieldRefusal(f"labels: {len(labels)} for {n} samples")
    index = {name: i for i, name in enumerate(classes)}
    out = []
    for label in labels:
        found = index.get(label) if isinstance(label, str) else label
        if found is None or not 0 <= found < len(classes):
            raise FieldRefusal(f"labels: {label!r} is not a class of the bundle ({classes})")
        out.append(found)
    return np.asarray(out, dtype=np.int16)
