"""What a trained network is, independent of its weights and framework: the architecture stored
in models/trained/, and the builders every stage uses to instantiate it (torch, Keras)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import ConfigError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild the network; stored in models/trained/ beside the weights."""

    input_shape: tuple[int, ...]  # (H, W, C) images, (T, C) time series
    num_classes: int
    channels: tuple[int, ...]
    kernel_size: int = 3
    dropout: float = 0.1
    arch: str = "cnn2d"
    hidden_size: int = 32
    heads: int = 2
    stride: int = 1
    normal_class: int = 0  # autoencoder: index of the class it learns as normal

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
            arch=str(d.get("arch", "cnn2d")),
            hidden_size=int(d.get("hidden_size", 32)),
            heads=int(d.get("heads", 2)),
            stride=int(d.get("stride", 1)),
            normal_class=int(d.get("normal_class", 0)),
        )


def architecture_for(
    params: Any, input_shape: Any, num_classes: int, classes: Sequence[str] = ()
) -> Architecture:
    """The architecture params.yaml's model section gives for this data (`classes` names the
    dataset's classes, for model.normal_class)."""
    m = params.model
    return Architecture(
        input_shape=tuple(int(v) for v in input_shape),  # type: ignore[arg-type]
        num_classes=int(num_classes),
        channels=tuple(m.channels),
        kernel_size=m.kernel_size,
        dropout=m.dropout,
        arch=m.arch,
        hidden_size=m.hidden_size,
        heads=m.heads,
        stride=m.stride,
        normal_class=normal_index(m.normal_class, classes),
    )


def normal_index(name: str | None, classes: Sequence[str]) -> int:
    """model.normal_class as an index into the dataset's classes (null: the first)."""
    if name is None:
        return 0
    if name not in classes:
        import difflib

        close = difflib.get_close_matches(name, list(classes), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"model.normal_class {name!r} is not a class of this dataset "
            f"({', '.join(classes)}){hint}"
        )
    return list(classes).index(name)


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
}


def build_keras_model(arch: Architecture) -> Any:
    """The same network in Keras 3 (TensorFlow backend), layer for layer."""
    import importlib

    return importlib.import_module(f"pipeline.models.{KERAS_FAMILIES[arch.arch]}").build(arch)


def block_parameters(arch: Architecture) -> list[int]:
    """Parameters per splittable block, in order: what pipeline stages are balanced by and what
    the per-worker memory check adds up (no torch needed for cnn2d). A sequence family is one
    block: its count comes from building it."""
    from pipeline.models import cnn2d

    if arch.arch == "cnn2d":
        return cnn2d.block_parameters(arch)
    return [count_parameters(build_model(arch))]


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
