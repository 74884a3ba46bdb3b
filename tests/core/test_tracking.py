"""MLflow runs: one rule for how a run ends, stage runs nested under the pipeline's parent."""

from __future__ import annotations

import pytest

from pipeline.core import tracking
from pipeline.core.interrupt import Terminated


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (None, "FINISHED"),
        (ValueError("x"), "FAILED"),
        (KeyboardInterrupt(), "KILLED"),
        (Terminated(), "KILLED"),
    ],
)
def test_final_status(exc: BaseException | None, status: str) -> None:
    assert tracking.final_status(exc) == status


def test_flatten_nests_with_dots() -> None:
    assert tracking.flatten("", {"train": {"lr": 0.1, "ch": (1, 2)}, "x": 1}) == {
        "train.lr": "0.1",
        "train.ch": "[1, 2]",
        "x": "1",
    }


def _runs(client) -> dict[str, object]:  # type: ignore[no-untyped-def]
    found = client.search_runs([tracking.experiment_id(client)])
    return {r.info.run_name: r for r in found}


def test_a_stage_nests_under_the_named_parent_and_ends_by_the_rule(
    mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = tracking.client()
    parent = tracking.start_parent(client, "pipeline", {})
    monkeypatch.setenv(tracking.ENV_PARENT, parent.run_id)
    with tracking.stage_run("prepare", {"prepare.seed": "1"}, {"stage": "prepare"}) as run:
        run.log_metrics({"n": 3})
    with pytest.raises(KeyboardInterrupt), tracking.stage_run("train", {}, {}):
        raise Terminated()
    with pytest.raises(ValueError), tracking.stage_run("export", {}, {}):
        raise ValueError("bad")
    runs = _runs(client)
    assert {n: r.info.status for n, r in runs.items()} == {
        "pipeline": "RUNNING",  # the run path that named it ends it, not its stages
        "prepare": "FINISHED",
        "train": "KILLED",
        "export": "FAILED",
    }
    for name in ("prepare", "train", "export"):
        assert runs[name].data.tags["mlflow.parentRunId"] == parent.run_id
    assert runs["prepare"].data.params == {"prepare.seed": "1"}
    assert runs["prepare"].data.metrics["n"] == 3


def test_a_lone_stage_gets_a_parent_that_ends_as_it_did(mlflow_store: str) -> None:
    with pytest.raises(ValueError), tracking.stage_run("evaluate", {}, {}):
        raise ValueError("bad")
    runs = _runs(tracking.client())
    assert runs["tinyops stage"].info.status == "FAILED"
    assert runs["evaluate"].data.tags["mlflow.parentRunId"] == runs["tinyops stage"].info.run_id
