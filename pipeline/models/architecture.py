"""What a trained network is, independent of its weights and framework: the architecture stored
in models/trained/, and the builders every stage uses to instantiate it (torch, Keras)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild the network; stored in models/trained/ beside the weights."""

    input_shape: tuple[int, int, int]  # H, W, C
    num_classes: int
    channels: tuple[int, ...]
    kernel_size: int = 3
    dropout: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Architecture:
        return cls(
            input_shape=tuple(int(v) for v in d["input_shape"]),  # type: ignore[arg-type]
            num_classes=int(d["num_classes"]),
            channels=tuple(int(c) for c in d["channels"]),
            kernel_size=int(d["kernel_size"]),
            dropout=float(d["dropout"]),
        )


def architecture_for(params: Any, input_shape: Any, num_classes: int) -> Architecture:
    """The architecture params.yaml's model section gives for this data."""
    m = params.model
    return Architecture(
        input_shape=tuple(int(v) for v in input_shape),  # type: ignore[arg-type]
        num_classes=int(num_classes),
        channels=tuple(m.channels),
        kernel_size=m.kernel_size,
        dropout=m.dropout,
    )


def build_model(arch: Architecture) -> torch.nn.Module:
    """Instantiate the network for `arch` (weights initialised from the current torch RNG).

    Model families live one module each beside this one; today the image CNN.
    """
    from pipeline.models import cnn2d

    return cnn2d.build(arch)


def build_keras_model(arch: Architecture) -> Any:
    """The same network in Keras 3 (TensorFlow backend), layer for layer."""
    from pipeline.models import keras_cnn2d

    return keras_cnn2d.build(arch)


def block_parameters(arch: Architecture) -> list[int]:
    """Parameters per splittable block, in order: what pipeline stages are balanced by and what
    the per-worker memory check adds up (no torch needed)."""
    from pipeline.models import cnn2d

    return cnn2d.block_parameters(arch)


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
