"""The one training loop, whatever the framework or paradigm: setup → resume → (epoch →
checkpoint)* with early stopping → finish.

A framework supplies an `Engine`: how to take one step of training (an epoch under torchrun or
tf.distribute; a federated round would be one too), evaluate, keep the best weights, and save and
restore its state. The loop owns everything else, so every engine records the same way: the
writer rule, the progress bar and epoch lines, early stopping, the checkpoint cadence and pruning,
`metrics/train.json` through `catalog.TrainSummary`, the history CSV and the wall-time file. No
torch and no TensorFlow here.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipeline.core import atomic, catalog
from pipeline.core.config import Params
from pipeline.training.checkpoint import RUN_FILE, prune, remove_all, remove_scratch
from pipeline.training.reporting import Reporter, record_seconds, seconds_before, write_history

WRITER_ENV = "TINYOPS_WRITER_NODE"  # set by the launcher on the node whose local rank 0 writes


def is_writer(local_rank: int, nnodes: int) -> bool:
    """The one process that prints, logs and writes files: local rank 0 of the node that
    `tinyops stage train` started (it sets TINYOPS_WRITER_NODE). On one node that is rank 0.
    Across nodes, c10d may hand global rank 0 to another node, so the rank alone cannot say;
    every replica holds the same weights (or gathers them for the writer), so any node may write.
    """
    return local_rank == 0 and (nnodes == 1 or os.environ.get(WRITER_ENV) == "1")


def worker_arguments(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """A worker's command line; the defaults are the catalog's paths."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data-dir", default=str(catalog.PROCESSED_DIR))
    parser.add_argument("--out-dir", default=str(catalog.MODEL_DIR))
    parser.add_argument("--metrics-dir", default=str(catalog.METRICS_DIR))
    parser.add_argument("--timing-file", default=str(catalog.TRAIN_TIMING))
    parser.add_argument(
        "--metrics-log", default=str(catalog.TRAIN_METRICS_LOG), help="epoch metrics, JSON lines"
    )
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    return parser.parse_args(argv)


@dataclass
class Progress:
    """What changes epoch by epoch, and what a checkpoint saves of the loop's own state."""

    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"val_loss": float("inf")})
    stale: int = 0
    train_seconds: float = 0.0
    start: int = 1

    def fields(self, epoch: int, key: str) -> dict[str, Any]:
        return {"epoch": epoch, "history": self.history, "best": self.best,
                "stale": self.stale, "key": key}  # fmt: skip


@dataclass(frozen=True)
class Finished:
    """What an engine's collective finish hands the loop: the strategy's shape and model state
    for train.json (deterministic figures only), and the timing extras (peak RSS per rank)."""

    summary: dict[str, Any]
    timing: dict[str, Any]


class Engine(Protocol):
    """One framework's side of training. Collective methods run on every rank together."""

    rank: int
    world: int
    writer: bool
    steps: int  # steps per epoch (the progress bar's total)
    samples: int  # training samples (an autoencoder's normal class only)
    key: str  # the run key checkpoints must carry to be resumed

    def describe(self) -> str: ...
    def share(self, found: Any) -> Any: ...  # collective: the writer's value on every rank
    def find_checkpoint(self, ckpt_dir: Path, say: Any) -> Any: ...  # writer only; None: none
    def restore(self, found: Any, ckpt_dir: Path) -> dict[str, Any]: ...  # Progress.fields
    def train_epoch(self, epoch: int, advance: Any) -> float: ...  # collective: mean train loss
    def evaluate(self) -> tuple[float, float]: ...  # collective: val loss and accuracy
    def lr(self) -> float: ...  # the learning rate the next epoch starts with
    def snapshot_best(self) -> None: ...
    def save_checkpoint(self, path: Path, fields: dict[str, Any]) -> None: ...  # collective
    def finish(self, trained_dir: Path, best_epoch: int) -> Finished: ...  # collective


def world_history(history: list[dict[str, Any]]) -> list[dict[str, int]]:
    """The world sizes an (elastic) run trained at: one entry per stretch of epochs."""
    spans: list[dict[str, int]] = []
    for row in history:
        world = int(row.get("world_size", 0))
        if not spans or spans[-1]["world_size"] != world:
            spans.append({"from_epoch": int(row["epoch"]), "world_size": world})
    return spans


