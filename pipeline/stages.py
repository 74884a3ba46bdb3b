"""Each stage as the CLI (and so dvc.yaml) calls it: validate params, open the stage's nested
MLflow run, call the stage's plain function, log what it produced.

`STAGES` is keyed by dvc.yaml's stage names (tests/orchestration/test_dvc.py proves the two lists equal), and
`recorded` writes the status file from which the run path learns that a stage ran and how it
ended, instead of reading DVC's printed text.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.core import catalog, tracking
from pipeline.core.config import Params, load_params, require_device
from pipeline.core.errors import TinyopsError

STAGE_SECTIONS = {
    "prepare": ("prepare", "train.paradigm", "train.federated"),
    "train": ("train", "model"),
    "export": ("export", "train.seed", "train.lr", "train.batch_size", "evaluate.max_int8_drop"),
    "evaluate": ("evaluate",),
}


def stage_params(params: Params, stage: str) -> dict[str, str]:
    """The params.yaml keys a stage reads, as dvc.yaml lists them, flattened for MLflow."""
    dumped = params.model_dump(mode="json")
    picked: dict[str, Any] = {}
    for key in STAGE_SECTIONS[stage]:
        section, _, leaf = key.partition(".")
        picked[key] = dumped[section][leaf] if leaf else dumped[section]
    return tracking.flatten("", picked)


def _exit_code(exc: BaseException | None) -> int:
    if exc is None:
        return 0
    if isinstance(exc, TinyopsError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 128 + int(getattr(exc, "signum", signal.SIGINT))
    return 1


@contextlib.contextmanager
def recorded(target: str) -> Iterator[None]:
    """Write <status dir>/<target>.json with the stage's exit code however it ends, when the run
    path asked for it (catalog.ENV_STAGE_STATUS)."""
    folder = os.environ.get(catalog.ENV_STAGE_STATUS)
    error: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        error = exc
        raise
    finally:
        if folder:
            _write_status(Path(folder), target, error)


def _write_status(folder: Path, target: str, error: BaseException | None) -> None:
    status = catalog.StageStatus(
        target=target, exit_code=_exit_code(error), error=str(error or "")[:2000]
    )
    catalog.write(catalog.stage_status_file(target, folder), status)


def run_prepare(params_path: Path) -> dict[str, Any]:
    from pipeline.data.prepare import prepare

    params = load_params(params_path)
    with tracking.stage_run(
        "prepare", stage_params(params, "prepare"), tracking.run_tags("prepare")
    ) as run:
        federated = params.train.federated if params.train.federated_on else None
        meta = prepare(params.prepare, federated=federated).meta
        run.set_tags({"data_sha256": meta.data_sha256})
        run.log_metrics(
            {f"{k}_samples": v for k, v in meta.splits.items()} | {"num_classes": meta.num_classes}
        )
        run.log_artifact(catalog.META_FILE)
    return meta.model_dump()


def run_train(params_path: Path) -> dict[str, Any]:
    params = load_params(params_path)
    with tracking.stage_run(
        "train", stage_params(params, "train"), tracking.run_tags("train")
    ) as run:
        summary = TRAINERS[params.model.trainer](params, params_path, run)
        _log_train_summary(run, summary)
        run.log_artifact(catalog.TRAIN_HISTORY)
        if params.train.federated_on:
            _log_partitions(run)
    return summary


def _train_workers(params: Params, params_path: Path, run: tracking.Run) -> dict[str, Any]:
    """torch or Keras: the workers, launched and watched (pipeline/training/launcher.py)."""
    from pipeline.data.prepare import load_meta
    from pipeline.models.architecture import architecture_for, block_parameters
    from pipeline.training.launcher import train

    meta = load_meta()
    blocks = block_parameters(
        architecture_for(params, meta.input_shape, meta.num_classes, meta.classes),
        params.model.framework,
    )
    result = train(params, params_path, meta.splits["train"], run=run, block_params=blocks)
    if result.timing:
        run.log_metrics(result.timing)
    return result.summary


def _adopt(params: Params, params_path: Path, run: tracking.Run) -> dict[str, Any]:
    """model.arch tflite: the given model checked and recorded (pipeline/training/adopt.py)."""
    from pipeline.data.prepare import load_processed
    from pipeline.training.adopt import adopt

    return adopt(params, load_processed())


# model.trainer → what makes models/trained/: workers that train, or a model adopted as given.
TRAINERS: dict[str, Callable[[Params, Path, tracking.Run], dict[str, Any]]] = {
    "torch": _train_workers,
    "keras": _train_workers,
    "tflite": _adopt,
}


def _log_partitions(run: tracking.Run) -> None:
    """A federated job's client shards: partitions.json and its plot, beside the rounds."""
    import tempfile

    from pipeline.core.charts import partition_chart

    parts = catalog.read(catalog.PARTITIONS_FILE, catalog.Partitions, "prepare")
    run.log_artifact(catalog.PARTITIONS_FILE, "partitions")
    with tempfile.TemporaryDirectory() as tmp:
        plot = Path(tmp) / catalog.PARTITIONS_PNG.name
        plot.write_bytes(partition_chart(parts))
        run.log_artifact(plot, "partitions")


