"""The retrain flow's failure handling, on a real Prefect server and a real DVC workspace."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.orchestration.dvc import StageFailed
from tests.conftest import make_workspace, workspace_env


@pytest.mark.parametrize(
    ("code", "retryable"),
    [(2, False), (3, False), (6, False), (10, False), (4, True), (1, True), (137, True)],
)
def test_which_failures_are_retried(code: int, retryable: bool) -> None:
    assert StageFailed("train", code, "").retryable is retryable


@pytest.mark.slow
def test_bad_data_fails_the_flow_once_without_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_here: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    from flows.retrain import retrain

    ws = make_workspace(tmp_path / "ws")
    (ws / "data/raw/bad.npz").write_bytes(b"PK\x03\x04 truncated")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["prepare"] |= {"source": "npz", "path": "data/raw/bad.npz"}
    params["orchestrate"] = {"retries": 3, "retry_delay_seconds": 0}
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(ws)
    for key, value in workspace_env(ws).items():
        monkeypatch.setenv(key, value)
    state = retrain(return_state=True)  # on the session's Prefect server
    assert state.is_failed()
    with pytest.raises(StageFailed) as err:
        state.result()
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            ),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )
    assert err.value.code == 3 and not err.value.retryable
    assert "not a readable .npz" in str(err.value) and "bad.npz" in str(err.value)
    assert [(t.name, t.run_count) for t in tasks] == [("ingest", 1), ("prepare", 1)], (
        "validation errors are not retried"
    )
    assert tasks[1].state.is_failed()
    assert (ws / "data/raw/bad.npz.dvc").is_file(), "the new raw file was versioned first"
    assert not (ws / "data/processed").exists()


def test_a_server_set_in_the_prefect_profile_counts_as_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.schedule import configured_api_url

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert configured_api_url() is None, "no profiles file: Prefect's temporary server"
    (tmp_path / "profiles.toml").write_text(
        'active = "team"\n[profiles.ephemeral]\n'
        '[profiles.team]\nPREFECT_API_URL = "http://10.0.0.5:4200/api"\n'
    )
    assert configured_api_url() == "http://10.0.0.5:4200/api"
    monkeypatch.setenv("PREFECT_PROFILE", "ephemeral")
    assert configured_api_url() is None
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4300/api")
    assert configured_api_url() == "http://127.0.0.1:4300/api"
