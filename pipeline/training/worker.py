"""One torch training worker; torchrun starts N of them. `tinyops stage train` builds the command, e.g.

    torchrun --standalone --nproc-per-node 2 -m pipeline.training.worker --params params.yaml
    torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        --rdzv-id tinyops-train -m pipeline.training.worker --params params.yaml   # other nodes

The loop is pipeline/training/loop.py, the same for Keras; this module is torch's engine for it.
What a step, an evaluation and the model state mean is the strategy's (pipeline/training/
strategy.py), so every train.parallelism shares this engine. Metrics are all-reduced so every
rank takes the same early-stopping decision.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pipeline.core.config import Params, load_params, parallel_plan
from pipeline.data.prepare import load_processed
from pipeline.models.architecture import architecture_for, block_parameters
from pipeline.models.store import save_model
from pipeline.models.tasks import task_for
from pipeline.training.checkpoint import run_key
from pipeline.training.loop import Finished, Loop, is_writer, worker_arguments
from pipeline.training.strategies import make_strategy
from pipeline.training.strategy import Setting


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
    random.seed(tp.seed)
    np.random.seed(tp.seed)
    torch.manual_seed(tp.seed)
    return dist.get_rank(), dist.get_world_size(), device


class TorchEngine:
    """torch under torchrun: the strategy's steps over seeded global batches, a cosine LR
    schedule per epoch, all-reduced losses, the strategy's checkpoint format."""

    def __init__(self, params: Params, data_dir: Path) -> None:
        tp = params.train
        self.rank, self.world, self.device = _place(params)
        self.params, self.plan = params, parallel_plan(params, world=self.world)
        data = load_processed(data_dir)
        self.meta = data.meta
        self.arch = architecture_for(
            params, data.meta.input_shape, data.meta.num_classes, data.meta.classes
        )
        micro = tp.batch_size // (self.plan.dp * self.plan.microbatches)
        self.strategy = make_strategy(
            Setting(self.plan, self.arch, self.device, tp.lr, tp.weight_decay, tp.allreduce, micro)
        )
        rows = task_for(self.arch).training_rows(data.y["train"])  # an autoencoder: normal only
        self.x_train = torch.from_numpy(data.x["train"][rows]).to(self.device)
        self.y_train = torch.from_numpy(data.y["train"][rows]).to(self.device)
        self.x_val, self.y_val = torch.from_numpy(data.x["val"]), torch.from_numpy(data.y["val"])
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.strategy.optimizer, T_max=tp.epochs
        )
        self.samples = len(self.x_train)
        self.steps = len(self.strategy.batches(self.samples, tp.seed, 1, tp.batch_size))
        reshards = self.strategy.checkpoints.reshards
        self.key = run_key(
            params.model_dump(mode="json"), data.meta.data_sha256, self.world, reshards
        )
        self.writer = is_writer(int(os.environ.get("LOCAL_RANK", "0")), tp.max_nodes)
        flags: list[Any] = [None] * self.world
        dist.all_gather_object(flags, self.writer)
        self.writer_rank = flags.index(True)
        self.best_state: dict[str, torch.Tensor] = {}

    def describe(self) -> str:
        tp = self.params.train
        return (
            f"train: {self.world} worker(s) × {tp.threads_per_proc} thread(s)"
            + (" (oversubscribed)" if tp.oversubscribe else "")
            + f", backend {dist.get_backend()}, {self.strategy.describe()}, "
            f"{sum(block_parameters(self.arch)):,} parameters, {self.samples} training samples"
        )

    def share(self, found: Any) -> Any:
        box = [found]  # only the writer's node has the checkpoints
        dist.broadcast_object_list(box, src=self.writer_rank)
        return box[0]

    def find_checkpoint(self, ckpt_dir: Path, say: Any) -> Any:
        return self.strategy.checkpoints.find(ckpt_dir, self.key, say, self.world)

    def restore(self, found: Any, ckpt_dir: Path) -> dict[str, Any]:
        fields, self.best_state = self.strategy.checkpoints.restore(self.strategy, found)
        self.scheduler.load_state_dict(fields["scheduler"])
        for group, lr in zip(
            self.strategy.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True
        ):
            group["lr"] = lr  # the schedule's position, whatever the checkpoint kept
        return fields

    def train_epoch(self, epoch: int, advance: Any) -> float:
        """One pass over this replica's batches: the mean training loss over all replicas."""
        tp = self.params.train
        self.strategy.train()
        loss_sum = torch.zeros(2, dtype=torch.float64, device=self.device)
        for idx in self.strategy.batches(self.samples, tp.seed, epoch, tp.batch_size):
            idx = idx.to(self.device)
            total, count = self.strategy.step(self.x_train[idx], self.y_train[idx])
            loss_sum[0] += total
            loss_sum[1] += count
            advance()
        self.scheduler.step()
        self.strategy.end_epoch()
        dist.all_reduce(loss_sum)
        return loss_sum[0].item() / loss_sum[1].item()

    def evaluate(self) -> tuple[float, float]:
        """Loss and accuracy over the whole validation split: each rank its share, all-reduced."""
        loss_sum, correct, count = self.strategy.evaluate(self.x_val, self.y_val)
        totals = torch.tensor(
            [loss_sum, correct, float(count)], dtype=torch.float64, device=self.device
        )
        dist.all_reduce(totals)
        return totals[0].item() / totals[2].item(), totals[1].item() / totals[2].item()

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def snapshot_best(self) -> None:
        self.best_state = self.strategy.state()

    def save_checkpoint(self, path: Path, fields: dict[str, Any]) -> None:
        fields = {**fields, "scheduler": self.scheduler.state_dict()}
        self.strategy.checkpoints.save(self.strategy, path, fields, self.best_state, self.writer)

    def _per_rank(self) -> list[dict[str, Any]]:
        """Collective: each rank's model-state bytes and peak RSS, gathered on every rank."""
        import resource

        mine = {
            "rank": self.rank,
            **self.strategy.model_state_bytes(),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        rows: list[Any] = [None] * self.world
        dist.all_gather_object(rows, mine)
        return rows

    def finish(self, trained_dir: Path, best_epoch: int) -> Finished:
        """Collective: the best epoch's whole model, saved by the writer."""
        per_rank = self._per_rank()
        full = self.strategy.full_state(self.best_state, self.writer_rank)
        if self.writer:
            save_model(trained_dir, self.arch, full, self.meta.model_dump(), best_epoch)
        plan = self.plan
        state = [r["parameters"] + r["gradients"] + r["optimizer"] for r in per_rank]
        summary = {
            "framework": "torch",
            "parameters": sum(block_parameters(self.arch)),
            "parallelism": plan.parallelism,
            "strategy": plan.describe(),
            "mesh_dp": plan.dp,
            "mesh_pp": plan.pp,
            "pipeline_stages": plan.stages if plan.pipelined else 0,
            "microbatches": plan.microbatches,
            "schedule": plan.schedule or "none",
            "model_state_bytes_max_rank": max(state),
        } | {f"model_state_bytes_rank{i}": b for i, b in enumerate(state)}
        timing = {f"peak_rss_mib_rank{r['rank']}": r["peak_rss_mib"] for r in per_rank}
        return Finished(summary, timing)


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


def _die_with_agent() -> None:
    """torchrun starts each worker in its own session: if its agent is SIGKILLed (a node lost,
    an OOM kill), the worker would train on as an orphan and hold the others' collectives. On
    Linux the kernel SIGKILLs it when the agent dies (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def main(argv: list[str] | None = None) -> int:
    args = worker_arguments("tinyops torch training worker (run under torchrun)", argv)
    _die_with_agent()
    _init_process_group(args.backend)
    try:
        params = load_params(args.params)
        Loop(TorchEngine(params, Path(args.data_dir)), params, args).run()
        dist.barrier()
    except Exception as exc:
        print(f"rank {os.environ.get('RANK', '?')}: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
