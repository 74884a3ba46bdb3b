"""Federated training on Flower end to end (issue 26): `tinyops run` on the Simulation Engine to
verified bundles; a client that dies mid-round, a killed server and a killed SuperNode, each
compared byte for byte with the run they must equal."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
import yaml

from pipeline.deploy.bundle import verify_bundle
from tests.conftest import BIN, make_workspace, run_cmd, workspace_env

pytestmark = pytest.mark.slow  # Ray, Flower's SuperLink and SuperNodes, torch on every client

# Non-IID (Dirichlet α = 0.5) shards of digits for 3 clients, 2 rounds: small, and enough rounds
# for a dropped client to matter.
FEDERATED = {"clients": 3, "rounds": 2, "min_clients": 2, "partition": "dirichlet", "alpha": 0.5}
DEVICE = "stm32f746"  # an MCU: its bundle's firmware runs under QEMU


def federated_ws(dest: Path, **federated: object) -> Path:
    ws = make_workspace(dest, devices=(DEVICE,))
    params = yaml.safe_load((ws / "params.yaml").read_text())
    del params["train"]["epochs"], params["train"]["patience"]
    params["train"]["paradigm"] = "federated"
    params["train"]["federated"].update({**FEDERATED, **federated})
    params["devices"][DEVICE]["min_accuracy"] = 0.5  # 2 short rounds: the path, not accuracy
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return ws


def model_sha(ws: Path) -> str:
    return hashlib.sha256((ws / "models/trained/model.pt").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tinyops run` whose server leaves client 1 out of round 2: also the reference that a
    client dying in round 2, and a SuperNode killed before it, must equal byte for byte (one
    pipeline run fewer in CI)."""
    ws = federated_ws(tmp_path_factory.mktemp("federated"))
    proc = run_cmd(["tinyops", "run"], ws, env={"TINYOPS_FL_LEAVE_OUT": "2:1"})
    (ws / "run.log").write_text(proc.stdout + proc.stderr)
    return ws


def _copy(fed_run: Path, dest: Path, **federated: object) -> Path:
    """The run's prepared data under (maybe) other federated settings; no model yet."""
    ws = federated_ws(dest, **federated)
    shutil.copytree(fed_run / "data/processed", ws / "data/processed")
    return ws


def test_a_federated_run_ends_in_a_verified_bundle_with_its_firmware_run(fed_run: Path) -> None:
    folder = fed_run / "deploy" / DEVICE
    assert (folder / "manifest.json").is_file(), (fed_run / "run.log").read_text()[-3000:]
    checks = {c["name"]: c for c in verify_bundle(folder).dump()["checks"]}
    assert checks["firmware"]["passed"] and "byte-identical" in checks["firmware"]["reason"]
    report = (fed_run / "report/deploy.md").read_text()
    assert "Trained federated: 3 clients, 2 rounds" in report and "strategy fedavg" in report
    assert (fed_run / "report/partitions.png").stat().st_size > 1000
    log = (fed_run / "run.log").read_text()
    assert "round   2/2" in log and "simulation engine" in log


def test_mlflow_has_the_rounds_the_partitions_and_a_federated_run_name(fed_run: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=workspace_env(fed_run)["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("tinyops").experiment_id])
    (parent,) = [r for r in runs if "tinyops.params_sha256" in r.data.tags]
    assert parent.info.run_name.startswith("digits-cnn2d-torch-fedavg-c3r2 · ")
    (train,) = [r for r in runs if r.info.run_name == "train"]
    for metric in ("val_accuracy", "clients_val_accuracy", "clients_val_accuracy_worst",
                   "clients_reported", "bytes_sent", "bytes_received", "round_seconds"):  # fmt: skip
        steps = [m.step for m in client.get_metric_history(train.info.run_id, metric)]
        assert steps == [1, 2], (metric, steps)
    sampled = client.get_metric_history(train.info.run_id, "clients_sampled")
    assert [m.value for m in sampled] == [3, 2]  # client 1 left out of round 2
    assert train.data.params["train.federated.partition"] == "dirichlet"
    assert train.data.params["train.federated.strategy"] == "fedavg"
    logged = {a.path for a in client.list_artifacts(train.info.run_id, "partitions")}
    assert logged == {"partitions/partitions.json", "partitions/partitions.png"}


def _kill_when(
    ws: Path, trigger: str, victim: str, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """`tinyops stage train`, SIGKILLing the process group of the process whose command line
    holds `victim` once a line holds `trigger`: (exit code, output)."""
    proc = subprocess.Popen([str(BIN / "tinyops"), "stage", "train"], cwd=ws,
                            env={**workspace_env(ws), **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    lines, killed = [], False
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if trigger in line and not killed:
            (target,) = [p for p in psutil.process_iter(["cmdline"])
                         if victim in " ".join(p.info["cmdline"] or [])]  # fmt: skip
            os.killpg(target.pid, signal.SIGKILL)
            killed = True
    assert killed, "".join(lines)[-3000:]
    return proc.wait(timeout=300), "".join(lines)


def test_a_client_dying_and_the_server_killed_end_as_the_run_that_left_the_client_out(
    fed_run: Path, tmp_path: Path
) -> None:
    """Client 1 raises in round 2; the server is SIGKILLed then (round 1's checkpoint is
    written before round 2 starts) and resumed: the bytes are those of the uninterrupted run
    whose server left client 1 out of round 2."""
    ws = _copy(fed_run, tmp_path / "ws")
    fail = {"TINYOPS_FL_FAIL": "2:1"}
    code, out = _kill_when(ws, "round 2: client 1 dropped", "pipeline.training.federated.simulation",
                           fail)  # fmt: skip
    assert code != 0 and not (ws / "models/trained/model.pt").exists(), out[-2000:]
    assert _gone("raylet"), "Ray's daemons went with the killed server"
    resumed = run_cmd(["tinyops", "stage", "train"], ws, env=fail)
    said = resumed.stdout + resumed.stderr
    assert "resuming from checkpoint round 1" in said
    assert "round 2: client 1 dropped from train (" in said and "client 1 failed in round 2" in said
    assert model_sha(ws) == model_sha(fed_run)


def _gone(name: str, timeout: float = 15.0) -> bool:
    from pipeline.core.procs import wait_until

    def none_left() -> bool:
        return not [p for p in psutil.process_iter(["cmdline"])
                    if name in " ".join(p.info["cmdline"] or [])]  # fmt: skip

    return wait_until(none_left, timeout, f"every {name} process to stop")


@pytest.mark.oversubscribed  # a SuperLink, 3 SuperNodes and their ClientApps on 2 cores
def test_the_deployment_engine_survives_a_killed_supernode_as_a_left_out_client(
    fed_run: Path, tmp_path: Path
) -> None:
    ws = _copy(fed_run, tmp_path / "ws", engine="deployment", round_timeout=15)
    code, out = _kill_when(ws, "round   1/2", "partition-id=1 num-partitions=3")
    assert code == 0, out[-3000:]
    assert "deployment engine: SuperLink on 127.0.0.1:" in out
    assert "round 2: client 1 dropped from train (no reply within 15 s)" in out
    assert model_sha(ws) == model_sha(fed_run)
    assert _gone("flower-super"), "every Flower process is stopped"
