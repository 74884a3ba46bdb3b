"""Parent runs say what ran: dataset, family, framework, strategy and params hash."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.core.config import Params, parse_params, with_example
from pipeline.orchestration.run import run_name

REPO = Path(__file__).resolve().parents[2]


def _params(example: str | None, arch: str | None, model: dict[str, str]) -> Params:
    """params.yaml with an example overlaid, as `tinyops example FILE --arch ARCH` writes it."""
    merged = yaml.safe_load((REPO / "params.yaml").read_text())
    if example:
        overlay = yaml.safe_load((REPO / "examples" / example).read_text())
        merged = with_example(merged, overlay, example, arch)
    merged["model"] = {**merged["model"], **model}
    return parse_params(merged)


@pytest.mark.parametrize(
    ("example", "arch", "model", "expected"),
    [
        (None, None, {}, "digits-cnn2d-torch-ddp2 · 3f2a1c"),
        ("basicmotions.yaml", "gru", {}, "basicmotions-gru-torch-ddp2 · 3f2a1c"),
        (
            "basicmotions.yaml",
            "tcn",
            {"framework": "keras"},
            "basicmotions-tcn-keras-ddp2 · 3f2a1c",
        ),
        ("japanesevowels_anomaly.yaml", None, {}, "japanesevowels-autoencoder-torch-ddp2 · 3f2a1c"),
        ("mobilenet_tiny.yaml", None, {}, "digits-mobilenet_tiny-torch-ddp2 · 3f2a1c"),
        (
            "mobilenet_tiny.yaml",
            None,
            {"framework": "keras", "module": "user_models.keras_mobilenet_tiny:build"},
            "digits-keras_mobilenet_tiny-keras-ddp2 · 3f2a1c",
        ),
    ],
)
def test_run_name_names_family_and_framework(
    example: str | None, arch: str | None, model: dict, expected: str
) -> None:
    assert run_name(_params(example, arch, model), "3f2a1c9e") == expected
