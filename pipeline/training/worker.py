"""One training worker; torchrun starts N of them. `tinyops stage train` builds the command, e.g.

    torchrun --standalone --nproc-per-node 2 -m pipeline.training.worker --params params.yaml
    torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        --rdzv-id tinyops-train -m pipeline.training.worker --params params.yaml   # other nodes

The loop (setup → resume → epoch → checkpoint → finish) is the same for every train.parallelism;
what a step, an evaluation and the model state mean is the strategy's (pipeline/training/
strategy.py). Metrics are all-reduced so every rank takes the same early-stopping decision. One
process alone prints, logs to MLflow and writes files: rank 0 on one node, local rank 0 of the
`tinyops stage train` node across several (see _is_writer).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pipeline.core import atomic
from pipeline.core.catalog import DatasetMeta
from pipeline.core.config import Params, load_params, parallel_plan
from pipeline.core.parallel import ParallelPlan
from pipeline.data.prepare import load_processed
from pipeline.models.architecture import Architecture, architecture_for, block_parameters
from pipeline.models.store import save_model
from pipeline.models.tasks import task_for
from pipeline.training.checkpoint import RUN_FILE, prune, remove_all, run_key
from pipeline.training.launcher import WRITER_ENV
from pipeline.training.reporting import (
    Reporter,
    record_seconds,
    seconds_before,
    write_history,
)
from pipeline.training.strategies import make_strategy
from pipeline.training.strategy import Setting, Strategy


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _share(obj: Any, writer_rank: int) -> Any:
    """The writer's object on every rank (only its node has the checkpoints)."""
    box = [obj]
    dist.broadcast_object_list(box, src=writer_rank)
    return box[0]


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
    """What stays fixed for the whole training: params, placement, data, strategy, schedule."""

    args: argparse.Namespace
    params: Params
    plan: ParallelPlan
    rank: int
    world: int
    device: torch.device
    arch: Architecture
    meta: DatasetMeta
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    strategy: Strategy
    scheduler: torch.optim.lr_scheduler.LRScheduler
    steps: int
    key: str
    reporter: Reporter | None
    writer_rank: int = 0

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
    """Load params and data, place the model by train.parallelism, make the LR schedule."""
    params = load_params(args.params)
    tp, plan = params.train, parallel_plan(params)
    rank, world, device = _place(params)
    data = load_processed(Path(args.data_dir))
    arch = architecture_for(params, data.meta.input_shape, data.meta.num_classes, data.meta.classes)
    micro = tp.batch_size // (plan.dp * plan.microbatches)
    strategy = make_strategy(
        Setting(plan, arch, device, tp.lr, tp.weight_decay, tp.allreduce, micro)
    )
    rows = task_for(arch).training_rows(data.y["train"])  # an autoencoder learns normal only
    x_train = torch.from_numpy(data.x["train"][rows]).to(device)
    steps = len(strategy.batches(len(x_train), tp.seed, 1, tp.batch_size))
    writer = _is_writer(rank, tp.nnodes)
    job = Job(
        args, params, plan, rank, world, device, arch, data.meta,
        x_train, torch.from_numpy(data.y["train"][rows]).to(device),
        torch.from_numpy(data.x["val"]), torch.from_numpy(data.y["val"]),
        strategy,
        torch.optim.lr_scheduler.CosineAnnealingLR(strategy.optimizer, T_max=tp.epochs),
        steps,
        run_key(params.model_dump(mode="json"), data.meta.data_sha256, world),
        Reporter(Path(args.metrics_log), tp.epochs, steps) if writer else None,
    )  # fmt: skip
    job.say(
        f"train: {world} worker(s) × {tp.threads_per_proc} thread(s)"
        + (" (oversubscribed)" if tp.oversubscribe else "")
        + f", backend {dist.get_backend()}, "
        f"{strategy.describe()}, {count_parameters_of(arch):,} parameters, "
        f"{len(x_train)} training samples"
    )
    return job


def count_parameters_of(arch: Architecture) -> int:
    return sum(block_parameters(arch))


def resume(job: Job) -> Progress:
    """The writer finds the newest checkpoint of this run (if any) and every rank loads it."""
    flags: list[Any] = [None] * job.world
    dist.all_gather_object(flags, job.reporter is not None)
    job.writer_rank = flags.index(True)
    store = job.strategy.checkpoints
    found = None
    if job.reporter:
        found = store.find(job.ckpt_dir, job.key, job.say)
        if found is None:  # a fresh run: checkpoints of any other run go
            remove_all(job.ckpt_dir)
        atomic.write_json(job.ckpt_dir / RUN_FILE, {"key": job.key, "complete": False})
    found = _share(found, job.writer_rank)
    if found is None:
        return Progress()
    fields, best_state = store.restore(job.strategy, found)
    job.scheduler.load_state_dict(fields["scheduler"])
    for group, lr in zip(
        job.strategy.optimizer.param_groups, job.scheduler.get_last_lr(), strict=True
    ):
        group["lr"] = lr  # the schedule's position, whatever the checkpoint kept of the optimizer
    tp = job.params.train
    progress = Progress(
        history=fields["history"],
        best=fields["best"],
        best_state=best_state,
        stale=fields["stale"],
        train_seconds=seconds_before(job.timing_file, fields["epoch"]),
        # A crash after the epoch that ended training: nothing left to train.
        start=tp.epochs + 1 if fields["stale"] >= tp.patience else fields["epoch"] + 1,
    )
    job.say(
        f"resuming from checkpoint epoch {fields['epoch']} (restart "
        f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}); continuing at epoch {progress.start}"
    )
    return progress


