"""One Keras training worker; `tinyops stage train` starts train.nproc_per_node of them on this
node, each with its own TF_CONFIG (pipeline/training/keras_launch.py), e.g.

    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:23456", "127.0.0.1:23457"]},
                "task": {"type": "worker", "index": 0}}' python -m pipeline.training.keras_worker

TensorFlow's own engine: tf.distribute.MultiWorkerMirroredStrategy with a custom training loop
(`strategy.run` per step). Keras 3.15's `model.fit` breaks under MWMS (keras#20585,
tensorflow#72388); the custom loop runs unmodified. The loop mirrors the torch worker: the same
seeded global batches cut into one contiguous slice per worker, AdamW with a cosine schedule per
epoch, BatchNorm moving statistics averaged over the workers once per epoch, early stopping on
the validation loss, a checkpoint per epoch that a restarted job resumes from. The chief
(worker 0 of node 0) alone prints and writes; no torch is imported here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import atomic
from pipeline.core.config import Params, load_params
from pipeline.data.prepare import Splits, load_processed
from pipeline.models.architecture import Architecture, architecture_for
from pipeline.training.checkpoint import RUN_FILE, prune, remove_all, run_file, run_key
from pipeline.training.reporting import Reporter, record_seconds, seconds_before, write_history

STATE_BYTES_PER_PARAM = 16  # fp32 weights, gradients and AdamW's two moments


def configure_tensorflow(threads: int, seed: int, deterministic: bool) -> Any:
    """Import TensorFlow with this worker's thread pools, seeds and op determinism set before
    its runtime starts; returns the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    return tf


