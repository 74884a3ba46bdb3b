"""Several machines in one torch training job, without torch in this process.

Node 0 is the machine that runs `tinyops run` (or `tinyops stage train`): its torchrun agent
hosts the c10d rendezvous store at train.rdzv_endpoint, and a small watcher process
(pipeline/training/rendezvous.py) publishes there what this node trains from: the code, the
validated params and the prepared data, as hashes. Every other node runs `tinyops worker` from
its own clone; it reads those hashes first and refuses to join when one differs, naming it.

What each agent needs on a real network (each was needed on two network namespaces here):
node 0 hosts the store (`is_host=1`, the others `is_host=0`), every agent names its own address
(`--local-addr`), gloo binds to the interface that carries that address (GLOO_SOCKET_IFNAME),
and the agents do not share the rendezvous store with the workers
(TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1), without which a node joining an elastic job waits for
the store's address forever (pytorch#135712).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path

from pipeline.core import catalog
from pipeline.core.config import Params
from pipeline.core.errors import ConfigError
from pipeline.core.provenance import code_sha256, json_sha256

RDZV_ID = "tinyops-train"
FINGERPRINT_KEY = "tinyops/fingerprint"
# A node whose last rendezvous keep-alive beat (every 5 s) is older than this has gone.
LOST_SECONDS = 12.0
LAST_CALL_SECONDS = 2  # how long a forming rendezvous waits for more nodes once it has its min
WATCH_LOG = Path(".tinyops/rendezvous.log")  # node 0's watcher: membership, round by round
WATCH_STATE = Path(".tinyops/rendezvous.json")  # the nodes it saw, and those in the last round
WHAT = {"code": "the code (pipeline/, flows/, user_models/, dvc.yaml): check out node 0's commit",
        "params": "the validated params: copy node 0's params.yaml",
        "data": "the prepared data: run `tinyops stage prepare` (or `dvc pull`) on this node"}  # fmt: skip


def fingerprint(params: Params) -> dict[str, str]:
    """What this node would train from, as hashes: what every node of a job must share."""
    try:
        data = json.loads(catalog.META_FILE.read_text())["data_sha256"]
    except (OSError, ValueError, KeyError):
        raise ConfigError(
            f"{catalog.META_FILE} is missing or unreadable: prepare the data on this node first "
            "(`tinyops stage prepare`, deterministic, or `dvc pull`)"
        ) from None
    return {"code": code_sha256(), "params": json_sha256(params.model_dump(mode="json")),
            "data": data}  # fmt: skip


def differences(mine: dict[str, str], node0: dict[str, str]) -> list[str]:
    """Each hash that differs from node 0's, in words with what to do about it."""
    return [
        f"{name} differs (this node {mine.get(name, '?')[:12]}, node 0 {theirs[:12]}): {WHAT[name]}"
        for name, theirs in sorted(node0.items())
        if mine.get(name) != theirs
    ]


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"rendezvous endpoint {endpoint!r} is not host:port (10.0.0.1:29400)")
    return host.strip("[]"), int(port)


def local_address(endpoint: str) -> str:
    """This machine's address on the route to the rendezvous (no packet is sent): the address
    the other nodes reach it by."""
    host, port = split_endpoint(endpoint)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, port))
        except OSError as exc:
            raise ConfigError(
                f"no route to the rendezvous {endpoint} from this node: {exc}"
            ) from None
        return str(probe.getsockname()[0])


def interface_of(address: str) -> str | None:
    """The network interface that carries `address` (IPv4), for GLOO_SOCKET_IFNAME."""
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(address).is_loopback:
            return "lo"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            packed = struct.pack("256s", name.encode()[:15])
            try:
                found = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, packed)[20:24])
            except OSError:  # no IPv4 address on it
                continue
            if found == address:
                return name
    return None


def agent_arguments(
    params: Params, hosts_store: bool, address: str, endpoint: str | None = None
) -> list[str]:
    """torchrun's rendezvous flags for this node of a multi-node (or elastic) job; `endpoint`:
    node 0's rendezvous as this node reaches it (`tinyops worker --rdzv`), else the params'."""
    tp = params.train
    conf = f"is_host={int(hosts_store)},join_timeout={tp.rdzv_timeout},last_call_timeout={LAST_CALL_SECONDS}"
    return ["--nnodes", str(tp.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint",
            endpoint or str(tp.rdzv_endpoint), "--rdzv-id", RDZV_ID, "--rdzv-conf", conf,
            "--local-addr", address]  # fmt: skip


def agent_env(address: str, env: dict[str, str]) -> dict[str, str]:
    """What the agents and workers of a multi-node job need beside the flags (see above); a
    GLOO_SOCKET_IFNAME the user set is kept."""
    out = {**env, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    iface = interface_of(address)
    if iface and "GLOO_SOCKET_IFNAME" not in env:
        out["GLOO_SOCKET_IFNAME"] = iface
    return out


def quiet_env() -> dict[str, str]:
    """For the watcher and the check: c10d's C++ warnings off (a host without reverse DNS gets
    "the hostname of the client socket cannot be retrieved" on every connection)."""
    return {**os.environ, "TORCH_CPP_LOG_LEVEL": "ERROR"}


def watcher_command(params: Params, address: str) -> list[str]:
    """Node 0's watcher: publishes the fingerprint and logs the rendezvous rounds."""
    return [sys.executable, "-m", "pipeline.training.rendezvous", "watch",
            "--endpoint", str(params.train.rdzv_endpoint), "--address", address,
            "--fingerprint", json.dumps(fingerprint(params)),
            "--timeout", str(params.train.rdzv_timeout), "--state", str(WATCH_STATE)]  # fmt: skip


def check_command(params: Params, endpoint: str) -> list[str]:
    """A joining node's check against node 0's fingerprint, before its agent starts."""
    return [sys.executable, "-m", "pipeline.training.rendezvous", "check",
            "--endpoint", endpoint, "--fingerprint", json.dumps(fingerprint(params)),
            "--timeout", str(params.train.rdzv_timeout)]  # fmt: skip


def lost_nodes() -> str:
    """For a failed multi-node job: the nodes that took part and were not in its last round."""
    try:
        state = json.loads(WATCH_STATE.read_text())
    except (OSError, ValueError):
        return ""
    beats, now = state.get("beats", {}), time.time()
    gone = [a for a in state.get("seen", []) if a != state.get("node0")
            and now - beats.get(a, 0.0) > LOST_SECONDS]  # fmt: skip
    if not gone:
        return ""
    return (
        f" Node(s) {', '.join(gone)} took part and stopped answering the rendezvous: the job "
        "waited train.rdzv_timeout for them to come back. Restart `tinyops worker` there, or "
        "make the job elastic (train.nnodes '1:2') to go on without them."
    )
