"""Training across machines, on two real network hosts: two Linux network namespaces joined by a
veth pair, each node running from its own clone in its own folder (`tinyops stage train` on
node 0, `tinyops worker` on node 1). Where namespaces cannot be made (not root, no `ip`) the test
says so and runs both nodes on 127.0.0.1; CI sets TINYOPS_REQUIRE_NETNS so it fails instead."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.core import hosts
from pipeline.core.procs import free_port, wait_until
from tests.conftest import BIN, make_workspace, run_cmd, workspace_env

pytestmark = pytest.mark.slow

NODE = {"nproc_per_node": 1, "epochs": 3, "patience": 3}
LOG = ".tinyops/train_metrics.jsonl"


@pytest.fixture()
def pair() -> Iterator[tuple[hosts.Host, hosts.Host]]:
    why = hosts.available()
    if why:
        if os.environ.get("TINYOPS_REQUIRE_NETNS"):
            pytest.fail(f"TINYOPS_REQUIRE_NETNS is set, but {why}")
        print(f"{why}: both nodes run on 127.0.0.1 instead")
        loop = hosts.Host("", "127.0.0.1", "lo")
        yield loop, loop
        return
    with hosts.TwoHosts() as made:
        yield made


def _prefix(host: hosts.Host) -> list[str]:
    return host.prefix() if host.netns else []


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/processed as `tinyops stage prepare` leaves it (the same bytes on every node)."""
    ws = make_workspace(tmp_path_factory.mktemp("prepared"))
    run_cmd(["tinyops", "stage", "prepare"], ws)
    return ws / "data/processed"


def _clones(
    tmp_path: Path,
    a: hosts.Host,
    train: dict,
    model: dict | None = None,
    processed: Path | None = None,
) -> tuple[Path, Path, str]:
    """Node 0's and node 1's clones, each with the data prepared by itself (or a copy of
    `processed`, which is what prepare would write there)."""
    endpoint = f"{a.address}:{free_port() if not a.netns else 29400}"
    train = {**NODE, "rdzv_endpoint": endpoint, **train}
    ws0 = make_workspace(tmp_path / "node0", train, model)
    ws1 = make_workspace(tmp_path / "node1", train, model)
    for ws in (ws0, ws1):
        if processed:
            shutil.copytree(processed, ws / "data/processed")
        else:
            run_cmd(["tinyops", "stage", "prepare"], ws)
    return ws0, ws1, endpoint