def task_of_tf_config() -> tuple[int, int]:
    """(this worker's index, number of workers) from TF_CONFIG."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    workers = config.get("cluster", {}).get("worker", [])
    return int(config.get("task", {}).get("index", 0)), max(len(workers), 1)


@dataclass
class Progress:
    """What changes epoch by epoch; saved beside each checkpoint as progress.json."""

    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"val_loss": float("inf")})
    stale: int = 0
    train_seconds: float = 0.0
    start: int = 1
    samples: int = 0  # seen by this worker since it started (for the split check)


@dataclass
class KerasJob:
    """What stays fixed for the whole training."""

    args: argparse.Namespace
    params: Params
    rank: int
    world: int
    arch: Architecture
    data: Splits
    strategy: Any
    model: Any
    optimizer: Any
    best: list[Any]  # the best epoch's weights, as variables the checkpoint carries
    key: str
    reporter: Reporter | None
    collectives: tuple[Any, Any] = (None, None)  # (BatchNorm sync, sum over workers)

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.args.out_dir) / "checkpoints"

    @property
    def timing_file(self) -> Path:
        return Path(self.args.timing_file)

    @property
    def replica_batch(self) -> int:
        return self.params.train.batch_size // self.world

    def say(self, text: str) -> None:
        if self.reporter:
            self.reporter.console.print(text)


def setup(args: argparse.Namespace) -> KerasJob:
    """Params, data, the strategy, and the model and optimizer built in its scope."""
    params = load_params(args.params)
    tp = params.train
    tf = configure_tensorflow(tp.threads_per_proc, tp.seed, tp.deterministic)
    import keras

    from pipeline.models.architecture import build_keras_model

    rank, world = task_of_tf_config()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    data = load_processed(Path(args.data_dir))
    arch = architecture_for(params, data.meta.input_shape, data.meta.num_classes, data.meta.classes)
    with strategy.scope():
        model = build_keras_model(arch)
        optimizer = keras.optimizers.AdamW(
            tp.lr,
            weight_decay=tp.weight_decay,
            epsilon=1e-8,  # torch's AdamW defaults
        )
        optimizer.build(model.trainable_variables)
        best = [tf.Variable(v.value, trainable=False) for v in model.weights]
    writer = rank == 0 and os.environ.get("TINYOPS_NODE_RANK", "0") == "0"
    steps = len(data.x["train"]) // tp.batch_size
    job = KerasJob(
        args, params, rank, world, arch, data, strategy, model, optimizer, best,
        run_key(params.model_dump(mode="json"), data.meta.data_sha256, world),
        Reporter(Path(args.metrics_log), tp.epochs, steps) if writer else None,
    )  # fmt: skip
    job.say(
        f"train: keras {keras.__version__} on TensorFlow {tf.__version__}, "
        f"MultiWorkerMirroredStrategy over {world} worker(s) × {tp.threads_per_proc} thread(s), "
        f"{job.replica_batch} of each {tp.batch_size}-sample batch per worker, "
        f"{trainable_parameters(model):,} parameters, {len(data.x['train'])} training samples"
    )
    return job


def trainable_parameters(model: Any) -> int:
    """Counted on the Keras model itself (metrics/train.json's `parameters`): the torch model
    of the same params has exactly as many (tests/e2e/test_keras.py)."""
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def batches(job: KerasJob, epoch: int) -> list[np.ndarray]:
    """This worker's sample indices per step: one seeded permutation cut into global batches (a
    last partial one dropped), worker r taking the r-th contiguous slice of each."""
    n, size = len(job.data.x["train"]), job.params.train.batch_size
    order = np.random.default_rng(job.params.train.seed + epoch).permutation(n)
    per, r = job.replica_batch, job.rank
    return [order[i * size + r * per : i * size + (r + 1) * per] for i in range(n // size)]


def make_step(job: KerasJob) -> Any:
    """The distributed train step: each replica's loss is scaled by the global batch, MWMS sums
    the gradients over the workers inside apply_gradients."""
    import keras
    import tensorflow as tf

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    global_batch = job.params.train.batch_size
    model, optimizer, strategy = job.model, job.optimizer, job.strategy

    def replica_step(xb: Any, yb: Any) -> Any:
        with tf.GradientTape() as tape:
            logits = model(xb, training=True)
            loss = tf.nn.compute_average_loss(loss_fn(yb, logits), global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    @tf.function
    def step(xb: Any, yb: Any) -> Any:
        return strategy.reduce("SUM", strategy.run(replica_step, args=(xb, yb)), axis=None)

    return step


def make_collectives(job: KerasJob) -> tuple[Any, Any]:
    """Two all-reduces: the mean of BatchNorm's moving statistics (each worker updated them on its
    own slice), and the sum of a small vector (progress agreement, sample counts)."""
    import tensorflow as tf

    moving = [v for v in job.model.non_trainable_variables if "moving_" in v.path]
    strategy = job.strategy

    @tf.function
    def bn_mean() -> Any:
        def replica() -> Any:
            ctx = tf.distribute.get_replica_context()
            return ctx.all_reduce("MEAN", [tf.identity(v.value) for v in moving])

        return strategy.run(replica)

    def sync_batchnorm() -> None:
        for v, value in zip(moving, bn_mean(), strict=True):
            v.assign(strategy.experimental_local_results(value)[0])

    @tf.function
    def total(values: Any) -> Any:
        return strategy.reduce("SUM", strategy.run(lambda v: tf.identity(v), args=(values,)), None)

    def sum_all(values: list[float]) -> list[float]:
        return [float(v) for v in total(tf.constant(values, dtype=tf.float64)).numpy()]

    return sync_batchnorm, sum_all


def lr_at(job: KerasJob, epoch: int) -> float:
    """torch's CosineAnnealingLR(T_max=epochs) value for `epoch` (1-based), stepped per epoch."""
    tp = job.params.train
    return tp.lr * (1 + math.cos(math.pi * (epoch - 1) / tp.epochs)) / 2


def evaluate(job: KerasJob) -> tuple[float, float]:
    """Loss and accuracy on the whole validation split. Every worker holds the same weights and
    (after the BatchNorm sync) the same statistics, so each computes it alone: no collective."""
    x, y = job.data.x["val"], job.data.y["val"]
    logits = np.asarray(job.model(x, training=False), dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(len(y)), y].mean())
    return loss, float((logits.argmax(1) == y).mean())


def run_epoch(job: KerasJob, progress: Progress, epoch: int, step: Any, sync: Any) -> dict:
    """One pass over this worker's slices, the BatchNorm sync, the validation: a history row."""
    job.optimizer.learning_rate.assign(lr_at(job, epoch))
    x, y = job.data.x["train"], job.data.y["train"]
    reporter, losses = job.reporter, []
    if reporter:
        reporter.progress.reset(
            reporter.task, total=len(x) // job.params.train.batch_size, epoch=epoch
        )
    for idx in batches(job, epoch):
        losses.append(float(step(x[idx], y[idx])))
        progress.samples += len(idx)
        if reporter:
            reporter.progress.advance(reporter.task)
    sync()
    val_loss, val_acc = evaluate(job)
    return {
        "epoch": epoch,
        "train_loss": float(np.mean(losses)),
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "lr": lr_at(job, epoch + 1),
    }


