"""What a trained network is, independent of its weights and framework: the architecture stored
in models/trained/, and the arithmetic that needs no framework (parameter counts per block).

A leaf: it imports no model family, so every family, the builders (architecture.py) and the
torch-free launcher can all depend on it without a cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.core.errors import ConfigError


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
    module: str = ""  # custom: user_models.NAME:FUNCTION, the factory that builds it
    task: str = "classification"  # custom, tflite: classification or reconstruction
    path: str = ""  # tflite: user_models/NAME.tflite, the file it was given as

    def to_dict(self) -> dict[str, Any]:
        """The stored form; a bundled family's has no module, task or path, as before they
        existed, so its model.pt bytes stay what they were."""
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["channels"] = list(self.channels)
        kept = {"custom": ("module", "task"), "tflite": ("task", "path")}.get(self.arch, ())
        for key in ("module", "task", "path"):
            if key not in kept:
                del d[key]
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
            module=str(d.get("module", "")),
            task=str(d.get("task", "classification")),
            path=str(d.get("path", "")),
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
        module=m.module or "",
        task=m.task,
        path=m.path or "",
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


def cnn2d_block_parameters(arch: Architecture) -> list[int]:
    """Parameters of each cnn2d block (conv + BatchNorm; the last block carries the pooled linear
    head), from the architecture alone, so the launcher can check memory without importing torch."""
    counts, c_in = [], arch.input_shape[2]
    for c_out in arch.channels:
        counts.append(c_in * c_out * arch.kernel_size**2 + 2 * c_out)
        c_in = c_out
    counts[-1] += c_in * arch.num_classes + arch.num_classes
    return counts