def run_epoch(job: Job, epoch: int) -> dict[str, float]:
    """One pass over this replica's batches, then the synced evaluation: the epoch's history row."""
    tp = job.params.train
    job.strategy.train()
    loss_sum = torch.zeros(2, dtype=torch.float64, device=job.device)
    if job.reporter:
        job.reporter.progress.reset(job.reporter.task, total=job.steps, epoch=epoch)
    for idx in job.strategy.batches(len(job.x_train), tp.seed, epoch, tp.batch_size):
        idx = idx.to(job.device)
        total, count = job.strategy.step(job.x_train[idx], job.y_train[idx])
        loss_sum[0] += total
        loss_sum[1] += count
        if job.reporter:
            job.reporter.progress.advance(job.reporter.task)
    job.scheduler.step()
    job.strategy.end_epoch()
    dist.all_reduce(loss_sum)
    val_loss, val_acc = _evaluate(job)
    return {
        "epoch": epoch,
        "train_loss": loss_sum[0].item() / loss_sum[1].item(),
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "lr": job.scheduler.get_last_lr()[0],
    }


def _evaluate(job: Job) -> tuple[float, float]:
    """Loss and accuracy over the whole validation split: each rank its share, then all-reduce."""
    loss_sum, correct, count = job.strategy.evaluate(job.x_val, job.y_val)
    totals = torch.tensor([loss_sum, correct, float(count)], dtype=torch.float64, device=job.device)
    dist.all_reduce(totals)
    return totals[0].item() / totals[2].item(), totals[1].item() / totals[2].item()


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
    progress.best_state = job.strategy.state()
    progress.stale = 0
    return True


def checkpoint(job: Job, progress: Progress, epoch: int) -> None:
    """The epoch's checkpoint (the writer's file, or every rank's shard); the newest
    train.keep_checkpoints are kept."""
    fields = {
        "epoch": epoch,
        "scheduler": job.scheduler.state_dict(),
        "best": progress.best,
        "history": progress.history,
        "stale": progress.stale,
        "key": job.key,
    }
    path = job.ckpt_dir / f"epoch-{epoch:04d}"
    job.strategy.checkpoints.save(
        job.strategy, path, fields, progress.best_state, job.reporter is not None
    )
    if not job.reporter:
        return
    record_seconds(job.timing_file, epoch, progress.train_seconds)
    prune(job.ckpt_dir, job.params.train.keep_checkpoints)


def _per_rank(job: Job) -> list[dict[str, Any]]:
    """Collective: each rank's model-state bytes and peak RSS, gathered on every rank."""
    import resource

    mine = {
        "rank": job.rank,
        **job.strategy.model_state_bytes(),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    rows: list[Any] = [None] * job.world
    dist.all_gather_object(rows, mine)
    return rows


def finish(job: Job, progress: Progress) -> None:
    """Collective: the best epoch's whole model on the writer, which saves models/trained/,
    train.json, the history CSV and the timing."""
    per_rank = _per_rank(job)
    full = job.strategy.full_state(progress.best_state, job.writer_rank)
    if not job.reporter:
        return
    job.reporter.progress.stop()
    out_dir, metrics_dir = Path(job.args.out_dir), Path(job.args.metrics_dir)
    best = progress.best
    save_model(out_dir / "trained", job.arch, full, job.meta.model_dump(), best["epoch"])
    atomic.write_json(metrics_dir / "train.json", _summary(job, progress, per_rank))
    atomic.write_json(job.ckpt_dir / RUN_FILE, {"key": job.key, "complete": True})
    write_history(metrics_dir / "train_history.csv", progress.history)
    # Timing lives outside the DVC outputs: it differs run to run by nature.
    seconds = progress.train_seconds
    samples = len(job.x_train) * len(progress.history)
    atomic.write_json(
        job.timing_file,
        {
            "train_seconds": seconds,
            "samples_per_second": samples / max(seconds, 1e-9),
            **{f"peak_rss_mib_rank{r['rank']}": r["peak_rss_mib"] for r in per_rank},
        },
    )


def _summary(job: Job, progress: Progress, per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """metrics/train.json: the best epoch, and the strategy's shape and per-rank model state
    (deterministic figures only: it is a DVC metric)."""
    best, plan = progress.best, job.plan
    state = [r["parameters"] + r["gradients"] + r["optimizer"] for r in per_rank]
    summary = {
        "best_epoch": best["epoch"],
        "epochs_run": len(progress.history),
        "val_loss": round(best["val_loss"], 6),
        "val_accuracy": round(best["val_accuracy"], 6),
        "parameters": count_parameters_of(job.arch),
        "training_samples": len(job.x_train),  # an autoencoder trains on its normal class only
        "world_size": job.world,
        "parallelism": plan.parallelism,
        "strategy": plan.describe(),
        "mesh_dp": plan.dp,
        "mesh_pp": plan.pp,
        "pipeline_stages": plan.stages if plan.pipelined else 0,
        "microbatches": plan.microbatches,
        "schedule": plan.schedule or "none",
        "model_state_bytes_max_rank": max(state),
    }
    return summary | {f"model_state_bytes_rank{i}": b for i, b in enumerate(state)}


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
            job.reporter.epoch_line(row, tp.epochs, improved)
        checkpoint(job, progress, epoch)
        if progress.stale >= tp.patience and epoch < tp.epochs:
            job.say(
                f"early stop: no lower val_loss for {tp.patience} epochs; "
                f"best epoch {progress.best['epoch']}"
            )
            break
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
