"""The rendezvous store's other users, as small processes (they import torch; the launcher and
the CLI do not). Node 0 runs `watch`; a joining node runs `check` before its agent starts.

    python -m pipeline.training.rendezvous watch --endpoint H:P --address A --fingerprint J ...
    python -m pipeline.training.rendezvous check --endpoint H:P --fingerprint J --timeout S

`watch` connects to the c10d store node 0's torchrun agent hosts, publishes the fingerprint
(pipeline/training/nodes.py), then reads the rendezvous state once a second and logs each new
round's members: the log of who trained when. `check` waits (bounded) for node 0 to answer and
compares fingerprints; exit status 3 with the reason on stderr when it must not join.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from base64 import b64decode
from datetime import timedelta
from pathlib import Path
from typing import Any

from pipeline.core import atomic
from pipeline.training.nodes import FINGERPRINT_KEY, RDZV_ID, differences, split_endpoint

STATE_KEY = f"torch.rendezvous.{RDZV_ID}"  # torch's c10d rendezvous backend keeps its state here
REFUSED = 3


def connect(endpoint: str, timeout: float, host_it: bool = False) -> Any:
    """A client of the store at `endpoint`, waiting up to `timeout` s for it to answer; or,
    `host_it`, the store itself (a Keras job: no torchrun agent hosts one)."""
    import torch.distributed as dist

    host, port = split_endpoint(endpoint)
    return dist.TCPStore(
        host, port, is_master=host_it, timeout=timedelta(seconds=timeout), wait_for_workers=False
    )


def members(store: Any) -> tuple[tuple[int, list[str]] | None, dict[str, float]]:
    """The round and its members once it has formed (None while one forms), and each node's
    last keep-alive beat (Unix time): a node SIGKILLed, or cut off, stops beating."""
    raw = store.get(STATE_KEY) if store.check([STATE_KEY]) else b""
    try:
        state = pickle.loads(b64decode(raw))  # written by torch's own agents: trusted as they are
    except Exception:  # the "no state yet" sentinel, or a round being written
        return None, {}
    beats: dict[str, float] = {}
    for node, beat in state.last_heartbeats.items():
        beats[node.addr] = max(beats.get(node.addr, 0.0), beat.timestamp())
    if not state.complete or not state.participants:
        return None, beats
    return (state.round, sorted(node.addr for node in state.participants)), beats


def watch(args: argparse.Namespace) -> int:
    store = connect(args.endpoint, args.timeout, args.host)
    store.set(FINGERPRINT_KEY, args.fingerprint)
    seen: list[str] = [args.address]
    last: Any = None
    record: dict[str, Any] = {}
    beats: dict[str, float] = {}
    while True:
        try:
            formed, now_beats = members(store)
        except Exception:  # the agent, and its store, ended with the job
            return 0
        beats.update(now_beats)
        # A round without node 0 is one node 0's agent is leaving to restart: not a job.
        if formed and formed != last and args.address in formed[1]:
            last = formed
            seen += [a for a in formed[1] if a not in seen]
            print(f"rendezvous round {formed[0]}: {len(formed[1])} node(s): "
                  f"{', '.join(formed[1])}", flush=True)  # fmt: skip
        now = {"node0": args.address, "seen": list(seen), "beats": dict(beats)}
        if now != record:
            record = now
            atomic.write_json(Path(args.state), now)
        time.sleep(1.0)


def check(args: argparse.Namespace) -> int:
    try:
        store = connect(args.endpoint, args.timeout)
        store.wait([FINGERPRINT_KEY], timedelta(seconds=args.timeout))
    except Exception as exc:
        print(
            f"nobody answered at the rendezvous {args.endpoint} within {args.timeout:g} s "
            f"(train.rdzv_timeout): start `tinyops run` on node 0 first, and check that this "
            f"node reaches that address and port ({type(exc).__name__})",
            file=sys.stderr,
        )
        return REFUSED
    theirs = json.loads(store.get(FINGERPRINT_KEY))
    wrong = differences(json.loads(args.fingerprint), theirs)
    if wrong:
        print("this node does not train what node 0 trains; it will not join:\n  "
              + "\n  ".join(wrong), file=sys.stderr)  # fmt: skip
        return REFUSED
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["watch", "check"])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--fingerprint", required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--address", default="")
    parser.add_argument("--state", default="")
    parser.add_argument("--host", action="store_true", help="host the store (no agent does)")
    args = parser.parse_args(argv)
    return watch(args) if args.action == "watch" else check(args)


if __name__ == "__main__":
    sys.exit(main())
