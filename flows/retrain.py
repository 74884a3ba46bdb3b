"""The `retrain` flow: the pipeline's stages as Prefect tasks, deploy mapped over the devices.

Each task runs its stage through `pipeline.run.repro_stage` (dvc repro --single-item), the same
definition `tinyops run` and `dvc repro` use, so DVC skips what has not changed and `dvc status`
is clean after a flow run. Stages run in their own processes: this process never imports torch.

Before any work the flow versions new raw data (`dvc add`, pipeline/ingest.py) and asks whether
anything is new since the last successful run (pipeline/freshness.py): if not, it ends at once in
a Completed state named "Skipped", with no MLflow run. `force=True` retrains anyway.

    tinyops run                 # runs this flow (Prefect's ephemeral mode, or PREFECT_API_URL)
    tinyops schedule --cron ... # serves it as a scheduled deployment on a Prefect server
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.logging import get_run_logger
from prefect.states import Completed, State
from prefect.tasks import exponential_backoff

from pipeline import freshness
from pipeline.config import load_params
from pipeline.run import (
    StageFailed,
    anything_new,
    close_parent,
    fingerprint_tags,
    open_parent,
    repro_stage,
    stage_env,
    stage_targets,
    workspace_lock,
)

MLFLOW_UI = "http://127.0.0.1:5000"


def _retry_only_transient(task, task_run, state) -> bool:  # type: ignore[no-untyped-def]
    """Never retry bad data, a failed fit or int8 check: only failures a rerun could fix."""
    try:
        state.result()
    except StageFailed as exc:
        return exc.retryable
    except Exception:
        return True
    return False


@task(
    name="stage",
    task_run_name="{target}",
    retries=2,
    retry_delay_seconds=exponential_backoff(5),
    retry_condition_fn=_retry_only_transient,
)
def stage(target: str, env: dict[str, str], force: bool = False) -> dict[str, Any]:
    """One DVC stage; returns whether it ran or was up to date."""
    logger = get_run_logger()
    outcome = repro_stage(target, env, on_line=logger.info, force=force)
    logger.info("%s: %s", target, "ran" if outcome.ran else "up to date, skipped")
    return {"target": outcome.target, "ran": outcome.ran}


@task(name="ingest", task_run_name="ingest")
def ingest() -> list[str]:
    """Version whatever is new in data/raw with `dvc add` before the freshness check hashes it."""
    from pipeline.ingest import ingest_raw

    return ingest_raw(on_line=get_run_logger().info)


def _device_rows(devices: list[str]) -> list[dict[str, Any]]:
    rows = []
    for device in devices:
        path = Path("metrics/deploy") / f"{device}.json"
        s = json.loads(path.read_text()) if path.is_file() else {"status": "not deployed"}
        rows.append(
            {
                "device": device,
                "variant": s.get("variant", "-"),
                "bytes": s.get("model_bytes", "-"),
                "arena": s.get("arena_bytes") or "-",
                "accuracy": s.get("accuracy", "-"),
                "status": s["status"],
                "why": s.get("reason", ""),
            }
        )
    return rows


@flow(name="retrain", log_prints=True)
def retrain(
    params_path: str = "params.yaml", force: bool = False, wait: bool = False
) -> dict[str, Any] | State:
    """ingest → (skip if nothing new) → prepare → train → export → evaluate → deploy per device
    → report, as one tracked run."""
    from prefect.runtime import flow_run

    params = load_params(Path(params_path))  # a bad config fails the flow before any work
    retries = {
        "retries": params.orchestrate.retries,
        "retry_delay_seconds": exponential_backoff(params.orchestrate.retry_delay_seconds),
    }
    run_stage = stage.with_options(**retries)
    with workspace_lock(wait):
        ingest()
        fp = freshness.fingerprint(params)
        new, why = anything_new(fp, dict(os.environ))
        if not (new or force):
            print(f"skipped: {why}")
            return Completed(
                name="Skipped", message=why, data={"skipped": True, "reason": why, "ran": []}
            )
        print(f"running: {'forced' if force and not new else why}")
        tags = {"prefect.flow_run_id": str(flow_run.id), **fingerprint_tags(fp)}
        parent = open_parent(params, tags)
        env = stage_env(parent.run_id)
        status = "FAILED"
        try:
            targets = stage_targets(params)
            results = [
                run_stage(t, env, force) for t in targets if not t.startswith(("deploy@", "report"))
            ]
            deploys = [t for t in targets if t.startswith("deploy@")]
            results += [f.result() for f in run_stage.map(deploys, unmapped(env), unmapped(force))]
            results.append(run_stage("report", env, force))
            status = "FINISHED"
        finally:
            metrics = close_parent(parent, status)
        freshness.record_success(fp, mlflow_run_id=parent.run_id, flow_run_id=str(flow_run.id))
    exp = parent.client.get_run(parent.run_id).info.experiment_id
    create_link_artifact(
        f"{MLFLOW_UI}/#/experiments/{exp}/runs/{parent.run_id}",
        link_text=f"MLflow run {parent.run_id}",
        key="mlflow-run",
    )
    create_table_artifact(
        _device_rows(sorted(params.devices)),
        key="devices",
        description="Per-device deployment results",
    )
    ran = [r["target"] for r in results if r["ran"]]
    print(f"stages run: {', '.join(ran) or 'none (nothing changed)'}; mlflow_run={parent.run_id}")
    if "tflm_int8_accuracy" in metrics:
        print(f"tflm_int8_accuracy={metrics['tflm_int8_accuracy']}")
    return {"run_id": parent.run_id, "ran": ran, **metrics}


if __name__ == "__main__":
    retrain()