def _log_train_summary(run: tracking.Run, summary: dict[str, Any]) -> None:
    """The best epoch's figures as best_*; the strategy's shape and per-rank model state as
    they are (the run's params hold train.parallelism and its settings)."""
    outcome = ("best_epoch", "epochs_run", "val_loss", "val_accuracy")
    run.log_metrics(
        {f"best_{k}": summary[k] for k in outcome if k in summary}
        | {"parameters": summary["parameters"]}
    )
    run.log_metrics(
        {
            k: v
            for k, v in summary.items()
            if k not in outcome and isinstance(v, int | float) and k != "parameters"
        }
    )
    run.set_tags({"parallelism": summary["strategy"]})


def run_export(params_path: Path) -> dict[str, Any]:
    from pipeline.data.prepare import load_processed
    from pipeline.export.convert import Tuning, export

    params = load_params(params_path)
    data = load_processed()
    x_train = data.x["train"]
    tuning = Tuning(
        qat=params.export.qat,
        epochs=params.export.qat_epochs,
        lr=params.train.lr / 10,
        batch_size=params.train.batch_size,
        max_drop=params.evaluate.max_int8_drop,
        x_train=x_train,
        y_train=data.y["train"],
        x_val=data.x["val"],
        y_val=data.y["val"],
    )
    with tracking.stage_run(
        "export", stage_params(params, "export"), tracking.run_tags("export")
    ) as run:
        result = export(params.export, x_train, seed=params.train.seed, tuning=tuning)
        run.log_metrics({f"tflite_{v}_bytes": n for v, n in result.sizes.items()})
        run.set_tags({"int8_ops": ",".join(result.int8_ops)})
        _log_layers(run, result.layers)
        for path in result.paths.values():
            run.log_artifact(path, "tflite")
        _log_model(run, x_train[:1], result.paths)
    return {"sizes": result.sizes, "ops": result.int8_ops}


def _log_layers(run: tracking.Run, layers: dict[str, Any]) -> None:
    """Per-layer SNR and cosine as step series (step = the layer's index), the worst layer as
    metrics and a tag, and the JSON as an artifact."""
    now = int(time.time() * 1000)  # one write for every layer: a GRU has hundreds
    run.log_metric_rows([
        {"step": row["index"], "time_ms": now,
         "metrics": {"int8_layer_snr_db": row["snr_db"], "int8_layer_cosine": row["cosine"]}}
        for row in layers["layers"]
    ])  # fmt: skip
    run.set_tags({"int8_method": layers["quantization"]["method"]})
    run.log_metrics(
        {k: v for k, v in layers["quantization"].items() if k.endswith(("accuracy", "auc"))}
    )
    worst = layers["worst"]
    if worst:
        run.log_metrics({"int8_worst_layer_snr_db": worst["snr_db"],
                         "int8_worst_layer_cosine": worst["cosine"]})  # fmt: skip
        run.set_tags({"int8_worst_layer": f"{worst['name']} ({worst['op']})"})
    run.log_artifact(catalog.INT8_LAYERS, "metrics")