@dataclass
class Loop:
    """Drives an engine for `train.loop_steps` steps (epochs, or federated rounds) with early
    stopping on val_loss."""

    engine: Engine
    params: Params
    args: argparse.Namespace
    reporter: Reporter | None = None

    def __post_init__(self) -> None:
        tp, e = self.params.train, self.engine
        if e.writer:
            unit = "round" if tp.federated_on else "epoch"
            self.reporter = Reporter(Path(self.args.metrics_log), tp.loop_steps, e.steps, unit)

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.args.out_dir) / "checkpoints"

    @property
    def timing_file(self) -> Path:
        return Path(self.args.timing_file)

    def say(self, text: str) -> None:
        if self.reporter:
            self.reporter.console.print(text)

    def run(self) -> None:
        self.say(self.engine.describe())
        if self.reporter:
            self.reporter.progress.start()
        progress = self.resume()
        tp = self.params.train
        unit = "round" if tp.federated_on else "epoch"
        for epoch in range(progress.start, tp.loop_steps + 1):
            self.epoch(progress, epoch)
            if progress.stale >= tp.loop_patience and epoch < tp.loop_steps:
                self.say(
                    f"early stop: no lower val_loss for {tp.loop_patience} {unit}s; "
                    f"best {unit} {progress.best['epoch']}"
                )
                break
        if progress.start > tp.loop_steps and progress.history:
            self.say("training had already ended at the checkpoint; writing its best model")
        self.finish(progress)

    def resume(self) -> Progress:
        """The writer finds the newest checkpoint of this run (if any); every rank loads it."""
        found = None
        if self.engine.writer:
            found = self.engine.find_checkpoint(self.ckpt_dir, self.say)
            if found is None:  # a fresh run: checkpoints of any other run go
                remove_all(self.ckpt_dir)
            atomic.write_json(
                self.ckpt_dir / RUN_FILE,
                {"key": self.engine.key, "world": self.engine.world, "complete": False},
            )
        found = self.engine.share(found)
        if found is None:
            return Progress()
        fields = self.engine.restore(found, self.ckpt_dir)
        epoch, tp = fields["epoch"], self.params.train
        progress = Progress(
            history=fields["history"],
            best=fields["best"],
            stale=fields["stale"],
            train_seconds=seconds_before(self.timing_file, epoch),
            # A crash after the epoch that ended training: nothing left to train.
            start=tp.loop_steps + 1 if fields["stale"] >= tp.loop_patience else epoch + 1,
        )
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT") or os.environ.get(
            "TINYOPS_RESTART", "0"
        )
        before = progress.history[-1].get("world_size") if progress.history else None
        if before and before != self.engine.world:
            self.say(
                f"world re-formed: {before} → {self.engine.world} workers (the global batch "
                f"stays {tp.batch_size})"
            )
        unit = "round" if tp.federated_on else "epoch"
        self.say(
            f"resuming from checkpoint {unit} {epoch} (restart {restart}); "
            f"continuing at {unit} {progress.start}"
        )
        return progress

    def epoch(self, progress: Progress, epoch: int) -> None:
        """One training step of the engine, its evaluation, the best weights, the checkpoint."""
        reporter = self.reporter
        if reporter:
            reporter.progress.reset(reporter.task, total=self.engine.steps, epoch=epoch)

        def advance() -> None:
            if reporter:
                reporter.progress.advance(reporter.task)

        started = time.perf_counter()
        train_loss = self.engine.train_epoch(epoch, advance)
        val_loss, val_accuracy = self.engine.evaluate()
        progress.train_seconds += time.perf_counter() - started
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
               "val_accuracy": val_accuracy, "lr": self.engine.lr(),
               "world_size": self.engine.world}  # fmt: skip
        improved = self.record(progress, row)
        if reporter:
            extra = getattr(self.engine, "step_metrics", dict)()  # a federated round's own
            reporter.epoch_line(row, self.params.train.loop_steps, improved, extra)
        self.checkpoint(progress, epoch)

    def record(self, progress: Progress, row: dict[str, float]) -> bool:
        """Add the row to the history, keep the best weights; whether this epoch improved."""
        progress.history.append(row)
        if row["val_loss"] >= progress.best["val_loss"]:
            progress.stale += 1
            return False
        progress.best = {k: row[k] for k in ("epoch", "val_loss", "val_accuracy")}
        self.engine.snapshot_best()
        progress.stale = 0
        return True

    def checkpoint(self, progress: Progress, epoch: int) -> None:
        """The epoch's checkpoint; the newest train.keep_checkpoints are kept."""
        path = self.ckpt_dir / f"epoch-{epoch:04d}"
        self.engine.save_checkpoint(path, progress.fields(epoch, self.engine.key))
        if self.engine.writer:
            record_seconds(self.timing_file, epoch, progress.train_seconds)
            prune(self.ckpt_dir, self.params.train.keep_checkpoints)

    def finish(self, progress: Progress) -> None:
        """Collective: the best epoch's model to models/trained/ on the writer, with train.json,
        the history CSV and the timing (which lives outside the DVC outputs: it differs run to
        run by nature)."""
        best = progress.best
        done = self.engine.finish(Path(self.args.out_dir) / "trained", best["epoch"])
        if not self.reporter:
            return
        self.reporter.progress.stop()
        summary = catalog.TrainSummary.model_validate({
            "best_epoch": best["epoch"],
            "epochs_run": len(progress.history),
            "val_loss": round(best["val_loss"], 6),
            "val_accuracy": round(best["val_accuracy"], 6),
            "training_samples": self.engine.samples,
            "world_size": self.engine.world,
            "world_history": world_history(progress.history),
            **done.summary,
        })  # fmt: skip
        metrics_dir = Path(self.args.metrics_dir)
        remove_scratch(self.ckpt_dir)
        atomic.write_json(metrics_dir / "train.json", summary.model_dump(mode="json"))
        atomic.write_json(self.ckpt_dir / RUN_FILE, {"key": self.engine.key, "complete": True})
        write_history(metrics_dir / "train_history.csv", progress.history)
        seconds = progress.train_seconds
        samples = self.engine.samples * len(progress.history)
        atomic.write_json(self.timing_file, {
            "train_seconds": seconds,
            "samples_per_second": samples / max(seconds, 1e-9),
            **done.timing,
        })  # fmt: skip
