"""Stage `train` for model.arch tflite: a model trained elsewhere is not trained again but
adopted. The file is checked against the data before anything downstream trusts it (a
flatbuffer, fully int8, the data's input shape, one output per class or the rebuilt input),
scored on the validation split in LiteRT, and recorded in models/trained/ with the labels and
the normalisation it expects, so export, evaluate, deploy and the firmware check run unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline.core import atomic, catalog
from pipeline.core.catalog import DatasetMeta, TrainSummary
from pipeline.core.config import ModelParams, Params
from pipeline.core.errors import ConfigError
from pipeline.core.preflight import require_model_file
from pipeline.data.prepare import Splits, renormalised
from pipeline.models import tflite_store
from pipeline.models.spec import Architecture, architecture_for
from pipeline.models.tasks import task_for
from pipeline.tflite import litert
from pipeline.tflite.flatbuffer import ModelInfo, check_full_int8

MAX_MODEL_BYTES = 64 * 1024 * 1024  # refused before it is read: no MCU or phone model is larger


def read_file(path: Path) -> bytes:
    """model.path's bytes; a missing or oversized file is an error naming the key."""
    require_model_file(path)
    if path.stat().st_size > MAX_MODEL_BYTES:
        raise ConfigError(f"model.path {path}: {path.stat().st_size:,} B, over 64 MiB")
    return path.read_bytes()


def check_io(info: ModelInfo, arch: Architecture, source: str) -> None:
    """The model's input is one sample of the data; its output one score per class (or, for a
    reconstruction model, the rebuilt input)."""
    inp, out = info.tensors[info.inputs[0]], info.tensors[info.outputs[0]]
    want_in = (1, *arch.input_shape)
    rebuilds = task_for(arch).kind == "reconstruction"
    want_out = math.prod(arch.input_shape) if rebuilds else arch.num_classes
    what = "the input rebuilt" if rebuilds else f"{arch.num_classes} classes"
    if tuple(inp.shape) != want_in:
        raise ConfigError(
            f"model.path {source}: input shape {list(inp.shape)}, but the prepared data gives "
            f"{list(want_in)} (batch 1, then the sample's shape)"
        )
    if math.prod(out.shape) != want_out:
        raise ConfigError(
            f"model.path {source}: output shape {list(out.shape)}, but the data needs {want_out} "
            f"values per sample ({what}; set model.task if it rebuilds its input)"
        )


def labels_for(model: ModelParams, meta: DatasetMeta) -> list[str]:
    """model.labels, which must be the data's classes in the model's output order."""
    if model.labels is None or list(model.labels) == list(meta.classes):
        return list(meta.classes)
    raise ConfigError(
        f"model.labels {list(model.labels)} must be the data's classes in the model's output "
        f"order: {list(meta.classes)} (the prepared data orders its classes by name; name them "
        "so that this order is the model's)"
    )


def normalization_for(model: ModelParams, meta: DatasetMeta) -> dict[str, Any]:
    """The mean and std the model's input expects: model.input_mean/std, else prepare's."""
    if model.input_mean is None:
        return {k: meta.normalization[k] for k in ("mean", "std")}
    channels = meta.input_shape[-1]
    if len(model.input_mean) != channels:
        raise ConfigError(
            f"model.input_mean has {len(model.input_mean)} values; the data has {channels} "
            "channel(s), one value each"
        )
    return {"mean": list(model.input_mean), "std": list(model.input_std or ())}


def parameters(info: ModelInfo) -> int:
    """The values stored in the file's constant tensors (weights and biases)."""
    return sum(math.prod(t.shape) for t in info.tensors if t.is_constant)


def adopt(params: Params, data: Splits, trained_dir: Path = catalog.TRAINED_DIR) -> dict[str, Any]:
    """Check model.path against the data, record it in models/trained/ and write
    metrics/train.json (its validation figure in LiteRT; no epochs)."""
    meta, source = data.meta, str(params.model.path)
    model = read_file(Path(source))
    info = check_full_int8(model, f"model.path {source}")
    arch = architecture_for(params, meta.input_shape, meta.num_classes, meta.classes)
    check_io(info, arch, source)
    card = {"classes": labels_for(params.model, meta),
            "normalization": normalization_for(params.model, meta)}  # fmt: skip
    x_val = renormalised(data.x["val"], meta.normalization, card["normalization"])
    outputs = litert.dequantized(model, litert.run_batch(model, x_val)[0]).reshape(len(x_val), -1)
    quality = task_for(arch).quality(outputs, x_val, data.y["val"])
    tflite_store.save_model(trained_dir, model, arch, card)
    summary = TrainSummary(
        framework="tflite", best_epoch=0, epochs_run=0, val_loss=None, val_accuracy=quality,
        parameters=parameters(info), training_samples=0, world_size=0, strategy="adopted",
    )  # fmt: skip
    catalog.write(catalog.TRAIN_METRICS, summary)
    atomic.write_text(catalog.TRAIN_HISTORY, "epoch,train_loss,val_loss,val_accuracy\n")
    catalog.CHECKPOINT_DIR.mkdir(parents=True, exist_ok=True)
    print(f"train: adopted {source} ({len(model):,} B int8, {len(info.ops)} ops); validation "
          f"{task_for(arch).metric} {quality:.4f} in LiteRT")  # fmt: skip
    return summary.model_dump(mode="json", exclude_none=True)