def record_epoch(job: KerasJob, progress: Progress, row: dict[str, float]) -> bool:
    """Add the row to the history, keep the best weights; whether this epoch improved."""
    progress.history.append(row)
    if row["val_loss"] >= progress.best["val_loss"]:
        progress.stale += 1
        return False
    progress.best = {k: row[k] for k in ("epoch", "val_loss", "val_accuracy")}
    for kept, variable in zip(job.best, job.model.weights, strict=True):
        kept.assign(variable.value)
    progress.stale = 0
    return True


def tf_checkpoint(job: KerasJob) -> Any:
    """Every variable by list: `model.variables`, not `model.weights`, which leaves out dropout's
    seed-generator state (a resumed run then drew other masks and drifted); the optimizer's
    step, learning rate and moments; the best epoch's weights."""
    import tensorflow as tf

    return tf.train.Checkpoint(
        variables=list(job.model.variables), optimizer=list(job.optimizer.variables), best=job.best
    )


def checkpoint(job: KerasJob, progress: Progress, epoch: int) -> None:
    """Every worker writes (MWMS saves collectively); the chief's copy is the checkpoint,
    published as epoch-NNNN/ once complete, the others' scratch copies are removed. Written with
    Checkpoint.write (no CheckpointManager state file, which records wall time)."""
    final = job.ckpt_dir / f"epoch-{epoch:04d}"
    scratch = final.with_name(final.name + ".partial" if job.reporter else f".worker-{job.rank}")
    shutil.rmtree(scratch, ignore_errors=True)
    tf_checkpoint(job).write(str(scratch / "ckpt"))
    if not job.reporter:
        shutil.rmtree(scratch, ignore_errors=True)
        return
    fields = {"epoch": epoch, "history": progress.history, "best": progress.best,
              "stale": progress.stale, "key": job.key}  # fmt: skip
    atomic.write_json(scratch / "progress.json", fields)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(scratch, final)
    record_seconds(job.timing_file, epoch, progress.train_seconds)
    prune(job.ckpt_dir, job.params.train.keep_checkpoints)


def _latest(job: KerasJob) -> int:
    """The chief's newest complete checkpoint of this unfinished run (0: none, start afresh)."""
    run = run_file(job.ckpt_dir)
    if run.get("key") != job.key or run.get("complete"):
        return 0
    for folder in sorted(job.ckpt_dir.glob("epoch-[0-9][0-9][0-9][0-9]"), reverse=True):
        try:
            fields = json.loads((folder / "progress.json").read_text())
        except (OSError, ValueError):
            job.say(f"checkpoint {folder} is incomplete; trying the one before")
            continue
        if fields.get("key") == job.key:
            return int(fields["epoch"])
    return 0


def resume(job: KerasJob, sum_all: Any) -> Progress:
    """The chief finds the newest checkpoint of this run; every worker restores it."""
    found = 0
    if job.reporter:
        found = _latest(job)
        if not found:
            remove_all(job.ckpt_dir)
        atomic.write_json(job.ckpt_dir / RUN_FILE, {"key": job.key, "complete": False})
    epoch = int(sum_all([float(found)])[0])  # the chief's answer, on every worker
    if not epoch:
        return Progress()
    folder = job.ckpt_dir / f"epoch-{epoch:04d}"
    tf_checkpoint(job).read(str(folder / "ckpt")).assert_consumed()
    fields = json.loads((folder / "progress.json").read_text())
    tp = job.params.train
    job.say(
        f"resuming from checkpoint epoch {epoch} (restart {os.environ.get('TINYOPS_RESTART', '0')}); "
        f"continuing at epoch {epoch + 1}"
    )
    return Progress(
        history=fields["history"],
        best=fields["best"],
        stale=fields["stale"],
        train_seconds=seconds_before(job.timing_file, epoch),
        start=tp.epochs + 1 if fields["stale"] >= tp.patience else epoch + 1,
    )


