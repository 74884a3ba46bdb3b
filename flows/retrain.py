"""The `retrain` flow: the pipeline as a Prefect flow run. Thin on purpose: it calls the same
`run_pipeline` as `tinyops run` (dvc repro, stages in their own processes), so the flow process
never imports torch or touches CUDA. Per-stage tasks and schedules come with the orchestration work.

    python -m flows.retrain            # runs once (Prefect's ephemeral mode, or PREFECT_API_URL)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task


@task(name="reproduce")
def reproduce(params_path: str, force: bool) -> dict[str, Any]:
    """dvc repro under one MLflow parent run; reruns only the stages whose inputs changed."""
    from pipeline.run import run_pipeline

    return run_pipeline(Path(params_path), force=force)


@flow(name="retrain", log_prints=True)
def retrain(params_path: str = "params.yaml", force: bool = False) -> dict[str, Any]:
    result = reproduce(params_path, force)
    print(f"tflm_int8_accuracy={result['tflm_int8_accuracy']} mlflow_run={result['run_id']}")
    return result


if __name__ == "__main__":
    retrain()
