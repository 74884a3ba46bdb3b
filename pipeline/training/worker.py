"""One DDP worker; torchrun starts N of them. `tinyops stage train` builds the command, e.g.

    torchrun --standalone --nproc-per-node 2 -m pipeline.training.worker --params params.yaml
    torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        --rdzv-id tinyops-train -m pipeline.training.worker --params params.yaml   # other nodes

Every rank trains on its shard (DistributedSampler) and joins the gradient all-reduce; metrics are
all-reduced so every rank takes the same early-stopping decision. One process alone prints, logs to
MLflow and writes files: rank 0 on one node, local rank 0 of the `tinyops stage train` node across
several (see _is_writer).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from pipeline.core import atomic
from pipeline.core.catalog import DatasetMeta
from pipeline.core.config import Params, load_params
from pipeline.data.prepare import load_processed
from pipeline.models.architecture import Architecture, build_model, count_parameters
from pipeline.models.store import save_model, save_torch
from pipeline.training import shm_allreduce
from pipeline.training.checkpoint import RUN_FILE, canonical, latest_checkpoint, run_key
from pipeline.training.launcher import WRITER_ENV


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _share(obj: Any, writer_rank: int) -> Any:
    """The writer's object on every rank (only its node has the checkpoints)."""
    box = [obj]
    dist.broadcast_object_list(box, src=writer_rank)
    return box[0]


def use_shared_memory(allreduce: str) -> bool:
    """train.allreduce resolved for this job (pipeline/shm_allreduce.py)."""
    if allreduce == "backend" or dist.get_world_size() == 1:
        return False
    reason = shm_allreduce.this_job_reason(dist.get_backend())
    if allreduce == "shared_memory" and reason:
        raise RuntimeError(f"train.allreduce is shared_memory, but {reason}")
    return reason is None


def make_ddp(
    model: nn.Module, device: torch.device, shared_memory: bool = False
) -> tuple[nn.parallel.DistributedDataParallel, bool]:
    """DDP as training and `tinyops bench` use it, and whether it averages through shared memory.

    No buffer broadcast before every forward (a collective per step that 2 CPU workers feel);
    sync_buffers averages the BatchNorm statistics once per epoch instead. Gradients live in the
    all-reduce bucket itself, saving a copy per step. With shared_memory, the gradients are
    averaged through a mapping the workers share instead of gloo's TCP; if that cannot be set up
    on some rank, every rank keeps the backend's all-reduce and rank 0 says why.
    """
    ddp = nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False,
        gradient_as_bucket_view=True,
    )
    if not shared_memory:
        return ddp, False
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    try:
        state = shm_allreduce.SharedMemoryAllReduce(grad_bytes, group=ddp.process_group)
    except shm_allreduce.SharedMemoryUnavailable as exc:
        if dist.get_rank() == 0:
            warnings.warn(
                f"shared-memory all-reduce unavailable ({exc}); using the backend's all-reduce",
                RuntimeWarning,
                stacklevel=2,
            )
        return ddp, False
    ddp.register_comm_hook(state, shm_allreduce.comm_hook)
    return ddp, True


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with the fused kernel: one call per step instead of several ops per parameter."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)


def train_step(
    ddp: nn.Module, optimizer: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor
) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(ddp(xb), yb)
    loss.backward()
    optimizer.step()
    return loss.detach()


def batches(indices: list[int], batch_size: int) -> list[torch.Tensor]:
    """The sampler's order cut into batches, as a DataLoader would, without a per-sample fetch
    and collate: the data is one in-memory tensor, so a batch is one indexing op."""
    idx = torch.tensor(indices, dtype=torch.long)
    return list(idx.split(batch_size))


def sync_buffers(model: nn.Module) -> None:
    """Average BatchNorm running statistics over the ranks (each saw its own shard), so every
    rank evaluates and checkpoints the same model."""
    floats = [b for b in model.buffers() if b.is_floating_point()]
    if not floats:
        return
    flat = torch.cat([b.reshape(-1) for b in floats])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for b in floats:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def _evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, rank: int, world: int, device: torch.device
) -> tuple[float, float]:
    """Loss and accuracy over the whole split: each rank takes every world-th sample, then all-reduce."""
    model.eval()
    xs, ys = x[rank::world].to(device), y[rank::world].to(device)
    with torch.no_grad():
        logits = model(xs) if len(xs) else torch.zeros((0, 1), device=device)
        loss_sum = nn.functional.cross_entropy(logits, ys, reduction="sum") if len(xs) else 0.0
        correct = (logits.argmax(1) == ys).sum() if len(xs) else 0
    totals = torch.tensor(
        [float(loss_sum), float(correct), float(len(xs))], dtype=torch.float64, device=device
    )
    dist.all_reduce(totals)
    return totals[0].item() / totals[2].item(), totals[1].item() / totals[2].item()


