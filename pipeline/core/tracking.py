"""MLflow: one parent run per pipeline execution, one nested run per stage, across processes.

Stages run in separate processes (dvc repro, torchrun), so the parent is found, not inherited:
1. TINYOPS_PARENT_RUN_ID, set by `tinyops run` around its `dvc repro`;
2. else, under a bare `dvc repro`, the run tagged with that dvc process (pid + start time),
   created by the first stage that runs and reused by the rest;
3. else (a lone `tinyops stage X`), a parent of its own.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

DEFAULT_TRACKING_URI = "sqlite:///mlflow/mlflow.db"
EXPERIMENT = "tinyops"
ENV_EXPERIMENT = "TINYOPS_EXPERIMENT"  # another experiment for the same store (`tinyops bench`)
# MLflow 3 opens an experiment on its GenAI pages unless it is marked as classic model work.
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
ENV_PARENT = "TINYOPS_PARENT_RUN_ID"
TAG_EXECUTION = "tinyops.execution"
TAG_STAGE = "tinyops.stage"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def _artifact_root(uri: str) -> str | None:
    """mlflow/artifacts beside a sqlite store; None (the server's default) for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(
        urlparse(uri).path if uri.startswith("sqlite:////") else uri.removeprefix("sqlite:///")
    )
    return (db.parent / "artifacts").resolve().as_uri()


def client() -> MlflowClient:
    """A client on the project's store, creating the store folder and experiment on first use."""
    import logging

    import mlflow
    from mlflow.tracking import MlflowClient

    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        db = uri.removeprefix("sqlite:///")
        Path(db).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # inherited by stage subprocesses and torchrun workers
    return MlflowClient(tracking_uri=uri)


def experiment_name() -> str:
    return os.environ.get(ENV_EXPERIMENT) or EXPERIMENT


def experiment_id(c: MlflowClient) -> str:
    """The experiment's id, created on first use and marked for the runs table."""
    name = experiment_name()
    exp = c.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = c.create_experiment(
                name, artifact_location=_artifact_root(tracking_uri()), tags={KIND_TAG: KIND}
            )
            return exp_id
        except Exception:  # another process created it first
            exp = c.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.tags.get(KIND_TAG) != KIND:  # a store made by an earlier version
        c.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
    return exp.experiment_id


def _dvc_execution() -> str | None:
    """Identify the enclosing `dvc repro`/`dvc exp run` process, if any, by pid and start time."""
    try:
        import psutil
    except ImportError:
        return None
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process().parent()
        while proc is not None:
            cmd = proc.cmdline()
            if any(Path(part).name == "dvc" or part.endswith("/dvc") for part in cmd[:2]) or (
                len(cmd) > 2 and cmd[1:3] == ["-m", "dvc"]
            ):
                return f"dvc-{proc.pid}-{int(proc.create_time() * 1000)}"
            proc = proc.parent()
    return None


def flatten(prefix: str, obj: Any) -> dict[str, str]:
    """{'train': {'lr': 0.1}} → {'train.lr': '0.1'}, for MLflow params."""
    if isinstance(obj, Mapping):
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: str(list(obj) if isinstance(obj, tuple) else obj)}


@dataclass
class Run:
    """A thin handle on one MLflow run; every call batches what it can."""

    client: MlflowClient
    run_id: str

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_metric_rows(self, rows: list[dict[str, Any]]) -> None:
        """Rows of {"step", "time_ms", "metrics"} in as few calls as MLflow allows (1000 each)."""
        from mlflow.entities import Metric

        items = [
            Metric(k, float(v), int(row["time_ms"]), int(row["step"]))
            for row in rows
            for k, v in row["metrics"].items()
        ]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        if tags:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)


