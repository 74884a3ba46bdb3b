"""The `monitor` flow: drift measured on the field data, recorded, and acted on.

    tinyops field monitor --retrain   # runs this flow (Prefect's ephemeral mode, or PREFECT_API_URL)
    tinyops field monitor --retrain --deployment retrain/nightly   # a Prefect server's deployment

Each device's report goes to report/drift/<device>/, to MLflow (a `drift · <device>` run: the
p-value per interval as a metric, the report as artifacts) and to the flow run as a markdown
artifact. Where drift is confirmed and labels came back with the drifted intervals, the labelled
field samples are merged into the raw data and the `retrain` flow runs as a subflow: its own
ingest versions the new raw file, prepare splits it in, and every device's usual champion check
decides what is promoted. With `deployment` (a Prefect server's `retrain/<name>`, made by
`tinyops schedule` in this checkout) the retrain is handed over instead: the flow emits the event
`tinyops.drift.confirmed` (for automations to follow) and starts a run of that deployment, which
its worker or serving process runs. Drift without labels retrains nothing: the report says labels
are needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from pipeline.core.catalog import DRIFT_DIR, DRIFT_MD
from pipeline.core.config import MonitorParams
from pipeline.monitor.drift import DeviceDrift


def labelled_drift(results: dict[str, DeviceDrift], params: MonitorParams) -> list[str]:
    """Devices whose drift is confirmed with labels in the intervals that confirmed it."""
    out = []
    for device, drift in results.items():
        if drift.confirmed_at is None:
            continue
        run = drift.intervals[drift.confirmed_at - params.intervals + 1 : drift.confirmed_at + 1]
        if any(i.labelled for i in run):
            out.append(device)
    return out


def _record(drift: DeviceDrift, params: MonitorParams) -> None:
    """MLflow and Prefect: the same report as report/drift/<device>/."""
    import mlflow

    from pipeline.core import tracking
    from pipeline.monitor.report import verdict

    mlflow.set_tracking_uri(tracking.tracking_uri())
    mlflow.set_experiment(tracking.experiment_name())
    with mlflow.start_run(run_name=f"drift · {drift.device}") as run:
        mlflow.set_tags(
            {
                "tinyops.monitor": drift.device,
                "drift.confirmed": str(drift.confirmed_at is not None),
            }
        )
        mlflow.log_params({f"monitor.{k}": v for k, v in params.model_dump().items()})
        for i in drift.intervals:
            mlflow.log_metric("drift_p", i.p_value, step=i.index)
            mlflow.log_metric("confidence", i.confidence, step=i.index)
        mlflow.log_artifacts(str(DRIFT_DIR / drift.device), artifact_path="drift")
    text = (DRIFT_DIR / drift.device / DRIFT_MD).read_text().replace("](drift.png)", "]()")
    key = f"drift-{drift.device.replace('_', '-')}"  # Prefect keys: lowercase, digits, dashes
    description = f"{verdict(drift, params)} (MLflow run {run.info.run_id})"
    create_markdown_artifact(text, key=key, description=description)


def _check_deployment(name: str) -> None:
    """Before any work: the deployment exists on the configured server."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from pipeline.core.errors import ConfigError

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise ConfigError(
                f"deployment {name} is not on the Prefect server: make it with `tinyops schedule "
                "--pool POOL --name NAME --cron ...` in this checkout"
            ) from None


def _hand_over(deployment: str, devices: list[str], merged: int) -> str:
    """The event that says why, and a run of the retrain deployment; its flow run id."""
    from prefect.deployments import run_deployment
    from prefect.events import emit_event

    emit_event(
        event="tinyops.drift.confirmed",
        resource={"prefect.resource.id": f"tinyops.drift.{'.'.join(devices)}"},
        payload={"devices": devices, "merged_samples": merged, "deployment": deployment},
    )
    run = run_deployment(deployment, timeout=0, tags=["tinyops", "drift"])
    print(f"retraining handed to {deployment}: flow run {run.id} ({run.state_name})")
    return str(run.id)


@flow(name="monitor", log_prints=True)
def monitor(
    params_path: str = "params.yaml",
    devices: list[str] | None = None,
    retrain_on_drift: bool = True,
    deployment: str | None = None,
) -> dict[str, Any]:
    """Measure, record, and retrain where labelled drift is confirmed."""
    from pipeline.core.config import load_params
    from pipeline.core.quiet import quiet_third_party
    from pipeline.monitor.merge import merge_labelled
    from pipeline.monitor.report import monitor_workspace, verdict
    from pipeline.orchestration.ingest import version_field

    quiet_third_party()
    if deployment:
        _check_deployment(deployment)
    params = load_params(Path(params_path))
    if version_field():
        print("field data versioned: dvc add data/field")
    results = monitor_workspace(params, devices)
    for drift in results.values():
        print(verdict(drift, params.monitor))
        _record(drift, params.monitor)
    drifted = labelled_drift(results, params.monitor)
    summary: dict[str, Any] = {"drifted": drifted, "retrained": False}
    if not drifted or not retrain_on_drift:
        return summary
    merged = merge_labelled()
    print(f"retraining: labelled drift on {', '.join(drifted)}; {merged} labelled field samples "
          "merged into the raw data")  # fmt: skip
    if deployment:
        return {**summary, "merged": merged, "handed_to": _hand_over(deployment, drifted, merged)}
    from flows.retrain import retrain

    result = retrain(params_path=params_path)
    return {**summary, "retrained": True, "merged": merged, "result": result}