class _Reporter:
    """Rank-0 output: a progress bar on a terminal, one line per epoch, and one JSON line of
    metrics per epoch that the launcher forwards to MLflow in batches (pipeline/train.py), so a
    worker never imports mlflow nor waits on the tracking store."""

    def __init__(self, metrics_log: Path, epochs: int, steps: int) -> None:
        self.metrics_log = metrics_log
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True, soft_wrap=True)  # whole lines in logs
        self.progress = Progress(
            TextColumn("[bold]train[/] epoch {task.fields[epoch]}/" + str(epochs)),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            disable=not self.console.is_terminal,
        )
        self.task = self.progress.add_task("train", total=steps, epoch=1)

    def metrics(self, epoch: int, values: dict[str, float]) -> None:
        import json

        line = json.dumps({"step": epoch, "time_ms": int(time.time() * 1000), "metrics": values})
        with self.metrics_log.open("a", encoding="utf-8") as f:
            f.write(line + "\n")


def _progress_file(timing_file: Path) -> Path:
    return timing_file.with_name("train_progress.json")


def _seconds_before(timing_file: Path, epoch: int) -> float:
    """Training time spent up to the checkpoint being resumed (0 if not recorded)."""
    import json

    try:
        progress = json.loads(_progress_file(timing_file).read_text())
    except (OSError, ValueError):
        return 0.0
    return float(progress["train_seconds"]) if progress.get("epoch") == epoch else 0.0


def _is_writer(rank: int, nnodes: int) -> bool:
    """The one process that prints, logs and writes files.

    On one node: rank 0. Across nodes, c10d hands global rank 0 to whichever agent hosts the
    rendezvous store, so the writer is local rank 0 of the node started by `tinyops stage train`
    (it sets TINYOPS_WRITER_NODE); DDP keeps every replica's weights identical, so any rank may write.
    """
    if nnodes == 1:
        return rank == 0
    return os.environ.get(WRITER_ENV) == "1" and os.environ.get("LOCAL_RANK") == "0"


@dataclass
class Job:
    """What stays fixed for the whole training: params, placement, data, model and optimizer."""

    args: argparse.Namespace
    params: Params
    rank: int
    world: int
    device: torch.device
    arch: Architecture
    meta: DatasetMeta
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    model: nn.Module
    ddp: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: DistributedSampler
    per_rank: int
    steps: int
    key: str
    reporter: _Reporter | None

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.args.out_dir) / "checkpoints"

    @property
    def timing_file(self) -> Path:
        return Path(self.args.timing_file)

    def say(self, text: str) -> None:
        if self.reporter:
            self.reporter.console.print(text)


@dataclass
class Progress:
    """What changes epoch by epoch, and what a checkpoint saves."""

    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"val_loss": float("inf")})
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    stale: int = 0
    train_seconds: float = 0.0
    start: int = 1


def _place(params: Params) -> tuple[int, int, torch.device]:
    """Rank, world size and device; threads, determinism and seeds set before anything random."""
    tp = params.train
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = dist.get_backend() == "nccl"
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(tp.threads_per_proc)
    torch.use_deterministic_algorithms(tp.deterministic)
    torch.backends.cudnn.benchmark = False
    _seed_everything(tp.seed)
    return dist.get_rank(), dist.get_world_size(), device


def setup(args: argparse.Namespace) -> Job:
    """Load params and data, build the model, wrap it in DDP, make the optimizer and sampler."""
    params = load_params(args.params)
    tp = params.train
    rank, world, device = _place(params)
    data = load_processed(Path(args.data_dir))
    arch = Architecture(
        input_shape=tuple(data.meta.input_shape),  # type: ignore[arg-type]
        num_classes=data.meta.num_classes,
        channels=params.model.channels,
        kernel_size=params.model.kernel_size,
        dropout=params.model.dropout,
    )
    model = build_model(arch).to(device)
    # A 1-channel first conv's weight grad comes back with strides (9,1,3,1) against the
    # parameter's (9,9,3,1): the same memory, since that dim has size 1. DDP warns anyway.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ddp, shared_memory = make_ddp(model, device, use_shared_memory(tp.allreduce))
    optimizer = make_optimizer(model, tp.lr, tp.weight_decay)
    x_train = torch.from_numpy(data.x["train"]).to(device)
    sampler = DistributedSampler(
        range(len(x_train)), num_replicas=world, rank=rank, shuffle=True, seed=tp.seed
    )
    per_rank = tp.batch_size // world
    steps = -(-len(sampler) // per_rank)
    writer = _is_writer(rank, tp.nnodes)
    job = Job(
        args, params, rank, world, device, arch, data.meta,
        x_train, torch.from_numpy(data.y["train"]).to(device),
        torch.from_numpy(data.x["val"]), torch.from_numpy(data.y["val"]),
        model, ddp, optimizer,
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=tp.epochs),
        sampler, per_rank, steps,
        run_key(params.model_dump(mode="json"), data.meta.data_sha256, world),
        _Reporter(Path(args.metrics_log), tp.epochs, steps) if writer else None,
    )  # fmt: skip
    job.say(
        f"train: {world} worker(s) × {tp.threads_per_proc} thread(s), backend {dist.get_backend()} "
        f"(all-reduce: {'shared memory' if shared_memory else dist.get_backend()}), "
        f"{count_parameters(model):,} parameters, {len(x_train)} training samples"
    )
    return job


