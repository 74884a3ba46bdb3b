"""The multi-node helpers that need no second node: addresses, fingerprint differences, and the
lost-node message node 0 builds from its watcher's record."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError
from pipeline.training import nodes


def test_this_nodes_address_and_interface() -> None:
    assert nodes.local_address("127.0.0.1:29400") == "127.0.0.1"
    assert nodes.interface_of("127.0.0.1") == "lo"
    assert nodes.interface_of("192.0.2.77") is None  # TEST-NET-1: on no interface here
    env = nodes.agent_env("127.0.0.1", {"GLOO_SOCKET_IFNAME": "eth7"})
    assert env["GLOO_SOCKET_IFNAME"] == "eth7", "the user's choice is kept"
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    with pytest.raises(ConfigError, match="not host:port"):
        nodes.split_endpoint("10.0.0.1")


def test_differences_name_what_differs_and_what_to_do() -> None:
    node0 = {"code": "a" * 64, "params": "b" * 64, "data": "c" * 64}
    assert nodes.differences(dict(node0), node0) == []
    wrong = nodes.differences({**node0, "data": "d" * 64}, node0)
    assert len(wrong) == 1 and wrong[0].startswith("data differs (this node dddddddddddd")
    assert "tinyops stage prepare" in wrong[0]


def test_a_lost_node_is_one_whose_beats_stopped(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    now = time.time()
    assert nodes.lost_nodes() == "", "no record: nothing to say"
    nodes.WATCH_STATE.parent.mkdir(parents=True)
    nodes.WATCH_STATE.write_text(json.dumps({
        "node0": "10.0.0.1", "seen": ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
        "beats": {"10.0.0.1": now - 60, "10.0.0.2": now - 30, "10.0.0.3": now - 1},
    }))  # fmt: skip
    said = nodes.lost_nodes()
    assert "Node(s) 10.0.0.2 took part and stopped answering" in said
    assert "10.0.0.1" not in said and "10.0.0.3" not in said


def test_a_pipeline_checkpoint_at_another_world_says_what_to_change(tmp_path: Path) -> None:
    """A pipeline's shards are cut per stage: at another world the job starts afresh, saying
    which world would resume it; a resharding (FSDP) checkpoint is looked up by its key."""
    from pipeline.training.checkpoint import RUN_FILE, ShardedCheckpoints

    (tmp_path / RUN_FILE).write_text(json.dumps({"key": "k2", "world": 2, "complete": False}))
    said: list[str] = []
    assert ShardedCheckpoints(reshards=False).find(tmp_path, "k4", said.append, 4) is None
    assert len(said) == 1 and "loads only at the world that wrote it" in said[0]
    assert "set train.nproc_per_node × train.nnodes back to 2" in said[0]
    said.clear()
    assert ShardedCheckpoints(reshards=True).find(tmp_path, "k", said.append, 4) is None
    assert said == []
