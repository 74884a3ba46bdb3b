"""One run path: `PipelineRun` owns everything around the stages, whoever runs them.

`tinyops run` (the Prefect flow, flows/retrain.py) and the plain in-process runner below both
enter a `PipelineRun`: it takes the workspace lock, versions new raw data, decides once whether
anything is new, opens the MLflow parent run, hands its id to every stage process, ends the parent
with the same status rule as every stage (pipeline/core/tracking.final_status: FINISHED, FAILED,
or KILLED on Ctrl-C and SIGTERM) and records the success. A bare `dvc repro` has no wrapper
process; its stages find or create their parent themselves and end it by the same rule.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from pipeline.core import catalog, tracking
from pipeline.core.config import Params, load_params
from pipeline.core.errors import PipelineBusyError
from pipeline.orchestration import freshness
from pipeline.orchestration.dvc import (
    StageOutcome,
    push,
    repro_stage,
    require_tracked,
    stage_env,
    stale_stages,
)


def _centralized_shape(params: Params) -> str:
    from pipeline.core.config import parallel_plan

    return parallel_plan(params, batch_size=False).tag()


def _federated_shape(params: Params) -> str:
    fp = params.train.federated
    return f"{fp.strategy}-c{fp.clients}r{fp.rounds}"


# train.paradigm → the run name's shape: ddp2, fsdp2, dp2pp2…; fedavg-c10r20 (clients, rounds).
SHAPES = {"centralized": _centralized_shape, "federated": _federated_shape}


def run_name(params: Params, params_sha256: str) -> str:
    """Dataset, family, framework, strategy and params hash: `basicmotions-gru-torch-ddp2 · 3f2a1c`
    (pp2 for a 2-stage pipeline, fsdp2, dp2pp2 for a hybrid mesh; a custom model's module name
    for the family), so the MLflow UI's run list says what each parent trained without opening
    it. A model trained elsewhere: `digits-kws-tflite · 3f2a1c` (its file's name; no training).
    Federated: `digits-cnn2d-torch-fedavg-c10r20 · 3f2a1c` (strategy, clients, rounds)."""
    model, tail = params.model, params_sha256[:6]
    if model.path:
        return f"{params.prepare.source}-{Path(model.path).stem}-tflite · {tail}"
    shape = SHAPES[params.train.paradigm](params)
    family = model.module.partition(":")[0].rsplit(".", 1)[-1] if model.module else model.arch
    return f"{params.prepare.source}-{family}-{model.framework}-{shape} · {tail}"


class Holder:
    """What the workspace lock file says about the run holding it: its pid, then its MLflow parent
    and Prefect flow run. A run that ends clears it; one killed outright (SIGKILL, the OOM killer,
    a worker's whole group) cannot, so the next holder finds it and settles what it left."""

    def __init__(self, fh: Any, previous: dict[str, str]) -> None:
        self._fh, self.previous = fh, previous
        self.info: dict[str, str] = {}
        self.keep_previous = False  # a read-only look (nothing_new) leaves the record as found

    def record(self, **info: str) -> None:
        self.info.update(info)
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(json.dumps(self.info, sort_keys=True))
        self._fh.flush()


def _previous_holder(text: str) -> dict[str, str]:
    if not text.strip():
        return {}
    try:
        found = json.loads(text)
    except ValueError:
        return {"pid": text.strip()}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


@contextlib.contextmanager
def workspace_lock(wait: bool = False) -> Iterator[Holder]:
    """Hold the workspace for one pipeline run; a second run waits (wait=True) or fails clearly.
    The kernel releases the lock of a killed holder; its record stays for the next one."""
    catalog.LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(catalog.LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.seek(0)
            holder = _previous_holder(fh.read()).get("pid", "unknown")
            raise PipelineBusyError(
                f"another pipeline run (pid {holder}) is running in this workspace and holds "
                f"{catalog.LOCK_FILE}; wait for it to finish (or pass --wait)."
            ) from None
        fh.seek(0)
        held = Holder(fh, _previous_holder(fh.read()))
        held.record(pid=str(os.getpid()))
        try:
            yield held
        finally:
            fh.seek(0)
            fh.truncate()
            if held.keep_previous and held.previous:
                fh.write(json.dumps(held.previous, sort_keys=True))
                fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)


def anything_new(fp: freshness.Fingerprint, env: dict[str, str]) -> tuple[bool, str]:
    """Whether to run, and why: new data, params or code since the last success, or stale DVC."""
    last = freshness.unchanged(fp)
    if last is None:
        return True, "; ".join(freshness.changes(fp))
    stale = stale_stages(env)
    if stale:
        return True, f"DVC finds stages out of date: {', '.join(stale)}"
    return False, (
        f"nothing new since the last successful run (MLflow run {last.get('mlflow_run_id')}): "
        "raw data, params and code hash the same and DVC finds every stage up to date. "
        "Pass --force to retrain anyway."
    )


def nothing_new(params_path: Path) -> str | None:
    """Why a run would be skipped, decided read-only and without an orchestrator; None when
    there is something to do or another run holds the workspace (the full path then decides).

    `tinyops run` asks this before starting Prefect's ephemeral server, which costs more than
    the check itself; against a running server the flow decides, so the skip is on record there.
    """
    from pipeline.orchestration.ingest import pending_raw

    params = load_params(params_path)
    try:
        with workspace_lock() as held:
            held.keep_previous = True
            if held.previous or pending_raw():  # a killed run to settle, or new raw data
                return None
            new, why = anything_new(freshness.fingerprint(params), dict(os.environ))
    except PipelineBusyError:
        return None
    return None if new else why


def _default_ingest() -> list[str]:
    from pipeline.orchestration.ingest import ingest_raw

    return ingest_raw()


class PipelineRun:
    """Lock, ingest, decide, open the parent run; on exit end it by the shared status rule.

    with PipelineRun(Path("params.yaml")) as run:
        if not run.skipped:
            for target in run.targets: run.stage(target)
    """

    def __init__(
        self,
        params_path: Path,
        force: bool = False,
        wait: bool = False,
        tags: dict[str, str] | None = None,
        ingest: Callable[[], Any] = _default_ingest,
    ) -> None:
        self.params: Params = load_params(params_path)  # a bad config stops before any work
        require_tracked(params_path)
        self.force, self.wait, self.extra_tags, self.ingest = force, wait, tags or {}, ingest
        self.skipped, self.reason = False, ""
        self.parent: tracking.Run | None = None
        self.env: dict[str, str] = {}
        self.metrics: dict[str, float] = {}
        self.worst_layer: str | None = None
        self.outcomes: list[StageOutcome] = []
        self.pushed = ""  # what `dvc push` did after a success (orchestrate.push)
        self._lock = workspace_lock(wait)
        self.abandoned: dict[str, str] = {}  # the record of a run killed before it could end

    @property
    def devices(self) -> list[str]:
        return sorted(self.params.devices)

    def __enter__(self) -> PipelineRun:
        from pipeline.core import interrupt

        interrupt.install()  # SIGTERM unwinds like Ctrl-C, so the parent run ends KILLED
        self._holder = self._lock.__enter__()
        try:
            self._settle_abandoned()
            self.ingest()
            self.fingerprint = freshness.fingerprint(self.params)
            new, self.reason = anything_new(self.fingerprint, dict(os.environ))
            self.skipped = not (new or self.force)
            if not self.skipped:
                self.reason = "forced" if not new else self.reason
                self._open_parent()
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def run_name(self) -> str:
        """What this run trains, how, and on which params."""
        return run_name(self.params, self.fingerprint.params)

    def _open_parent(self) -> None:
        c = tracking.client()
        tags = {**tracking.run_tags(), **freshness.tags(self.fingerprint), **self.extra_tags}
        self.parent = tracking.start_parent(c, self.run_name(), tags)
        self._holder.record(mlflow_run_id=self.parent.run_id, **self._prefect_id())
        self.parent.log_params(tracking.flatten("", self.params.model_dump(mode="json")))
        self._log_preflight()
        self.env = stage_env(self.parent.run_id)

    def _prefect_id(self) -> dict[str, str]:
        key = "prefect.flow_run_id"
        return {key: self.extra_tags[key]} if key in self.extra_tags else {}

    def _settle_abandoned(self) -> None:
        """The previous holder was killed outright: its MLflow parent, still RUNNING, ends KILLED
        (its Prefect flow run is the flow's to mark: flows/retrain.py)."""
        self.abandoned = self._holder.previous
        if not self.abandoned:
            return
        said = f"the previous run (pid {self.abandoned.get('pid', '?')}) was killed outright"
        run_id = self.abandoned.get("mlflow_run_id")
        if run_id:
            c = tracking.client()
            if c.get_run(run_id).info.status == "RUNNING":
                c.set_terminated(run_id, "KILLED")
                said += f"; its MLflow run {run_id} is now KILLED"
        print(f"{said}. This run proceeds.")

    def _log_preflight(self) -> None:
        """The answer `tinyops preflight` gave for this model, when this run's path asked."""
        import json

        path = catalog.PREFLIGHT_METRICS
        if not path.is_file():
            return
        report = json.loads(path.read_text())
        if "devices" in report:
            fits = len(report["fits"])
            self.parent.log_metrics({"preflight_devices_fit": fits})
        self.parent.log_artifact(path)

    def stage(self, target: str, on_line: Callable[[str], None] = print) -> StageOutcome:
        """One DVC stage under this run's parent."""
        outcome = repro_stage(target, self.env, on_line=on_line, force=self.force)
        self.outcomes.append(outcome)
        return outcome

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.parent is not None:
                self._close_parent(tracking.final_status(exc))
                if exc is None:
                    freshness.record_success(
                        self.fingerprint,
                        mlflow_run_id=self.parent.run_id,
                        **{k: v for k, v in self.extra_tags.items() if k == "prefect.flow_run_id"},
                    )
                    self._push()
        finally:
            self._lock.__exit__(exc_type, exc, tb)

    def _push(self) -> None:
        """orchestrate.push auto: the outputs to DVC's remote, said in the log and on the run."""
        pushed = push(self.env or None) if self.params.orchestrate.push == "auto" else None
        if pushed:
            self.pushed = pushed
            print(pushed)
            self.parent.set_tags({"tinyops.dvc_push": pushed[:250]})

    def _close_parent(self, status: str) -> None:
        """Tag and log the final metrics (when there are any) and end the parent run."""
        assert self.parent is not None
        if status == "FINISHED" and not any(o.ran for o in self.outcomes):
            # Forced, yet DVC found every stage up to date: say so rather than look like a run.
            self.parent.set_tags({"tinyops.outcome": "nothing ran"})
            name = f"{self.run_name()} (nothing ran)"
            self.parent.client.update_run(self.parent.run_id, name=name)
        if status == "FINISHED" and catalog.EVALUATE_METRICS.is_file():
            evaluated = catalog.read(catalog.EVALUATE_METRICS, catalog.EvaluateMetrics, "evaluate")
            self.metrics = evaluated.as_metrics() | self._worst_layer()
            self.parent.set_tags(tracking.run_tags())
            self.parent.log_metrics(self.metrics)
            self._log_results()
        self.parent.client.set_terminated(self.parent.run_id, status)

    def _worst_layer(self) -> dict[str, float]:
        """The int8 layer furthest from float (metrics/int8_layers.json), named in a tag."""
        import json

        try:
            worst = json.loads(catalog.INT8_LAYERS.read_text())["worst"]
        except (OSError, ValueError, KeyError):
            return {}
        if not worst:
            return {}
        assert self.parent is not None
        self.parent.set_tags({"int8_worst_layer": f"{worst['name']} ({worst['op']})"})
        self.worst_layer = f"{worst['name']} ({worst['op']}): SNR {worst['snr_db']:.1f} dB"
        return {"int8_worst_layer_snr_db": worst["snr_db"]}

    def _log_results(self) -> None:
        """What the parent shows in the MLflow UI: the data it trained on, and the plots."""
        from pipeline.data.prepare import load_processed

        assert self.parent is not None
        data = load_processed()
        splits = {s: (data.x[s], data.y[s]) for s in ("train", "val", "test")}
        source = str(catalog.PROCESSED_DIR.resolve())
        tracking.log_datasets(self.parent, data.meta.source, splits, source)
        for png in (catalog.CONFUSION_PNG, catalog.REPORT_PNG):
            if png.is_file():
                self.parent.log_artifact(png, "plots")
        model_id = catalog.logged_model_id()
        if model_id is not None:  # the runs table's Models column
            from mlflow.entities import LoggedModelOutput

            self.parent.client.log_outputs(self.parent.run_id, [LoggedModelOutput(model_id, 0)])

    def summary(self) -> dict[str, Any]:
        if self.skipped:
            return {"skipped": True, "reason": self.reason, "ran": []}
        assert self.parent is not None
        ran = [o.target for o in self.outcomes if o.ran]
        extra = {"int8_worst_layer": self.worst_layer} if self.worst_layer else {}
        return {"run_id": self.parent.run_id, "ran": ran, **self.metrics, **extra}


def run_pipeline(params_path: Path, force: bool = False, wait: bool = False) -> dict[str, Any]:
    """Every stage in order, in this process, without an orchestrator (what `tinyops bench`
    compares the flow against)."""
    from pipeline.orchestration.dvc import stage_targets

    with PipelineRun(params_path, force=force, wait=wait) as run:
        if run.skipped:
            print(run.reason)
        else:
            for target in stage_targets(run.devices):
                run.stage(target)
    return run.summary()