def resume(job: Job) -> Progress:
    """The writer finds the newest checkpoint of this run (if any) and every rank loads it."""
    flags: list[Any] = [None] * job.world
    dist.all_gather_object(flags, job.reporter is not None)
    ckpt = None
    if job.reporter:
        ckpt = latest_checkpoint(job.ckpt_dir, job.key, job.say)
        if ckpt is None:  # a fresh run: checkpoints of any other run go
            for old in job.ckpt_dir.glob("epoch-*.pt"):
                old.unlink()
        atomic.write_json(job.ckpt_dir / RUN_FILE, {"key": job.key, "complete": False})
    ckpt = _share(ckpt, flags.index(True))
    if ckpt is None:
        return Progress()
    job.model.load_state_dict(ckpt["model"])
    job.optimizer.load_state_dict(ckpt["optimizer"])
    job.scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng_torch"])  # every rank drew the same dropout stream
    tp = job.params.train
    progress = Progress(
        history=ckpt["history"],
        best=ckpt["best"],
        best_state=ckpt["best_state"],
        stale=ckpt["stale"],
        train_seconds=_seconds_before(job.timing_file, ckpt["epoch"]),
        # A crash after the epoch that ended training: nothing left to train.
        start=tp.epochs + 1 if ckpt["stale"] >= tp.patience else ckpt["epoch"] + 1,
    )
    job.say(
        f"resuming from checkpoint epoch {ckpt['epoch']} (restart "
        f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}); continuing at epoch {progress.start}"
    )
    return progress


def run_epoch(job: Job, epoch: int) -> dict[str, float]:
    """One pass over this rank's shard, then the synced evaluation: the epoch's history row."""
    job.sampler.set_epoch(epoch)
    job.ddp.train()
    loss_sum = torch.zeros(2, dtype=torch.float64, device=job.device)
    if job.reporter:
        job.reporter.progress.reset(job.reporter.task, total=job.steps, epoch=epoch)
    for idx in batches(list(job.sampler), job.per_rank):
        idx = idx.to(job.device)
        xb, yb = job.x_train[idx], job.y_train[idx]
        loss = train_step(job.ddp, job.optimizer, xb, yb)
        loss_sum[0] += loss.double() * len(yb)
        loss_sum[1] += len(yb)
        if job.reporter:
            job.reporter.progress.advance(job.reporter.task)
    job.scheduler.step()
    sync_buffers(job.model)
    dist.all_reduce(loss_sum)
    val_loss, val_acc = _evaluate(job.model, job.x_val, job.y_val, job.rank, job.world, job.device)
    return {
        "epoch": epoch,
        "train_loss": loss_sum[0].item() / loss_sum[1].item(),
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "lr": job.scheduler.get_last_lr()[0],
    }


def record_epoch(job: Job, progress: Progress, row: dict[str, float]) -> bool:
    """Add the row to the history, keep the best weights; whether this epoch improved."""
    progress.history.append(row)
    if row["val_loss"] >= progress.best["val_loss"]:
        progress.stale += 1
        return False
    progress.best = {
        "epoch": row["epoch"],
        "val_loss": row["val_loss"],
        "val_accuracy": row["val_accuracy"],
    }
    progress.best_state = {
        k: v.detach().to("cpu").clone() for k, v in job.model.state_dict().items()
    }
    progress.stale = 0
    return True


