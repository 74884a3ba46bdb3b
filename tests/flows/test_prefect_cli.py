"""Prefect's own CLI against `tinyops server`, as the scheduling docs tell users to run it. With
fastapi 0.151-0.154 both listings failed with 422 (`limit: null`); the lock pins fastapi<0.151."""

from __future__ import annotations

import os
import subprocess

from tests.conftest import BIN


def _prefect(*args: str, api: str) -> str:
    env = {**os.environ, "PREFECT_API_URL": api, "COLUMNS": "250"}
    proc = subprocess.run(
        [str(BIN / "prefect"), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Not a bare "422": a run's UUID may hold those digits (it did, in CI).
    assert "Unprocessable" not in proc.stdout + proc.stderr
    return proc.stdout


def test_flow_runs_and_deployments_list_through_the_cli(prefect_here: str) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client

    @flow(name="tinyops-cli-check")
    def hello() -> int:
        return 1

    state = hello(return_state=True)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        flow_id = client.read_flow_by_name("tinyops-cli-check").id
        client.create_deployment(flow_id=flow_id, name="cli-check")
    assert run.name in _prefect("flow-run", "ls", api=prefect_here)
    assert "cli-check" in _prefect("deployment", "ls", api=prefect_here)
