"""models/trained/model.pt: the one place that writes and reads a torch-trained model.

The file holds the full state dict and the architecture, whatever parallelism trained it, so
export, evaluate and deploy need to know nothing about training. It loads with
`torch.load(weights_only=True)`: no pickled code is ever executed. (A Keras-trained model is
pipeline/models/keras_store.py's.)
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core import atomic
from pipeline.core.errors import ArtifactError
from pipeline.models.architecture import Architecture, build_model

if TYPE_CHECKING:
    import torch

MODEL_FORMAT = "tinyops.model/1"


def save_torch(obj: Any, path: Path) -> None:
    """torch.save through a temp file and rename: a reader never sees half a file."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic.write_bytes(path, buf.getvalue())


def save_model(
    trained_dir: Path,
    arch: Architecture,
    state_dict: dict[str, torch.Tensor],
    meta: dict[str, Any],
    best_epoch: int,
) -> None:
    """The trained model with what firmware and export need beside the weights. The folder is
    replaced whole, so no file of a model another framework trained stays beside it."""
    with atomic.atomic_dir(trained_dir) as tmp:
        save_torch(
            {
                "format": MODEL_FORMAT,
                "architecture": arch.to_dict(),
                "state_dict": state_dict,
                "classes": meta["classes"],
                "normalization": meta["normalization"],
                "best_epoch": best_epoch,
            },
            tmp / "model.pt",
        )


def load_model(path: Path) -> tuple[torch.nn.Module, Architecture, dict[str, Any]]:
    """Rebuild the trained network in eval mode, with its architecture and the stored blob."""
    import torch

    if not path.is_file():
        raise ArtifactError(f"{path}: missing. Run `tinyops stage train` first.")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        arch = Architecture.from_dict(blob["architecture"])
        model = build_model(arch)
        model.load_state_dict(blob["state_dict"])
    except Exception as exc:
        raise ArtifactError(
            f"{path}: not a usable tinyops model ({type(exc).__name__}: {exc}). "
            "Rerun `tinyops stage train`."
        ) from None
    return model.eval(), arch, blob


def predict(path: Path, x: Any) -> tuple[Any, Architecture]:
    """fp32 outputs of the trained model on float32 `x` (evaluate's first level), and its
    architecture (which says what the outputs mean)."""
    import torch

    model, arch, _ = load_model(path)
    torch.set_num_threads(1)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy(), arch