def checkpoint(job: Job, progress: Progress, epoch: int) -> None:
    """The writer saves the epoch's checkpoint and keeps the newest train.keep_checkpoints."""
    save_torch(
        canonical(
            {
                "epoch": epoch,
                "model": {k: v.detach().to("cpu") for k, v in job.model.state_dict().items()},
                "optimizer": job.optimizer.state_dict(),
                "scheduler": job.scheduler.state_dict(),
                "best": progress.best,
                "best_state": progress.best_state,
                "history": progress.history,
                "stale": progress.stale,
                "rng_torch": torch.get_rng_state(),
                "key": job.key,
            }
        ),
        job.ckpt_dir / f"epoch-{epoch:04d}.pt",
    )
    # Wall time is kept beside, not in, the checkpoint: checkpoints are DVC outputs and
    # must come out byte for byte the same on every run.
    atomic.write_json(
        _progress_file(job.timing_file),
        {"epoch": epoch, "train_seconds": progress.train_seconds},
    )
    for old in sorted(job.ckpt_dir.glob("epoch-*.pt"))[: -job.params.train.keep_checkpoints]:
        old.unlink()


def _report_epoch(job: Job, row: dict[str, float], improved: bool) -> None:
    assert job.reporter is not None
    job.say(
        f"epoch {row['epoch']:3d}/{job.params.train.epochs}  train_loss {row['train_loss']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}"
        + ("  *best" if improved else "")
    )
    job.reporter.metrics(int(row["epoch"]), {k: v for k, v in row.items() if k != "epoch"})


def finish(job: Job, progress: Progress) -> None:
    """The writer saves models/model.pt (the best epoch), train.json, the history CSV, timing."""
    assert job.reporter is not None
    job.reporter.progress.stop()
    out_dir, metrics_dir = Path(job.args.out_dir), Path(job.args.metrics_dir)
    best = progress.best
    save_model(
        out_dir / "model.pt", job.arch, progress.best_state, job.meta.model_dump(), best["epoch"]
    )
    summary = {
        "best_epoch": best["epoch"],
        "epochs_run": len(progress.history),
        "val_loss": round(best["val_loss"], 6),
        "val_accuracy": round(best["val_accuracy"], 6),
        "parameters": count_parameters(job.model),
        "world_size": job.world,
    }
    atomic.write_json(metrics_dir / "train.json", summary)
    atomic.write_json(job.ckpt_dir / RUN_FILE, {"key": job.key, "complete": True})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(progress.history[0]), lineterminator="\n")
    writer.writeheader()
    for row in progress.history:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic.write_text(metrics_dir / "train_history.csv", buf.getvalue())
    # Timing lives outside the DVC outputs: it differs run to run by nature.
    seconds = progress.train_seconds
    samples = len(job.x_train) * len(progress.history)
    atomic.write_json(
        job.timing_file,
        {"train_seconds": seconds, "samples_per_second": samples / max(seconds, 1e-9)},
    )


def train(args: argparse.Namespace) -> None:
    """setup → resume → (epoch → checkpoint)* with early stopping → finish."""
    job = setup(args)
    if job.reporter:
        job.reporter.progress.start()
    progress = resume(job)
    tp = job.params.train
    for epoch in range(progress.start, tp.epochs + 1):
        started = time.perf_counter()
        row = run_epoch(job, epoch)
        progress.train_seconds += time.perf_counter() - started
        improved = record_epoch(job, progress, row)
        if job.reporter:
            _report_epoch(job, row, improved)
            checkpoint(job, progress, epoch)
        if progress.stale >= tp.patience and epoch < tp.epochs:
            job.say(
                f"early stop: no lower val_loss for {tp.patience} epochs; "
                f"best epoch {progress.best['epoch']}"
            )
            break
    if job.reporter:
        finish(job, progress)


def _init_process_group(backend: str) -> None:
    """Each torchrun restart gets its own key space in the agent's store, so gloo never reads
    the addresses of the workers that died (it would hang or fail connecting to them)."""
    from datetime import timedelta

    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend=backend)
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size=world,
        is_master=False,
        timeout=timedelta(minutes=5),
    )
    dist.init_process_group(
        backend,
        store=dist.PrefixStore(f"tinyops/attempt-{attempt}/", store),
        rank=rank,
        world_size=world,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tinyops DDP training worker (run under torchrun)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data-dir", default="data/processed")
    parser.add_argument("--out-dir", default="models")
    parser.add_argument("--metrics-dir", default="metrics")
    parser.add_argument("--timing-file", default=".tinyops/train_timing.json")
    parser.add_argument(
        "--metrics-log",
        default=".tinyops/train_metrics.jsonl",
        help="epoch metrics, one JSON line each",
    )
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    args = parser.parse_args(argv)
    _init_process_group(args.backend)
    try:
        train(args)
        dist.barrier()
    except Exception as exc:
        print(f"rank {os.environ.get('RANK', '?')}: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
