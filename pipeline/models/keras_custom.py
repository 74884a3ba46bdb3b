"""model.arch custom with model.framework keras: the factory returns a keras.Model
(pipeline/models/custom.py says what it is called with)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.models.custom import call

if TYPE_CHECKING:
    from pipeline.models.spec import Architecture


def build(arch: Architecture) -> Any:
    import keras

    return call(arch, keras.Model, "keras")
