"""The `retrain` flow: the pipeline's table of contents, one Prefect task per DVC stage.

    ingest → prepare → train → export → evaluate → deploy (mapped over devices) → report

Everything around the stages (workspace lock, the "anything new?" decision, the MLflow parent
run and its final status, the success record) is `PipelineRun`'s, shared with the plain runner.
Each task runs its stage through `dvc repro --single-item` (pipeline/orchestration/dvc.py), so
DVC alone decides what is stale, and reads whether the stage ran, and its exit code, from the
status file the stage writes. Stages run in their own processes: this one never imports torch.

    tinyops run                 # runs this flow (Prefect's ephemeral mode, or PREFECT_API_URL)
    tinyops schedule --cron ... # serves it as a scheduled deployment on a Prefect server
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.logging import get_run_logger
from prefect.states import Completed, State
from prefect.tasks import Task, exponential_backoff

from pipeline.core import catalog
from pipeline.orchestration.dvc import StageFailed, StageOutcome, repro_stage
from pipeline.orchestration.run import PipelineRun

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


def _stage_task(name: str) -> Task:
    """A task that runs DVC stage `name` (deploy: `deploy@<device>`) and says what happened."""

    @task(name=name, task_run_name="{target}", retry_condition_fn=_retry_only_transient)
    def run_stage(target: str, env: dict[str, str], force: bool = False) -> dict[str, Any]:
        logger = get_run_logger()
        outcome = repro_stage(target, env, on_line=logger.info, force=force)
        logger.info("%s: %s", target, "ran" if outcome.ran else "up to date, skipped")
        return {"target": outcome.target, "ran": outcome.ran}

    return run_stage


prepare = _stage_task("prepare")
train = _stage_task("train")
export = _stage_task("export")
evaluate = _stage_task("evaluate")
deploy = _stage_task("deploy")
report = _stage_task("report")
# The flow's stages in its order; tests/orchestration/test_dvc.py checks them against dvc.yaml.
STAGE_TASKS = {t.name: t for t in (prepare, train, export, evaluate, deploy, report)}


@task(name="ingest", task_run_name="ingest")
def ingest() -> list[str]:
    """Version whatever is new in data/raw with `dvc add` before the freshness check hashes it."""
    from pipeline.orchestration.ingest import ingest_raw

    return ingest_raw(on_line=get_run_logger().info)


def _device_rows(devices: list[str]) -> list[dict[str, Any]]:
    rows = []
    for device in devices:
        path = catalog.deploy_status_file(device)
        if not path.is_file():
            rows.append({"device": device, "status": "not deployed"})
            continue
        s = catalog.read(path, catalog.DeployStatus, f"deploy --device {device}")
        rows.append(
            {
                "device": device,
                "variant": s.variant or "-",
                "bytes": s.model_bytes or "-",
                "arena": s.arena_bytes or "-",
                "accuracy": s.accuracy if s.accuracy is not None else "-",
                "status": s.status,
                "why": s.reason,
            }
        )
    return rows


def _publish(run: PipelineRun) -> None:
    """Link the MLflow run and a per-device table on the flow run."""
    assert run.parent is not None
    exp = run.parent.client.get_run(run.parent.run_id).info.experiment_id
    create_link_artifact(
        f"{MLFLOW_UI}/#/experiments/{exp}/runs/{run.parent.run_id}",
        link_text=f"MLflow run {run.parent.run_id}",
        key="mlflow-run",
    )
    create_table_artifact(
        _device_rows(run.devices), key="devices", description="Per-device deployment results"
    )


def _with_retries(run: PipelineRun) -> dict[str, Task]:
    """The stage tasks with orchestrate.retries and its back-off: the one place they are set."""
    orchestrate = run.params.orchestrate
    options = {
        "retries": orchestrate.retries,
        "retry_delay_seconds": exponential_backoff(orchestrate.retry_delay_seconds),
    }
    return {name: t.with_options(**options) for name, t in STAGE_TASKS.items()}


def _crash_abandoned(flow_run_id: str | None) -> None:
    """The flow run of a run killed outright (its worker's group SIGKILLed, the OOM killer)
    stays Running on the server forever: mark it Crashed, as Prefect would have on a clean
    crash. The workspace lock found it (pipeline/orchestration/run.py: Holder)."""
    if not flow_run_id:
        return
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        try:
            state = client.read_flow_run(flow_run_id).state
        except ObjectNotFound:  # another server's run (a temporary one, since gone)
            return
        if state is not None and not state.is_final():
            why = "killed outright; found by the next run in this workspace"
            client.set_flow_run_state(flow_run_id, Crashed(message=why), force=True)
            print(f"its Prefect flow run {flow_run_id} is now Crashed")


@flow(name="retrain", log_prints=True)
def retrain(
    params_path: str = "params.yaml", force: bool = False, wait: bool = False
) -> dict[str, Any] | State:
    """ingest → (skip if nothing new) → prepare → train → export → evaluate → deploy per device
    → report, as one tracked run."""
    from prefect.runtime import flow_run

    from pipeline.core.quiet import quiet_third_party

    quiet_third_party()  # a worker runs the flow without the tinyops CLI, which does it there
    tags = {"prefect.flow_run_id": str(flow_run.id)}
    with PipelineRun(Path(params_path), force, wait, tags=tags, ingest=ingest) as run:
        _crash_abandoned(run.abandoned.get("prefect.flow_run_id"))
        if run.skipped:
            print(f"skipped: {run.reason}")
            return Completed(name="Skipped", message=run.reason, data=run.summary())
        print(f"running: {run.reason}")
        t, args = _with_retries(run), (run.env, force)
        done = [
            t["prepare"]("prepare", *args),
            t["train"]("train", *args),
            t["export"]("export", *args),
            t["evaluate"]("evaluate", *args),
        ]
        devices = [f"deploy@{d}" for d in run.devices]
        deploys = t["deploy"].map(devices, unmapped(run.env), unmapped(force))
        done += [f.result() for f in deploys]
        done.append(t["report"]("report", *args))
        run.outcomes += [StageOutcome(r["target"], r["ran"]) for r in done]
    _publish(run)
    ran = [r["target"] for r in done if r["ran"]]
    print(
        f"stages run: {', '.join(ran) or 'none (nothing changed)'}; mlflow_run={run.parent.run_id}"
    )
    if "tflm_int8_accuracy" in run.metrics:
        print(f"tflm_int8_accuracy={run.metrics['tflm_int8_accuracy']}")
    return {**run.summary(), "ran": ran}
