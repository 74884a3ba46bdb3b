"""Each stage as the CLI, dvc.yaml and flows call it: validate params, open the stage's nested
MLflow run, call the stage's plain function, log what it produced.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.config import Params, load_params, require_device
from pipeline.provenance import git_commit

META_FILE = Path("data/processed/meta.json")
STAGE_SECTIONS = {
    "prepare": ("prepare",),
    "train": ("train", "model"),
    "export": ("export",),
    "evaluate": ("evaluate",),
}


def _data_sha256() -> str:
    try:
        return json.loads(META_FILE.read_text())["data_sha256"]
    except (OSError, ValueError, KeyError):
        return "unknown"


def run_tags(stage: str | None = None) -> dict[str, str]:
    tags = {"git_commit": git_commit(), "data_sha256": _data_sha256()}
    if stage:
        tags["stage"] = stage
    return tags


def stage_params(params: Params, stage: str) -> dict[str, str]:
    dumped = params.model_dump(mode="json")
    return tracking.flatten("", {s: dumped[s] for s in STAGE_SECTIONS[stage]})


def run_prepare(params_path: Path) -> dict[str, Any]:
    from pipeline.prepare import prepare

    params = load_params(params_path)
    with tracking.stage_run("prepare", stage_params(params, "prepare"), run_tags("prepare")) as run:
        result = prepare(params.prepare)
        meta = result.meta
        run.set_tags({"data_sha256": meta["data_sha256"]})
        run.log_metrics(
            {f"{k}_samples": v for k, v in meta["splits"].items()}
            | {"num_classes": meta["num_classes"]}
        )
        run.log_artifact(result.out_dir / "meta.json")
    return meta


def run_train(params_path: Path) -> dict[str, Any]:
    from pipeline.prepare import load_processed
    from pipeline.train import train

    params = load_params(params_path)
    n_train = int(load_processed().meta["splits"]["train"])
    with tracking.stage_run("train", stage_params(params, "train"), run_tags("train")) as run:
        result = train(params, params_path, n_train, run=run)
        run.log_metrics({f"best_{k}": v for k, v in result.summary.items() if k != "world_size"})
        if result.timing:
            run.log_metrics(result.timing)
        run.log_artifact(Path("metrics/train_history.csv"))
    return result.summary


def run_export(params_path: Path) -> dict[str, Any]:
    from pipeline.export import export
    from pipeline.prepare import load_processed

    params = load_params(params_path)
    x_train = load_processed().x["train"]
    with tracking.stage_run("export", stage_params(params, "export"), run_tags("export")) as run:
        result = export(params.export, x_train, seed=params.train.seed)
        run.log_metrics({f"tflite_{v}_bytes": n for v, n in result.sizes.items()})
        run.set_tags({"int8_ops": ",".join(result.int8_ops)})
        for path in result.paths.values():
            run.log_artifact(path, "tflite")
    return {"sizes": result.sizes, "ops": result.int8_ops}


def run_evaluate(params_path: Path) -> dict[str, Any]:
    from pipeline.evaluate import PREDICTIONS_FILE, confusion_png, evaluate, write_outputs
    from pipeline.prepare import load_processed

    params = load_params(params_path)
    data = load_processed()
    with tracking.stage_run(
        "evaluate", stage_params(params, "evaluate"), run_tags("evaluate")
    ) as run:
        result = evaluate(params.evaluate, data)
        write_outputs(result)
        run.log_metrics(result.metrics)
        run.log_artifact(PREDICTIONS_FILE, "plots")
        run.log_artifact(confusion_png(result, Path(".tinyops/confusion_matrix.png")), "plots")
    return result.metrics


def run_deploy(params_path: Path, device: str) -> dict[str, Any]:
    from pipeline.deploy import deploy_device

    params = load_params(params_path)
    require_device(params, device, str(params_path))  # before any MLflow run is opened
    dumped = params.model_dump(mode="json")
    section = tracking.flatten(
        "", {"deploy": dumped["deploy"], "device": dumped["devices"][device]}
    )
    with tracking.stage_run(f"deploy@{device}", section, run_tags("deploy")) as run:
        result = deploy_device(params, device, run)
        print(f"deploy@{device}: {result.status}: {result.record.get('reason', '')}")
    return result.record


def run_report(params_path: Path) -> dict[str, Any]:
    from pipeline.report import write_report

    params = load_params(params_path)
    with tracking.stage_run("report", {}, run_tags("report")) as run:
        md, png = write_report(params)
        run.log_artifact(md, "report")
        run.log_artifact(png, "report")
    return {"markdown": str(md), "chart": str(png)}


STAGES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "prepare": run_prepare,
    "train": run_train,
    "export": run_export,
    "evaluate": run_evaluate,
    "report": run_report,
}
