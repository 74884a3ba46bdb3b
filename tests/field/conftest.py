"""A workspace with two deployed bundles' manifests (an int8 MCU bundle, a float LiteRT one) as
the deploy stage writes them, and tokens for its devices: what the field endpoint reads."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.core import catalog
from pipeline.core.catalog import Manifest
from pipeline.field.store import FieldStore
from pipeline.field.tokens import TokenStore

MCU, PI = "stm32f746", "raspberry_pi_4"
LABELS = [str(i) for i in range(10)]
SHA = "ab" * 32


def manifest(device: str, int8: bool) -> Manifest:
    quant = {"input_scale": 0.0104, "input_zero_point": -50, "output_scale": 0.0999,
             "output_zero_point": -32} if int8 else {}  # fmt: skip
    return Manifest(
        device=device, runtime="tflm" if int8 else "litert", variant="int8" if int8 else "fp32",
        model_file="model.tflite", model_sha256=SHA, model_bytes=1, labels=LABELS,
        task={"kind": "classification"}, input_shape=[8, 8, 1], layout="HWC", **quant,
    )  # fmt: skip


def batch(batch_id: str, device: str = MCU, n: int = 4, **changes: object) -> dict:
    """A valid batch for the device's bundle (int8 values for the MCU), with `changes` over it."""
    value = -3 if device == MCU else 0.25
    body = {
        "device": device, "batch_id": batch_id, "model_sha256": SHA,
        "samples": [[[[value + i % 3] for _ in range(8)] for _ in range(8)] for i in range(n)],
        "outputs": [[i - 5 for i in range(10)] for _ in range(n)],
        "labels": [str(i % 10) for i in range(n)],
    }  # fmt: skip
    return {**body, **changes}


@dataclass
class Field:
    root: Path
    store: FieldStore
    tokens: TokenStore
    token: dict[str, str]  # device → an active token


@pytest.fixture
def field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Field]:
    monkeypatch.chdir(tmp_path)
    for device, int8 in ((MCU, True), (PI, False)):
        catalog.write(catalog.DEPLOY_ROOT / device / "manifest.json", manifest(device, int8))
    tokens = TokenStore()
    yield Field(
        tmp_path / catalog.FIELD_DIR, FieldStore(), tokens, {d: tokens.issue(d) for d in (MCU, PI)}
    )