def _start(host: hosts.Host, ws: Path, *args: str) -> subprocess.Popen[str]:
    log = open(ws / "node.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [*_prefix(host), str(BIN / "tinyops"), *args], cwd=ws, env=workspace_env(ws),
        stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def _kill(proc: subprocess.Popen[str]) -> None:
    """A node lost: its agent and its workers (torchrun starts each in its own session), all at
    once, as when the machine goes away."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _kill_agent(proc: subprocess.Popen[str]) -> None:
    """SIGKILL node 1's agent (`tinyops worker` and torchrun: one process group) and nothing
    else: its workers, each in its own session, must die with it instead of training on."""
    import psutil

    workers = [w for w in psutil.Process(proc.pid).children(recursive=True)
               if "pipeline.training.worker" in " ".join(w.cmdline())]  # fmt: skip
    assert workers, "node 1 has a training worker"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    wait_until(lambda: not any(w.is_running() and w.status() != "zombie" for w in workers), 10,
               "node 1's workers to die with their agent")  # fmt: skip


def _rows(ws: Path) -> list[dict]:
    try:
        text = (ws / LOG).read_text()
    except OSError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def _log(ws: Path) -> str:
    return (ws / "node.log").read_text(errors="replace")


def _finish(proc: subprocess.Popen[str], ws: Path, timeout: float = 300) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise AssertionError(f"node did not finish:\n{_log(ws)[-3000:]}") from None


def test_two_hosts_train_the_bytes_of_one_host(
    pair: tuple[hosts.Host, hosts.Host], tmp_path: Path
) -> None:
    """2 nodes × 1 process over the veth link = 1 node × 2 processes: same global batch, same
    seed, same replica slices, and a two-way all-reduce adds the same two numbers either way."""
    a, b = pair
    ws0, ws1, _ = _clones(tmp_path, a, {"nnodes": 2})
    node0 = _start(a, ws0, "stage", "train")
    node1 = _start(b, ws1, "worker")
    try:
        assert _finish(node0, ws0) == 0, _log(ws0)[-3000:]
        assert _finish(node1, ws1) == 0, _log(ws1)[-3000:]
    finally:
        _kill(node0), _kill(node1)
    summary = json.loads((ws0 / "metrics/train.json").read_text())
    assert summary["world_size"] == 2 and summary["world_history"] == [
        {"from_epoch": 1, "world_size": 2}
    ]
    assert f"2 node(s): {a.address}" in _log(ws0), _log(ws0)  # both took part
    assert not (ws1 / "models/trained/model.pt").exists(), "node 0 alone writes"
    one = make_workspace(tmp_path / "one", {**NODE, "nproc_per_node": 2})
    shutil.copytree(ws0 / "data/processed", one / "data/processed")
    run_cmd(["tinyops", "stage", "train"], one)
    assert (one / "models/trained/model.pt").read_bytes() == (
        ws0 / "models/trained/model.pt"
    ).read_bytes()


def test_a_fixed_job_waits_for_a_lost_node_then_fails_naming_it(
    pair: tuple[hosts.Host, hosts.Host], prepared: Path, tmp_path: Path
) -> None:
    """nnodes 2: node 1's agent SIGKILLed mid-training (its worker dies with it); node 0
    restarts its worker and waits up to train.rdzv_timeout. Node 1 comes back (`tinyops
    worker` again): training resumes from the last checkpoint at world 2. Lost again and not
    restarted: the job fails, naming it."""
    a, b = pair
    train = {"nnodes": 2, "epochs": 60, "patience": 60, "batch_size": 8, "rdzv_timeout": 15,
             "max_restarts": 2}  # fmt: skip
    ws0, ws1, _ = _clones(tmp_path, a, train, processed=prepared)
    node0 = _start(a, ws0, "stage", "train")
    node1 = _start(b, ws1, "worker")
    try:
        wait_until(lambda: len(_rows(ws0)) >= 1, 120, "the first epoch on two nodes")
        _kill_agent(node1)
        done = len(_rows(ws0))
        node1 = _start(b, ws1, "worker")  # back within train.rdzv_timeout
        wait_until(lambda: len(_rows(ws0)) >= done + 2, 120, "two epochs after node 1 came back")
        _kill(node1)
        code = _finish(node0, ws0, timeout=180)
    finally:
        _kill(node0), _kill(node1)
    log = " ".join(_log(ws0).split())
    assert code != 0, log[-3000:]
    assert log.count("resuming from checkpoint epoch") >= 1, log[-3000:]
    if b.netns:  # on one loopback address the two nodes cannot be told apart by it
        assert f"Node(s) {b.address} took part and stopped answering" in log, log[-3000:]


def test_elastic_job_grows_and_shrinks_and_records_it(
    pair: tuple[hosts.Host, hosts.Host], prepared: Path, tmp_path: Path
) -> None:
    """nnodes '1:2': node 0 starts alone; node 1 joins (the job re-forms at world 2 from the
    last checkpoint), then is lost (it re-forms at world 1) and training ends: every epoch once,
    the world size of each in train.json, the history and MLflow."""
    a, b = pair
    # Small batches make an epoch long enough (about 0.6 s here) that the joins land mid-run.
    epochs = 32
    train = {"nnodes": "1:2", "epochs": epochs, "patience": epochs, "batch_size": 8,
             "rdzv_timeout": 30}  # fmt: skip
    ws0, ws1, _ = _clones(tmp_path, a, train, processed=prepared)
    node0 = _start(a, ws0, "stage", "train")
    node1 = None
    try:
        wait_until(lambda: len(_rows(ws0)) >= 1, 120, "an epoch on node 0 alone")
        node1 = _start(b, ws1, "worker")
        wait_until(lambda: sum(r["metrics"]["world_size"] == 2 for r in _rows(ws0)) >= 2, 120,
                   "two epochs at world 2")  # fmt: skip
        _kill(node1)
        assert _finish(node0, ws0) == 0, _log(ws0)[-3000:]
    finally:
        _kill(node0)
        if node1:
            _kill(node1)
    summary = json.loads((ws0 / "metrics/train.json").read_text())
    worlds = [span["world_size"] for span in summary["world_history"]]
    assert worlds == [1, 2, 1], summary["world_history"]
    history = (ws0 / "metrics/train_history.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in history] == list(range(1, epochs + 1)), (
        "each epoch once"
    )
    log = _log(ws0)
    assert "world re-formed: 1 → 2 workers" in log and "world re-formed: 2 → 1 workers" in log
    db = sqlite3.connect(ws0 / "mlflow/mlflow.db")
    logged = [v for (v,) in db.execute(
        "select value from metrics where key = 'world_size' order by step, timestamp")]  # fmt: skip
    assert {1.0, 2.0} <= set(logged), logged
    from pipeline.models.store import load_model

    model, _, _ = load_model(ws0 / "models/trained/model.pt")  # what export loads
    assert sum(p.numel() for p in model.parameters()) == summary["parameters"]


def test_keras_trains_across_two_hosts_and_a_killed_worker_restarts_both_groups(
    pair: tuple[hosts.Host, hosts.Host], prepared: Path, tmp_path: Path
) -> None:
    """MultiWorkerMirroredStrategy with train.worker_hosts on the two hosts: node 1's worker
    SIGKILLed after an epoch; its group restarts it, node 0's group restarts on the broken
    collective, and both resume from their own clone's copy of the last checkpoint."""
    import psutil

    a, b = pair
    port = 29500 if a.netns else free_port()
    workers = [f"{a.address}:{port}", f"{b.address}:{port if b.netns else free_port()}"]
    train = {"nnodes": 2, "epochs": 4, "patience": 4, "worker_hosts": workers}
    ws0, ws1, _ = _clones(tmp_path, a, train, {"framework": "keras"}, prepared)
    node0 = _start(a, ws0, "stage", "train")
    node1 = _start(b, ws1, "worker")
    try:
        wait_until(lambda: len(_rows(ws0)) >= 2, 240, "two Keras epochs on two hosts")
        (victim,) = [p for p in psutil.Process(node1.pid).children(recursive=True)
                     if "pipeline.training.keras_worker" in " ".join(p.cmdline())]  # fmt: skip
        victim.kill()
        assert _finish(node0, ws0) == 0, _log(ws0)[-3000:]
        assert _finish(node1, ws1) == 0, _log(ws1)[-3000:]
    finally:
        _kill(node0), _kill(node1)
    assert "keras worker 0 exited with status -9; restarting all workers" in _log(ws1)
    assert "resuming from checkpoint epoch" in _log(ws0), _log(ws0)[-3000:]
    summary = json.loads((ws0 / "metrics/train.json").read_text())
    assert summary["framework"] == "keras" and summary["world_size"] == 2
    assert summary["epochs_run"] == 4
