"""Checkpoints: one per epoch, resumable only by the run they belong to.

A checkpoint carries a key of the train/model params, the data hash and the world size; the
newest readable checkpoint of an unfinished run with the same key is where a restarted job
continues. They are DVC outputs, so they pickle to the same bytes on every run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch


def canonical(obj: Any) -> Any:
    """The same checkpoint pickles to the same bytes whether its history was built here or loaded
    from an earlier checkpoint: pickle shares equal strings only when they are one object, so
    every dict key is interned."""
    if isinstance(obj, dict):
        return {(sys.intern(k) if isinstance(k, str) else k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [canonical(v) for v in obj]
    return obj


RUN_FILE = "run.json"  # beside the checkpoints: which training they belong to, and if it finished


def run_key(params_dump: dict[str, Any], data_sha256: str, world: int) -> str:
    """What the weights depend on: train + model params (not restarts or checkpoint count),
    the data, the world size. Checkpoints resume only a run with the same key."""
    import hashlib
    import json

    train = {
        k: v
        for k, v in params_dump["train"].items()
        if k not in ("max_restarts", "keep_checkpoints")
    }
    blob = json.dumps(
        {"train": train, "model": params_dump["model"], "data": data_sha256, "world": world},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def latest_checkpoint(ckpt_dir: Path, key: str, say) -> dict[str, Any] | None:  # type: ignore[no-untyped-def]
    """The newest readable checkpoint of an unfinished run with this key; a truncated or
    unreadable one is reported and skipped for the one before it."""
    import json

    try:
        run = json.loads((ckpt_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if run.get("key") != key or run.get("complete"):
        return None
    for path in sorted(ckpt_dir.glob("epoch-*.pt"), reverse=True):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            if ckpt.get("key") == key:
                return ckpt
            say(f"checkpoint {path} belongs to another training run; skipping it")
        except Exception as exc:  # truncated, corrupt, or not a checkpoint
            say(f"checkpoint {path} is unreadable ({type(exc).__name__}); trying the one before")
    return None
