"""The builders every stage uses to instantiate a network (torch, Keras) from its architecture
(pipeline/models/spec.py), one module per family beside this one, imported only when built."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.models.spec import (
    Architecture,
    architecture_for,
    cnn2d_block_parameters,
    normal_index,
)

if TYPE_CHECKING:
    import torch

__all__ = ["Architecture", "architecture_for", "normal_index"]


# model.arch → the module (beside this one) whose build(arch) makes the torch network.
FAMILIES = {
    "cnn2d": "cnn2d",
    "cnn1d": "conv1d",
    "dscnn1d": "conv1d",
    "tcn": "conv1d",
    "gru": "recurrent",
    "lstm": "recurrent",
    "transformer": "transformer",
    "autoencoder": "autoencoder",
    "custom": "custom",
}


def build_model(arch: Architecture) -> torch.nn.Module:
    """Instantiate the network for `arch` (weights initialised from the current torch RNG).

    Model families live one module each beside this one (FAMILIES)."""
    import importlib

    return importlib.import_module(f"pipeline.models.{FAMILIES[arch.arch]}").build(arch)


# model.arch → the module whose build(arch) makes the Keras network (config.KERAS_ARCHS).
KERAS_FAMILIES = {
    "cnn2d": "keras_cnn2d",
    "cnn1d": "keras_conv1d",
    "dscnn1d": "keras_conv1d",
    "tcn": "keras_conv1d",
    "custom": "keras_custom",
}


def build_keras_model(arch: Architecture) -> Any:
    """The same network in Keras 3 (TensorFlow backend), layer for layer."""
    import importlib

    return importlib.import_module(f"pipeline.models.{KERAS_FAMILIES[arch.arch]}").build(arch)


def block_parameters(arch: Architecture, framework: str = "torch") -> list[int]:
    """Parameters per splittable block, in order: what pipeline stages are balanced by and what
    the per-worker memory check adds up (no torch needed for cnn2d). Any other family is one
    block, counted by building it in its framework (a custom Keras model has no torch twin)."""
    if arch.arch == "cnn2d":
        return cnn2d_block_parameters(arch)
    return [PARAMETER_COUNTS[framework](arch)]


PARAMETER_COUNTS = {
    "torch": lambda arch: count_parameters(build_model(arch)),
    "keras": lambda arch: int(build_keras_model(arch).count_params()),
}


def prune_to_blocks(model: torch.nn.Module, blocks: set[int]) -> torch.nn.Module:
    """`model` keeping only `blocks` (original parameter names): one pipeline worker's share."""
    from pipeline.models import cnn2d

    return cnn2d.prune(model, blocks)


def pipeline_stage(model: torch.nn.Module, blocks: range, n_blocks: int) -> torch.nn.Module:
    """The module that runs `blocks` of `model` as one pipeline stage."""
    from pipeline.models import cnn2d

    return cnn2d.stage(model, blocks, n_blocks)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
