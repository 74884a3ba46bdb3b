"""Checkpoints: one per epoch, resumable only by the run they belong to.

A checkpoint carries a key of the train/model params and the data hash (and the world size,
where the strategy's checkpoint cannot load at another); the newest readable checkpoint of an
unfinished run with the same key is where a restarted job continues, also one that re-formed at
another world size (an elastic job, or nproc_per_node changed). They are DVC outputs, so they
pickle to the same bytes on every run.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any


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


# train keys that do not change what a checkpoint holds: restarts and retention, and, where the
# checkpoint reshards, how many workers on how many nodes train it.
NOT_KEYED = ("max_restarts", "keep_checkpoints", "rdzv_timeout")
WORLD_KEYS = ("nproc_per_node", "nnodes", "rdzv_endpoint", "threads_per_proc", "oversubscribe",
              "allreduce", "backend", "worker_hosts")  # fmt: skip


def run_key(params_dump: dict[str, Any], data_sha256: str, world: int, reshards: bool) -> str:
    """What the weights depend on: train + model params (not restarts or checkpoint count),
    the data, and the world size unless the checkpoint reshards (a data-parallel file holds the
    whole model; DCP reshards an FSDP checkpoint on load). Checkpoints resume only a run with
    the same key."""
    import hashlib
    import json

    skip = NOT_KEYED + (WORLD_KEYS if reshards else ())
    train = {k: v for k, v in params_dump["train"].items() if k not in skip}
    blob = json.dumps(
        {"train": train, "model": params_dump["model"], "data": data_sha256,
         "world": None if reshards else world},
        sort_keys=True,
    )  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()


def latest_checkpoint(ckpt_dir: Path, key: str, say) -> dict[str, Any] | None:  # type: ignore[no-untyped-def]
    """The newest readable checkpoint of an unfinished run with this key; a truncated or
    unreadable one is reported and skipped for the one before it."""
    import torch

    run = run_file(ckpt_dir)
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


def progress_fields(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint holds of training's progress, whatever its format."""
    return {k: ckpt[k] for k in ("epoch", "history", "best", "stale", "scheduler")}


def _remove(path: Path) -> None:
    """A checkpoint file or shard folder."""
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_all(ckpt_dir: Path) -> None:
    """A fresh run: every epoch checkpoint of any other run goes (files and shard folders)."""
    for old in ckpt_dir.glob("epoch-*"):
        _remove(old)


COMPLETE = re.compile(r"epoch-\d{4}(\.pt)?")  # a published checkpoint, not a scratch copy


def prune(ckpt_dir: Path, keep: int) -> None:
    """Keep the newest `keep` epoch checkpoints (files or shard folders). Scratch copies being
    written beside them (`.partial`, a Keras worker's `.worker-N`) are no checkpoints: counting
    one would push out a complete checkpoint that a resumed run must reproduce."""
    done = sorted(p for p in ckpt_dir.glob("epoch-*") if COMPLETE.fullmatch(p.name))
    for old in done[:-keep]:
        _remove(old)


def remove_scratch(ckpt_dir: Path) -> None:
    """Scratch copies a killed worker left half-written (`.partial`, `.worker-N`): called by the
    writer after the last collective, when no worker can still be writing one."""
    for stale in ckpt_dir.glob("epoch-*"):
        if not COMPLETE.fullmatch(stale.name):
            _remove(stale)


class FileCheckpoints:
    """One file per epoch, written by the writer alone: for data parallelism, where every
    replica holds the same weights, so it loads at any world size."""

    reshards = True

    def find(self, ckpt_dir: Path, key: str, say: Any, world: int = 0) -> dict[str, Any] | None:
        return latest_checkpoint(ckpt_dir, key, say)

    def restore(self, strategy: Any, ckpt: dict[str, Any]) -> tuple[dict[str, Any], dict]:
        import torch

        strategy.load_state(ckpt["model"])
        strategy.optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng_torch"])  # every rank drew the same dropout stream
        return progress_fields(ckpt), ckpt["best_state"]

    def save(
        self, strategy: Any, path: Path, fields: dict[str, Any], best_state: dict, writer: bool
    ) -> None:
        import torch

        from pipeline.models.store import save_torch

        if not writer:
            return
        save_torch(
            canonical(
                {
                    "epoch": fields["epoch"],
                    "model": {
                        k: v.detach().to("cpu") for k, v in strategy.model.state_dict().items()
                    },
                    "optimizer": strategy.optimizer.state_dict(),
                    "scheduler": fields["scheduler"],
                    "best": fields["best"],
                    "best_state": best_state,
                    "history": fields["history"],
                    "stale": fields["stale"],
                    "rng_torch": torch.get_rng_state(),
                    "key": fields["key"],
                }
            ),
            path.with_name(path.name + ".pt"),
        )


class ShardedCheckpoints:
    """One folder per epoch, a shard per rank (torch.distributed.checkpoint): for fsdp,
    pipeline and hybrid, where no rank holds the whole model. DCP reshards an FSDP checkpoint
    to another world size on load; a pipeline's stages are cut per worker, so it does not."""

    def __init__(self, reshards: bool = True) -> None:
        self.reshards = reshards

    def find(
        self, ckpt_dir: Path, key: str, say: Any, world: int = 0
    ) -> tuple[Path, dict[str, Any]] | None:
        from pipeline.training import sharded_checkpoint

        run = run_file(ckpt_dir)
        if run.get("key") != key and not run.get("complete") and run.get("world") != world:
            if not self.reshards and run.get("world"):
                say(
                    f"{ckpt_dir} holds an unfinished run at world size {run['world']}; a pipeline "
                    f"checkpoint loads only at the world that wrote it (its stages are cut per "
                    f"worker), and this job has {world}. Starting afresh; to resume that run "
                    f"instead, set train.nproc_per_node × train.nnodes back to {run['world']}."
                )
            return None
        if run.get("key") != key or run.get("complete"):
            return None
        return sharded_checkpoint.latest(ckpt_dir, key, say)

    def restore(self, strategy: Any, found: tuple[Path, dict[str, Any]]) -> tuple[dict, dict]:
        from pipeline.training import sharded_checkpoint

        folder, meta = found
        return progress_fields(meta), sharded_checkpoint.load(strategy, folder, meta.get("world"))

    def save(
        self, strategy: Any, path: Path, fields: dict[str, Any], best_state: dict, writer: bool
    ) -> None:
        from pipeline.training import sharded_checkpoint

        sharded_checkpoint.save(strategy, path, canonical(fields), best_state, writer)


def run_file(ckpt_dir: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((ckpt_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
