"""Checkpoints of the sharded strategies (fsdp, pipeline, hybrid) with torch.distributed.checkpoint:
every rank writes its own shard of the model, optimizer and best weights in parallel, one folder
per epoch (`epoch-NNNN/`), and reads back only what it holds.

A folder appears under its final name only when every rank's shard and `meta.json` (epoch,
history, early-stopping state, LR schedule, the run key) are on disk, so a killed job resumes
from the last complete epoch. DCP's metadata normally carries a random save id; ours leaves it
out, so the same training writes the same bytes (the folders are DVC outputs). Across nodes the
folder must be on a file system every node sees (docs/nodes.md). A folder written at one world
size loads at another: DCP reshards each tensor to the ranks that now hold it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter

from pipeline.core import atomic

META = "meta.json"


class _ReproducibleWriter(FileSystemWriter):
    """FileSystemWriter without the per-save uuid and path in `.metadata`."""

    def storage_meta(self) -> None:  # type: ignore[override]
        return None


def _state(
    strategy: Any, best: dict[str, Any], rng_rank: int | None = None
) -> tuple[dict[str, Any], list[Any]]:
    """The tensors to save (the optimizer's per-parameter state only: its hyperparameters are
    the params', and the learning rate comes back with the LR schedule), and the param groups.
    `rng_rank`: whose RNG state this rank takes back (a resharded load has other ranks)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optim = get_state_dict(strategy.model, strategy.optimizer)
    rank = dist.get_rank() if rng_rank is None else rng_rank
    tensors = {
        "model": model,
        "optim": optim["state"],
        "best": best,
        f"rng.{rank}": torch.get_rng_state(),
    }
    return tensors, optim["param_groups"]


def save(
    strategy: Any, folder: Path, meta: dict[str, Any], best: dict[str, Any], writer: bool
) -> None:
    """Collective: every rank's shard into `folder`, then the writer publishes it."""
    partial = folder.with_name(folder.name + ".partial")
    if writer:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier()
    tensors, _ = _state(strategy, best)
    dcp.save(tensors, storage_writer=_ReproducibleWriter(partial, thread_count=1))
    dist.barrier()
    if writer:
        atomic.write_json(partial / META, {**meta, "world": dist.get_world_size()})
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    dist.barrier()


def latest(ckpt_dir: Path, key: str, say: Any) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete epoch folder of this run (writer only)."""
    for folder in sorted(ckpt_dir.glob("epoch-*[0-9]"), reverse=True):
        try:
            meta = json.loads((folder / META).read_text())
        except (OSError, ValueError):
            say(f"checkpoint {folder} is incomplete; trying the one before")
            continue
        if meta.get("key") == key and (folder / ".metadata").is_file():
            return folder, meta
        say(f"checkpoint {folder} belongs to another training run; skipping it")
    return None


def load(strategy: Any, folder: Path, saved_world: int | None = None) -> dict[str, Any]:
    """Collective: restore this rank's model, optimizer and RNG; return its best-weights shard.
    DCP reshards what a world of another size wrote; a rank the writing world did not have
    takes the RNG state of rank (its rank mod that world)."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    rank = dist.get_rank()
    rng_rank = rank % saved_world if saved_world else rank
    state, groups = _state(strategy, strategy.state(), rng_rank)
    dcp.load(state, checkpoint_id=folder)
    set_state_dict(
        strategy.model,
        strategy.optimizer,
        model_state_dict=state["model"],
        optim_state_dict={"state": state["optim"], "param_groups": groups},
    )
    torch.set_rng_state(state[f"rng.{rng_rank}"])
    return state["best"]


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