def summary(job: KerasJob, progress: Progress, samples: list[float]) -> dict[str, Any]:
    """metrics/train.json, in the torch worker's terms (deterministic figures only)."""
    params = trainable_parameters(job.model)
    state = params * STATE_BYTES_PER_PARAM
    tp = job.params.train
    out = {
        "framework": "keras",
        "best_epoch": progress.best["epoch"],
        "epochs_run": len(progress.history),
        "val_loss": round(progress.best["val_loss"], 6),
        "val_accuracy": round(progress.best["val_accuracy"], 6),
        "parameters": params,
        "training_samples": len(job.data.x["train"]),
        "world_size": job.world,
        "parallelism": "data",
        "strategy": f"keras MultiWorkerMirroredStrategy {job.world}×{tp.threads_per_proc}",
        "mesh_dp": job.world,
        "mesh_pp": 1,
        "pipeline_stages": 0,
        "microbatches": 1,
        "schedule": "none",
        "replica_batch": job.replica_batch,
        "model_state_bytes_max_rank": state,
    }
    out |= {f"model_state_bytes_rank{r}": state for r in range(job.world)}
    return out | {f"samples_rank{r}": int(n) for r, n in enumerate(samples)}


def finish(job: KerasJob, progress: Progress) -> None:
    """The best epoch's weights to models/trained/, train.json, the history and the timing."""
    from pipeline.models import keras_store

    one_hot = [0.0] * job.world
    one_hot[job.rank] = float(progress.samples)
    _, sum_all = job.collectives
    samples = sum_all(one_hot)  # what each worker trained on since this (re)start
    if not job.reporter:
        return
    job.reporter.progress.stop()
    weights = {
        v.path: np.asarray(kept.numpy())
        for v, kept in zip(job.model.weights, job.best, strict=True)
    }
    out_dir, metrics_dir = Path(job.args.out_dir), Path(job.args.metrics_dir)
    keras_store.save_model(
        out_dir / "trained", job.arch, weights, job.data.meta.model_dump(), progress.best["epoch"]
    )
    atomic.write_json(metrics_dir / "train.json", summary(job, progress, samples))
    atomic.write_json(job.ckpt_dir / RUN_FILE, {"key": job.key, "complete": True})
    write_history(metrics_dir / "train_history.csv", progress.history)
    import resource

    seconds = progress.train_seconds
    atomic.write_json(job.timing_file, {
        "train_seconds": seconds,
        "samples_per_second": len(job.data.x["train"]) * len(progress.history) / max(seconds, 1e-9),
        "peak_rss_mib_rank0": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    })  # fmt: skip


def train(args: argparse.Namespace) -> None:
    """setup → resume → (epoch → checkpoint)* with early stopping → finish."""
    job = setup(args)
    step = make_step(job)
    sync, sum_all = job.collectives = make_collectives(job)
    if job.reporter:
        job.reporter.progress.start()
    progress = resume(job, sum_all)
    tp = job.params.train
    for epoch in range(progress.start, tp.epochs + 1):
        started = time.perf_counter()
        row = run_epoch(job, progress, epoch, step, sync)
        progress.train_seconds += time.perf_counter() - started
        improved = record_epoch(job, progress, row)
        if job.reporter:
            job.reporter.epoch_line(row, tp.epochs, improved)
        checkpoint(job, progress, epoch)
        if progress.stale >= tp.patience and epoch < tp.epochs:
            job.say(
                f"early stop: no lower val_loss for {tp.patience} epochs; best epoch {progress.best['epoch']}"
            )
            break
    if progress.start > tp.epochs:  # resumed after the last epoch: the best weights are restored
        job.say("training had already ended at the checkpoint; writing its best model")
    finish(job, progress)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tinyops Keras worker (TF_CONFIG names its task)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data-dir", default="data/processed")
    parser.add_argument("--out-dir", default="models")
    parser.add_argument("--metrics-dir", default="metrics")
    parser.add_argument("--timing-file", default=".tinyops/train_timing.json")
    parser.add_argument("--metrics-log", default=".tinyops/train_metrics.jsonl")
    args = parser.parse_args(argv)
    try:
        train(args)
    except Exception as exc:
        rank, _ = task_of_tf_config()
        print(f"keras worker {rank}: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
