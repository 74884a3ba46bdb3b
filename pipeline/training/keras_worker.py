"""One Keras training worker; `tinyops stage train` starts train.nproc_per_node of them on this
node, each with its own TF_CONFIG (pipeline/training/keras_launch.py), e.g.

    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:23456", "127.0.0.1:23457"]},
                "task": {"type": "worker", "index": 0}}' python -m pipeline.training.keras_worker

TensorFlow's own engine: tf.distribute.MultiWorkerMirroredStrategy with a custom training loop
(`strategy.run` per step). Keras 3.15's `model.fit` breaks under MWMS (keras#20585,
tensorflow#72388); the custom step runs unmodified. The epoch loop, early stopping, checkpoint
cadence and what is written are the one loop's (pipeline/training/loop.py), as for torch; this
module is Keras's engine for it. No torch is imported here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import atomic
from pipeline.core.config import Params, load_params
from pipeline.data.prepare import load_processed
from pipeline.models.architecture import architecture_for
from pipeline.models.tasks import task_for
from pipeline.training.checkpoint import prune, run_file, run_key
from pipeline.training.loop import Finished, Loop, is_writer, worker_arguments

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


class KerasEngine:
    """Keras under tf.distribute.MultiWorkerMirroredStrategy: the same seeded global batches as
    torch, cut into one contiguous slice per worker; AdamW with torch's cosine schedule per epoch;
    BatchNorm moving statistics averaged over the workers once per epoch; tf.train.Checkpoint.
    The loss and the validation figures are the task's (pipeline/models/tasks.py)."""

    def __init__(self, params: Params, data_dir: Path, ckpt_dir: Path | None = None) -> None:
        self.ckpt_dir = ckpt_dir or Path("models/checkpoints")
        tp = params.train
        tf = configure_tensorflow(tp.threads_per_proc, tp.seed, tp.deterministic)
        import keras

        from pipeline.models.architecture import build_keras_model

        self.params, self.tf, self.keras = params, tf, keras
        self.rank, self.world = task_of_tf_config()
        self.strategy = tf.distribute.MultiWorkerMirroredStrategy()
        self.data = load_processed(data_dir)
        meta = self.data.meta
        self.arch = architecture_for(params, meta.input_shape, meta.num_classes, meta.classes)
        self.task = task_for(self.arch)
        with self.strategy.scope():
            self.model = build_keras_model(self.arch)
            self.optimizer = keras.optimizers.AdamW(
                tp.lr,
                weight_decay=tp.weight_decay,
                epsilon=1e-8,  # torch's AdamW defaults
            )
            self.optimizer.build(self.model.trainable_variables)
            self.best = [tf.Variable(v.value, trainable=False) for v in self.model.weights]
        self.writer = is_writer(int(os.environ.get("LOCAL_RANK", "0")), tp.max_nodes)
        # Each node's first worker keeps the checkpoints in its own clone (node 0's is the
        # writer), so a restarted group on any node resumes without a shared file system.
        self.keeper = os.environ.get("LOCAL_RANK", "0") == "0"
        self.samples = len(self.data.x["train"])
        self.steps = self.samples // tp.batch_size
        self.key = run_key(params.model_dump(mode="json"), meta.data_sha256, self.world, False)
        self.seen = 0  # samples this worker trained on since it started (for the split check)
        self.next_lr = tp.lr
        self._step = make_step(self)
        self.sync_batchnorm, self.sum_all = make_collectives(self)

    @property
    def replica_batch(self) -> int:
        return self.params.train.batch_size // self.world

    def describe(self) -> str:
        tp = self.params.train
        return (
            f"train: keras {self.keras.__version__} on TensorFlow {self.tf.__version__}, "
            f"MultiWorkerMirroredStrategy over {self.world} worker(s) × {tp.threads_per_proc} "
            f"thread(s), {self.replica_batch} of each {tp.batch_size}-sample batch per worker, "
            f"{trainable_parameters(self.model):,} parameters, {self.samples} training samples"
        )

    def share(self, found: Any) -> Any:
        """The epoch every worker resumes from (None: start afresh): the chief's newest, or an
        older one that every node's keeper holds too (a node lost while it saved the newest
        lacks it). Each worker's answer in its own slot of one all-reduce."""
        chief = int(self.sum_all([float(found or 0)])[0])
        if not chief:
            return None
        mine = float(found or 0) if self.writer else float(chief)
        if self.keeper and not self.writer:
            mine = float(_held(self.ckpt_dir, self.key, chief))
        slots = [0.0] * self.world
        slots[self.rank] = mine
        return int(min(self.sum_all(slots))) or None

    def find_checkpoint(self, ckpt_dir: Path, say: Any) -> int | None:
        return _latest(ckpt_dir, self.key, say) or None

    def restore(self, found: Any, ckpt_dir: Path) -> dict[str, Any]:
        folder = ckpt_dir / f"epoch-{found:04d}"
        fields = json.loads((folder / "progress.json").read_text())
        if fields.get("key") != self.key:  # another node's clone kept another run's epoch
            raise RuntimeError(
                f"{folder.resolve()} belongs to another training run than node 0's; remove "
                f"{ckpt_dir.resolve()} on this node and start the job again"
            )
        tf_checkpoint(self).read(str(folder / "ckpt")).assert_consumed()
        return fields

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This worker's sample indices per step: one seeded permutation cut into global batches
        (a last partial one dropped), worker r taking the r-th contiguous slice of each."""
        size = self.params.train.batch_size
        order = np.random.default_rng(self.params.train.seed + epoch).permutation(self.samples)
        per, r = self.replica_batch, self.rank
        return [order[i * size + r * per : i * size + (r + 1) * per] for i in range(self.steps)]

    def train_epoch(self, epoch: int, advance: Any) -> float:
        self.optimizer.learning_rate.assign(lr_at(self.params, epoch))
        x, y = self.data.x["train"], self.data.y["train"]
        losses = []
        for idx in self.batches(epoch):
            losses.append(float(self._step(x[idx], y[idx])))
            self.seen += len(idx)
            advance()
        self.sync_batchnorm()
        self.next_lr = lr_at(self.params, epoch + 1)
        return float(np.mean(losses))

    def evaluate(self) -> tuple[float, float]:
        """The whole validation split. Every worker holds the same weights and (after the
        BatchNorm sync) the same statistics, so each computes it alone: no collective."""
        x, y = self.data.x["val"], self.data.y["val"]
        out = np.asarray(self.model(x, training=False), dtype=np.float64)
        loss_sum, correct, count = self.task.evaluate_array(out, x, y)
        return loss_sum / count, correct / count

    def lr(self) -> float:
        return self.next_lr

    def snapshot_best(self) -> None:
        for kept, variable in zip(self.best, self.model.weights, strict=True):
            kept.assign(variable.value)

    def save_checkpoint(self, path: Path, fields: dict[str, Any]) -> None:
        """Every worker writes (MWMS saves collectively); the chief's copy is the checkpoint,
        published as epoch-NNNN/ once complete, the others' scratch copies are removed. Written
        with Checkpoint.write (no CheckpointManager state file, which records wall time)."""
        scratch = path.with_name(
            path.name + (".partial" if self.keeper else f".worker-{self.rank}")
        )
        shutil.rmtree(scratch, ignore_errors=True)
        tf_checkpoint(self).write(str(scratch / "ckpt"))
        if not self.keeper:
            shutil.rmtree(scratch, ignore_errors=True)
            return
        atomic.write_json(scratch / "progress.json", fields)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(scratch, path)
        if not self.writer:  # another node's keeper: the loop prunes node 0's only
            prune(path.parent, self.params.train.keep_checkpoints)

    def finish(self, trained_dir: Path, best_epoch: int) -> Finished:
        """Collective: what each worker trained on; the best epoch's weights, saved by the chief."""
        import resource

        from pipeline.models import keras_store

        one_hot = [0.0] * self.world
        one_hot[self.rank] = float(self.seen)
        samples = self.sum_all(one_hot)
        if self.writer:
            weights = {
                v.path: np.asarray(kept.numpy())
                for v, kept in zip(self.model.weights, self.best, strict=True)
            }
            meta = self.data.meta.model_dump()
            keras_store.save_model(trained_dir, self.arch, weights, meta, best_epoch)
        params = trainable_parameters(self.model)
        state = params * STATE_BYTES_PER_PARAM
        summary = {
            "framework": "keras",
            "parameters": params,
            "parallelism": "data",
            "strategy": f"keras MultiWorkerMirroredStrategy {self.world}×"
            f"{self.params.train.threads_per_proc}",
            "mesh_dp": self.world,
            "replica_batch": self.replica_batch,
            "model_state_bytes_max_rank": state,
        }
        summary |= {f"model_state_bytes_rank{r}": state for r in range(self.world)}
        summary |= {f"samples_rank{r}": int(n) for r, n in enumerate(samples)}
        rss = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        return Finished(summary, {"peak_rss_mib_rank0": rss})


