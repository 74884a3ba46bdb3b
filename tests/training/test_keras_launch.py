"""The Keras worker group behaves like torchrun's agent: a worker that fails restarts the whole
group (up to train.max_restarts), and a stop from the launcher (Ctrl-C, SIGTERM of the stage) is
final. Real processes, no TensorFlow: the group does not care what its workers run."""

from __future__ import annotations

import sys
import time

from pipeline.core.config import parse_params
from pipeline.training.keras_launch import WorkerGroup

KERAS = {"model": {"framework": "keras"}, "train": {"nproc_per_node": 2}}


def test_a_failing_worker_restarts_the_group_until_no_restarts_are_left() -> None:
    params = parse_params(KERAS | {"train": {"nproc_per_node": 2, "max_restarts": 2}})
    said: list[str] = []
    fail = [sys.executable, "-c", "import sys; sys.exit(3)"]
    group = WorkerGroup(params, fail, say=said.append)
    assert group.wait(timeout=60) == 3
    assert group.restarts == 2
    assert any("restarting all workers (restart 1/2)" in s for s in said), said
    assert "no restarts left" in said[-1]


def test_a_stopped_group_is_not_restarted() -> None:
    params = parse_params(KERAS)
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    group = WorkerGroup(params, sleep, say=lambda _: None)
    start = time.monotonic()
    group.terminate()
    assert group.wait(timeout=30) != 0
    assert group.restarts == 0 and all(p.poll() is not None for p in group.procs)
    assert time.monotonic() - start < 15