def _log_model(run: tracking.Run, example: Any, tflite: dict[str, Path]) -> None:
    """The trained network as an MLflow LoggedModel, with its .tflite variants inside. Its
    source is the pipeline's parent run, so the runs table shows it on the row a person sees;
    deploy links each device's bundle to it."""
    import tempfile

    framework = catalog.trained_framework()
    client = run.client
    parent = client.get_run(run.run_id).data.tags.get("mlflow.parentRunId", run.run_id)
    logged = client.create_logged_model(
        tracking.experiment_id(client), name="model", source_run_id=parent, model_type="tinyops",
        tags={"framework": framework},
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        MODEL_FILES[framework](Path(tmp, "model"), example, [str(p) for p in tflite.values()])
        client.log_model_artifacts(logged.model_id, f"{tmp}/model")
    client.finalize_logged_model(logged.model_id, "READY")
    from mlflow.entities import LoggedModelOutput

    client.log_outputs(run.run_id, [LoggedModelOutput(logged.model_id, 0)])
    ref = catalog.LoggedModelRef(model_id=logged.model_id, model_sha256=catalog.trained_sha256())
    catalog.write(catalog.LOGGED_MODEL, ref)


def _torch_model_files(folder: Path, example: Any, extra: list[str]) -> None:
    """mlflow.pytorch's format: pt2-serialised, with signature and input example."""
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    from pipeline.models.store import load_model

    model, _, _ = load_model(catalog.MODEL_FILE)
    with torch.no_grad():
        logits = model(torch.from_numpy(example)).numpy()
    mlflow.pytorch.save_model(
        model,
        str(folder),
        signature=infer_signature(example, logits),
        input_example=example,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        extra_files=extra,
    )


def _folder_model_files(folder: Path, example: Any, extra: list[str]) -> None:
    """The trained folder as it is (Keras: model.json + weights, which `keras_store.load_model`
    rebuilds; tflite: the file and its card), the .tflite files under extra_files/ as for
    torch."""
    import shutil

    shutil.copytree(catalog.TRAINED_DIR, folder)
    (folder / "extra_files").mkdir()
    for path in extra:
        shutil.copy2(path, folder / "extra_files")


# The framework that trained models/trained/ → how its LoggedModel's files are written.
MODEL_FILES = {
    "torch": _torch_model_files,
    "keras": _folder_model_files,
    "tflite": _folder_model_files,
}


def run_evaluate(params_path: Path) -> dict[str, Any]:
    from pipeline.data.prepare import load_processed
    from pipeline.evaluation.evaluate import confusion_png, evaluate, write_outputs

    params = load_params(params_path)
    data = load_processed()
    tags = tracking.run_tags("evaluate")
    with tracking.stage_run("evaluate", stage_params(params, "evaluate"), tags) as run:
        result = evaluate(params.evaluate, data)
        write_outputs(result)
        run.log_metrics(result.metrics.as_metrics())
        run.log_artifact(catalog.PREDICTIONS_FILE, "plots")
        run.log_artifact(confusion_png(result, catalog.CONFUSION_PNG), "plots")
    return result.metrics.model_dump()


def run_deploy(params_path: Path, device: str) -> dict[str, Any]:
    from pipeline.deploy.device import deploy_context, deploy_device

    params = load_params(params_path)
    require_device(params, device, str(params_path))  # before any MLflow run is opened
    dumped = params.model_dump(mode="json")
    section = tracking.flatten(
        "", {"deploy": dumped["deploy"], "device": dumped["devices"][device]}
    )
    with tracking.stage_run(f"deploy@{device}", section, tracking.run_tags("deploy")) as run:
        result = deploy_device(deploy_context(params, device, run))
        print(f"deploy@{device}: {result.status}: {result.record.reason}")
    return result.record.model_dump()


def run_report(params_path: Path) -> dict[str, Any]:
    from pipeline.deploy.report import write_report

    params = load_params(params_path)
    with tracking.stage_run("report", {}, tracking.run_tags("report")) as run:
        md, png = write_report(params)
        run.log_artifact(md, "report")
        run.log_artifact(png, "report")
        run.log_artifact(catalog.LAYERS_PNG, "report")
        run.log_artifact(catalog.PARTITIONS_PNG, "report")
    return {"markdown": str(md), "chart": str(png)}


# Keyed by dvc.yaml's stage names; deploy takes the device as well.
STAGES: dict[str, Callable[..., dict[str, Any]]] = {
    "prepare": run_prepare,
    "train": run_train,
    "export": run_export,
    "evaluate": run_evaluate,
    "deploy": run_deploy,
    "report": run_report,
}