def log_datasets(run: Run, name: str, splits: dict[str, tuple[Any, Any]], source: str) -> None:
    """Each split as an MLflow dataset input (the runs table's Dataset column, and lineage):
    digest = the split's content hash, context = train/val/test, schema from the arrays."""
    import hashlib

    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for split, (x, y) in splits.items():
        digest = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()[:32]
        ds = mlflow.data.from_numpy(
            x, targets=y, source=source, name=f"{name}-{split}", digest=digest
        )
        tag = InputTag(key="mlflow.data.context", value=split)
        inputs.append(DatasetInput(dataset=ds._to_mlflow_entity(), tags=[tag]))
    run.client.log_inputs(run.run_id, datasets=inputs)


def run_tags(stage: str | None = None) -> dict[str, str]:
    """Provenance on every run: the git commit and the prepared data's content hash."""
    import json

    from pipeline.core.catalog import META_FILE
    from pipeline.core.provenance import git_commit

    try:
        data = json.loads(META_FILE.read_text())["data_sha256"]
    except (OSError, ValueError, KeyError):
        data = "unknown"
    return {"git_commit": git_commit(), "data_sha256": data, **({"stage": stage} if stage else {})}


def final_status(exc: BaseException | None) -> str:
    """The one rule for how a run ends, for the parent and every stage: KILLED on Ctrl-C or
    SIGTERM, FAILED on any other error, else FINISHED."""
    if exc is None:
        return "FINISHED"
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


def start_parent(c: MlflowClient, name: str, tags: Mapping[str, str]) -> Run:
    """A top-level run; its Source in the UI is tinyops at the run's git commit."""
    source = {"mlflow.source.type": "LOCAL", "mlflow.source.name": "tinyops"}
    commit = tags.get("git_commit", "")
    if commit and commit != "unknown":
        source["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
    run = c.create_run(experiment_id(c), run_name=name, tags={**source, **dict(tags)})
    return Run(c, run.info.run_id)


def _find_or_create_parent(c: MlflowClient, base_tags: Mapping[str, str]) -> tuple[Run, bool]:
    """The parent run for this execution, and whether this process manages its status."""
    explicit = os.environ.get(ENV_PARENT)
    if explicit:
        return Run(c, explicit), False
    execution = _dvc_execution()
    if execution:
        found = c.search_runs(
            [experiment_id(c)],
            filter_string=f"tags.`{TAG_EXECUTION}` = '{execution}'",
            max_results=1,
        )
        if found:
            c.update_run(found[0].info.run_id, status="RUNNING")
            return Run(c, found[0].info.run_id), True
        return start_parent(c, "dvc repro", {**base_tags, TAG_EXECUTION: execution}), True
    return start_parent(c, "tinyops stage", base_tags), True


def record_peak_rss(stage: str) -> float:
    """Peak resident memory of this stage, MiB: this process or its largest child process (the
    torchrun workers, the export and evaluation subprocesses), whichever is larger."""
    import json
    import resource

    from pipeline.core import atomic
    from pipeline.core.catalog import RSS_FILE

    kib = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    mib = round(kib / 1024, 1)
    try:
        known = json.loads(RSS_FILE.read_text())
    except (OSError, ValueError):
        known = {}
    atomic.write_json(RSS_FILE, {**known, stage: mib})
    return mib


@contextlib.contextmanager
def stage_run(stage: str, params: Mapping[str, str], tags: Mapping[str, str]) -> Iterator[Run]:
    """A nested MLflow run for one stage; FAILED on error, KILLED on interrupt, else FINISHED."""
    c = client()
    parent, manage_parent = _find_or_create_parent(c, tags)
    child = c.create_run(
        experiment_id(c),
        run_name=stage,
        tags={**tags, TAG_STAGE: stage, "mlflow.parentRunId": parent.run_id},
    )
    run = Run(c, child.info.run_id)
    run.log_params(params)
    error: BaseException | None = None
    try:
        yield run
        run.log_metrics({"peak_rss_mb": record_peak_rss(stage)})
    except BaseException as exc:
        error = exc
        raise
    finally:
        c.set_terminated(run.run_id, final_status(error))
        if manage_parent:  # a bare `dvc repro`: the parent ends as its latest stage did
            c.set_terminated(parent.run_id, final_status(error))