def trainable_parameters(model: Any) -> int:
    """Counted on the Keras model itself (metrics/train.json's `parameters`): the torch model
    of the same params has exactly as many (tests/e2e/test_keras.py)."""
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def make_step(engine: KerasEngine) -> Any:
    """The distributed train step: each replica's loss is scaled by the global batch, MWMS sums
    the gradients over the workers inside apply_gradients."""
    import tensorflow as tf

    loss_fn = engine.task.keras_loss()
    global_batch = engine.params.train.batch_size
    model, optimizer, strategy = engine.model, engine.optimizer, engine.strategy

    def replica_step(xb: Any, yb: Any) -> Any:
        with tf.GradientTape() as tape:
            out = model(xb, training=True)
            loss = tf.nn.compute_average_loss(loss_fn(out, xb, yb), global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    @tf.function
    def step(xb: Any, yb: Any) -> Any:
        return strategy.reduce("SUM", strategy.run(replica_step, args=(xb, yb)), axis=None)

    return step


def make_collectives(engine: KerasEngine) -> tuple[Any, Any]:
    """Two all-reduces: the mean of BatchNorm's moving statistics (each worker updated them on its
    own slice), and the sum of a small vector (progress agreement, sample counts)."""
    import tensorflow as tf

    moving = [v for v in engine.model.non_trainable_variables if "moving_" in v.path]
    strategy = engine.strategy

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


def lr_at(params: Params, epoch: int) -> float:
    """torch's CosineAnnealingLR(T_max=epochs) value for `epoch` (1-based), stepped per epoch."""
    tp = params.train
    return tp.lr * (1 + math.cos(math.pi * (epoch - 1) / tp.epochs)) / 2


def tf_checkpoint(engine: KerasEngine) -> Any:
    """Every variable by list: `model.variables`, not `model.weights`, which leaves out dropout's
    seed-generator state (a resumed run then drew other masks and drifted); the optimizer's
    step, learning rate and moments; the best epoch's weights."""
    import tensorflow as tf

    return tf.train.Checkpoint(
        variables=list(engine.model.variables),
        optimizer=list(engine.optimizer.variables),
        best=engine.best,
    )


def _latest(ckpt_dir: Path, key: str, say: Any) -> int:
    """The chief's newest complete checkpoint of this unfinished run (0: none, start afresh)."""
    run = run_file(ckpt_dir)
    if run.get("key") != key or run.get("complete"):
        return 0
    for folder in sorted(ckpt_dir.glob("epoch-[0-9][0-9][0-9][0-9]"), reverse=True):
        try:
            fields = json.loads((folder / "progress.json").read_text())
        except (OSError, ValueError):
            say(f"checkpoint {folder} is incomplete; trying the one before")
            continue
        if fields.get("key") == key:
            return int(fields["epoch"])
    return 0


def _held(ckpt_dir: Path, key: str, at_most: int) -> int:
    """Another node's keeper: its newest complete checkpoint of this run up to `at_most`."""
    for folder in sorted(ckpt_dir.glob("epoch-[0-9][0-9][0-9][0-9]"), reverse=True):
        try:
            fields = json.loads((folder / "progress.json").read_text())
        except (OSError, ValueError):
            continue
        if fields.get("key") == key and int(fields["epoch"]) <= at_most:
            return int(fields["epoch"])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = worker_arguments("tinyops Keras worker (TF_CONFIG names its task)", argv)
    try:
        params = load_params(args.params)
        engine = KerasEngine(params, Path(args.data_dir), Path(args.out_dir) / "checkpoints")
        Loop(engine, params, args).run()
    except Exception as exc:
        rank, _ = task_of_tf_config()
        print(f"keras worker {rank}: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
