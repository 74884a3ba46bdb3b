"""params.yaml → strict, frozen pydantic models, validated once before any work starts."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.core.errors import ConfigError
from pipeline.core.parallel import Parallelism, ParallelPlan, Schedule, make_plan

DEFAULT_PARAMS = Path("params.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(
        strict=True, frozen=True, extra="forbid", use_attribute_docstrings=True
    )


PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


SEQUENCE_SOURCES = ("basicmotions", "japanesevowels", "series_npz", "series_csv")
PATH_SOURCES = ("npz", "imagefolder", "series_npz", "series_csv")
Arch = Literal[
    "cnn2d",
    "cnn1d",
    "dscnn1d",
    "tcn",
    "gru",
    "lstm",
    "transformer",
    "autoencoder",
    "custom",
    "tflite",
]
SEQUENCE_ARCHS = ("cnn1d", "dscnn1d", "tcn", "gru", "lstm", "transformer", "autoencoder")
KERAS_ARCHS = ("cnn2d", "cnn1d", "dscnn1d", "tcn", "custom")  # models/architecture.KERAS_FAMILIES
# model.module: a factory in a module of the project's user_models/ folder (catalog.USER_MODELS).
USER_MODULE = re.compile(r"user_models(\.[A-Za-z_]\w*)+:[A-Za-z_]\w*")
# model.path: a .tflite file in user_models/ (so DVC tracks its bytes as a dep of train).
USER_TFLITE = re.compile(r"user_models(/[\w.-]+)*/[\w.-]+\.tflite")


class PrepareParams(_Section):
    """Where the data comes from and how it is split."""

    source: Literal[
        "digits", "npz", "imagefolder", "basicmotions", "japanesevowels", "series_npz", "series_csv"
    ] = "digits"
    """Images: `digits` (scikit-learn's bundled 8×8 digits), `npz` (arrays `x` and `y`),
    `imagefolder` (one sub-folder per class). Time series (T steps × C channels):
    `basicmotions` / `japanesevowels` (UEA archive files bundled in the sktime wheel),
    `series_npz` (x of shape (N, T, C)), `series_csv` (one CSV per sample, one sub-folder per
    class, a header naming the channels)."""
    path: str | None = None
    """File (npz, series_npz) or folder (imagefolder, series_csv); ignored for bundled sources."""
    image_size: tuple[PositiveInt, PositiveInt] = Field(default=(32, 32), strict=False)
    """(height, width) that imagefolder images are resized to."""
    resize: bool = True
    """imagefolder: resize images to image_size; if false, every image must already be that size."""
    color_mode: Literal["grayscale", "rgb"] = "grayscale"
    """imagefolder: channels of the decoded images (1 or 3)."""
    max_file_bytes: PositiveInt = 64 * 1024 * 1024
    """A data file larger than this is refused before it is read."""
    seed: int = 42
    """Seed of the stratified train/val/test split: the same seed gives the same split."""
    val_fraction: Fraction = 0.15
    """Share of each class held out for validation (early stopping, int8 calibration checks)."""
    test_fraction: Fraction = 0.15
    """Share of each class held out for the test split every level is scored on."""
    min_samples_per_class: Annotated[int, Field(ge=3)] = 10
    """Every class needs at least this many samples (and at least one per split)."""
    sequence_length: PositiveInt | None = None
    """Time series: steps per sample. Longer series keep their first sequence_length steps,
    shorter ones are padded with zeros after normalisation (the training mean). null: every
    series must already have the same length."""
    min_sequence_length: PositiveInt = 4
    """Time series: a series with fewer steps than this is an error naming it."""

    @property
    def is_sequence(self) -> bool:
        """Time-series data (T, C) rather than images (H, W, C)."""
        return self.source in SEQUENCE_SOURCES

    @model_validator(mode="after")
    def _check(self) -> PrepareParams:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                "val_fraction + test_fraction must be below 0.9 so training keeps enough data"
            )
        if self.source in PATH_SOURCES and not self.path:
            raise ValueError(f"source '{self.source}' needs prepare.path (a file or folder)")
        return self


class ModelParams(_Section):
    """The model family and its size, and the framework that trains it."""

    arch: Arch = "cnn2d"
    """Images: cnn2d. Time series: cnn1d (conv blocks), dscnn1d (depthwise-separable, like
    MLPerf Tiny's keyword-spotting DS-CNN), tcn (dilated causal convolutions with residuals),
    gru / lstm (cells unrolled over the steps), transformer (encoder blocks with int8
    attention), autoencoder (a dense autoencoder for anomaly detection: trained on
    model.normal_class alone, scored by reconstruction error, evaluated with AUC). Every family
    quantizes fully to int8 and runs in TensorFlow Lite Micro. Your own: custom (a factory in
    user_models/, model.module), tflite (an int8 .tflite trained elsewhere, model.path)."""

    framework: Literal["torch", "keras"] = "torch"
    """torch: PyTorch under torchrun, exported with litert-torch; keras: Keras 3 on TensorFlow
    with tf.distribute.MultiWorkerMirroredStrategy, exported with tf.lite.TFLiteConverter. The
    same architecture params build both (Keras: cnn2d, cnn1d, dscnn1d, tcn); everything after
    export is the same."""
    channels: tuple[PositiveInt, ...] = Field(default=(32, 64, 128), strict=False, min_length=1)
    """Width of each conv block; its length is the depth."""
    kernel_size: Literal[3, 5] = 3
    """Convolution kernel size of the conv families (3 or 5)."""
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    """Dropout before the classifier (and inside the sequence families), in [0, 1)."""
    hidden_size: PositiveInt = 32
    """gru / lstm: state size; transformer: model width (a multiple of heads)."""
    heads: PositiveInt = 2
    """transformer: attention heads."""
    stride: PositiveInt = 1
    """Sequence families: the first layer reads frames of this many steps (stride = kernel),
    so an RNN unrolls T / stride steps and a transformer attends over as many."""
    normal_class: str | None = None
    """autoencoder (or a custom model with task reconstruction): the class it learns as normal
    (every other class is an anomaly); null is the dataset's first class."""
    module: str | None = None
    """custom: the factory that builds your network, `user_models.NAME:FUNCTION`, called with
    the input shape ((H, W, C) images, (T, C) series) and the class count; it returns an
    nn.Module (torch) or a keras.Model (keras). Importing it runs its code, as any import does."""
    task: Literal["classification", "reconstruction"] = "classification"
    """custom and tflite: what the outputs are: class logits, or the rebuilt input (anomaly
    detection, trained on model.normal_class alone). The bundled families know their own task."""
    path: str | None = None
    """tflite: your int8 .tflite, trained elsewhere, as `user_models/NAME.tflite` (DVC tracks the
    folder). train checks and records it, export ships it as the int8 variant; there are no
    float variants."""
    labels: tuple[str, ...] | None = Field(default=None, strict=False)
    """tflite: the classes of the model's outputs, in output order; they must be the data's
    classes in that order. null: the data's classes (sorted names)."""
    input_mean: tuple[float, ...] | None = Field(default=None, strict=False)
    """tflite: the per-channel mean the model's input was normalised with (input = (raw - mean)
    / std); null: prepare's statistics of the training split."""
    input_std: tuple[Annotated[float, Field(gt=0.0)], ...] | None = Field(
        default=None, strict=False
    )
    """tflite: the per-channel std that goes with input_mean."""

    @property
    def trainer(self) -> str:
        """What makes models/trained/: the framework, or `tflite` for a model trained elsewhere."""
        return "tflite" if self.arch == "tflite" else self.framework

    @model_validator(mode="after")
    def _check(self) -> ModelParams:
        if (self.arch == "custom") != (self.module is not None):
            raise ValueError(
                "model.module names the factory of model.arch custom (user_models.NAME:FUNCTION)"
                f"; with model.arch {self.arch} " + ("set it to null" if self.module else "set it")
            )
        if self.module is not None and not USER_MODULE.fullmatch(self.module):
            raise ValueError(
                f"model.module {self.module!r} must be user_models.NAME:FUNCTION, a function in "
                "a module of the project's user_models/ folder (which DVC tracks)"
            )
        if self.task != "classification" and self.arch not in ("custom", "tflite"):
            raise ValueError(
                f"model.task is for model.arch custom and tflite; {self.arch} knows its own task "
                "(set it to classification)"
            )
        _check_tflite(self)
        if self.arch == "transformer" and self.hidden_size % self.heads:
            raise ValueError(
                f"transformer hidden_size {self.hidden_size} must be a multiple of heads "
                f"{self.heads}"
            )
        if self.framework == "keras" and self.arch not in KERAS_ARCHS:
            raise ValueError(
                f"model.arch {self.arch} is built for model.framework torch only (litert-torch "
                "int8 with tinyops's quantizer, checked fully int8); the Keras families are "
                f"{', '.join(KERAS_ARCHS)}. Set model.framework: torch."
            )
        return self


def _check_tflite(model: ModelParams) -> None:
    """model.path, labels and normalisation belong to model.arch tflite, and go together."""
    given = [k for k in ("path", "labels", "input_mean", "input_std") if getattr(model, k)]
    if model.arch != "tflite":
        if given:
            raise ValueError(
                f"model.{given[0]} is for model.arch tflite (a model trained elsewhere); with "
                f"model.arch {model.arch} set it to null"
            )
        return
    if model.path is None or not USER_TFLITE.fullmatch(model.path):
        raise ValueError(
            f"model.arch tflite needs model.path: user_models/NAME.tflite, a file in the "
            f"project's user_models/ folder (which DVC tracks); got {model.path!r}"
        )
    if model.framework != "torch":
        raise ValueError("model.framework does not apply to model.arch tflite: leave it torch")
    if (model.input_mean is None) != (model.input_std is None) or (
        model.input_mean is not None and len(model.input_mean) != len(model.input_std or ())
    ):
        raise ValueError("model.input_mean and model.input_std go together, one value per channel")


def node_range(value: Any) -> tuple[int, int]:
    """train.nnodes as (min, max): a positive integer, or "MIN:MAX" with 1 <= MIN <= MAX."""
    text = (
        str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    )
    lo, sep, hi = text.partition(":")
    if not (lo.isdigit() and (hi.isdigit() or not sep)):
        raise ValueError(f"{value!r} is neither a number of nodes (2) nor a range MIN:MAX (1:2)")
    low, high = int(lo), int(hi or lo)
    if low < 1:
        raise ValueError(f"{value!r}: a job needs at least 1 node")
    if low > high:
        raise ValueError(f"{value!r}: MIN {low} is above MAX {high}; did you mean '{high}:{low}'?")
    return low, high


class DifferentialPrivacy(_Section):
    """train.federated.dp: each client clips its model update and adds Gaussian noise before
    it leaves the client (local, client-level DP); the epsilon it buys is reported."""

    clip: Annotated[float, Field(gt=0.0)] | None = None
    """L2 norm each client's update (its weights minus the global ones) is clipped to; null: DP off."""
    noise_multiplier: Annotated[float, Field(gt=0.0)] = 1.0
    """Noise standard deviation as a multiple of clip."""
    delta: Annotated[float, Field(gt=0.0, lt=1.0)] = 1e-5
    """The delta of the (epsilon, delta) guarantee reported."""


class FederatedParams(_Section):
    """train.paradigm federated: clients that keep their data train the model with Flower
    (docs/federated.md). A round is one step of the training loop."""

    clients: Annotated[int, Field(ge=2)] = 10
    """Clients the training split is partitioned across (one shard each, written by prepare)."""
    rounds: PositiveInt = 20
    """Most rounds; patience may end sooner. Replaces train.epochs."""
    patience: PositiveInt = 5
    """Stop after this many rounds without a lower central validation loss. Replaces
    train.patience."""
    local_epochs: PositiveInt = 1
    """Passes each sampled client makes over its own training shard per round."""
    fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    """Share of the clients sampled each round (at least min_clients); seeded per round."""
    min_clients: PositiveInt = 2
    """A round fails unless at least this many sampled clients reply (a dropped client is left
    out of that round's aggregate)."""
    min_samples: PositiveInt = 8
    """The fewest training samples a client's shard may hold; a partition leaving fewer is
    refused, naming the client."""
    strategy: Literal["fedavg", "fedprox", "fedavgm", "fedadam"] = "fedavg"
    """Aggregation: fedavg (weighted mean), fedprox (fedavg with a proximal term mu on the
    clients), fedavgm (server momentum), fedadam (server Adam)."""
    mu: Annotated[float, Field(ge=0.0)] = 0.1
    """fedprox: weight of the proximal term (mu/2)·||w - w_global||² in each client's loss."""
    server_lr: Annotated[float, Field(gt=0.0)] | None = None
    """fedavgm and fedadam: the server's learning rate; null: 1 − server_momentum for fedavgm
    (an effective rate of 1 once momentum builds up, Hsu et al. 2019), 0.01 for fedadam."""
    server_momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    """fedavgm: the server's momentum."""
    partition: Literal["iid", "dirichlet", "by_class", "natural"] = "iid"
    """How the training split is cut into client shards: iid (shuffled, equal), dirichlet
    (each class spread by Dirichlet(alpha)), by_class (classes_per_client classes each), natural
    (one client per owner: a series_npz `subject` or `owner` array)."""
    alpha: Annotated[float, Field(gt=0.0)] = 0.5
    """dirichlet: concentration; small values (0.1) give skewed, non-IID clients."""
    classes_per_client: PositiveInt = 2
    """by_class: distinct classes in each client's shard."""
    local_val_fraction: Fraction = 0.2
    """Share of each client's shard kept on it for its own evaluation."""
    engine: Literal["simulation", "deployment"] = "simulation"
    """simulation: Flower's Simulation Engine (Ray actors, one CPU each); deployment: a SuperLink
    and one SuperNode process per client on 127.0.0.1, as a real fleet runs."""
    round_timeout: PositiveInt = 300
    """Seconds a round waits for the sampled clients' replies; a client later than that is
    dropped from the round."""
    dp: DifferentialPrivacy = DifferentialPrivacy()
    """Client-side clipping and noise; off unless dp.clip is set."""

    @model_validator(mode="after")
    def _check(self) -> FederatedParams:
        if self.min_clients > self.clients:
            raise ValueError(
                f"min_clients {self.min_clients} is more than clients {self.clients}: a round "
                "could never aggregate; lower train.federated.min_clients"
            )
        if self.min_clients > max(1, round(self.fraction * self.clients)):
            raise ValueError(
                f"fraction {self.fraction} of {self.clients} clients samples "
                f"{max(1, round(self.fraction * self.clients))} per round, fewer than "
                f"min_clients {self.min_clients}: raise train.federated.fraction"
            )
        return self

    @property
    def sampled(self) -> int:
        """Clients sampled per round."""
        return max(self.min_clients, round(self.fraction * self.clients))


class TrainParams(_Section):
    """Distributed training: launcher, optimisation, reproducibility."""

    paradigm: Literal["centralized", "federated"] = "centralized"
    """centralized: the workers below train on the whole training split; federated: clients
    that keep their own shards train it with Flower (train.federated, docs/federated.md)."""
    federated: FederatedParams = FederatedParams()
    """train.paradigm federated: clients, rounds, strategy, partition, engine."""
    nproc_per_node: PositiveInt = 2
    """Worker processes on this machine (torchrun --nproc-per-node)."""
    threads_per_proc: PositiveInt = 1
    """OMP/torch threads per worker; nproc_per_node × threads_per_proc must not exceed the cores."""
    nnodes: PositiveInt | str = 1
    """Machines in the job: a number, or "MIN:MAX" for elastic membership (nodes may join and
    leave while it trains; parallelism data or fsdp). Above 1, rdzv_endpoint is required; other
    nodes join with `tinyops worker` (see docs/nodes.md)."""
    rdzv_endpoint: str | None = None
    """host:port of the rendezvous (c10d) when nnodes > 1: this node's address, where the other
    nodes' `tinyops worker` connects."""
    rdzv_timeout: PositiveInt = 120
    """Seconds the rendezvous waits for nodes to (re)join before the job fails; also how long
    `tinyops worker` waits for node 0 to answer."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """auto: nccl when CUDA is present, else gloo."""
    allreduce: Literal["auto", "shared_memory", "backend"] = "auto"
    """Gradient all-reduce. auto: through shared memory when the backend is gloo and every
    worker is on this host (x86-64), else the backend's own; shared_memory: that, or an error;
    backend: always the backend's (gloo over TCP, NCCL)."""
    epochs: PositiveInt = 40
    """Most epochs to train; early stopping (patience) may end sooner."""
    batch_size: PositiveInt = 64
    """Global batch size, split evenly across all workers."""
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 0.003
    """AdamW learning rate at the start of the cosine schedule."""
    weight_decay: Annotated[float, Field(ge=0.0, lt=1.0)] = 1e-4
    """AdamW weight decay."""
    patience: PositiveInt = 8
    """Stop after this many epochs without a lower validation loss."""
    seed: int = 42
    """Seed of weights, batch order and dropout: the same seed gives the same model bytes."""
    deterministic: bool = True
    """torch.use_deterministic_algorithms: same params, same world size → same weights."""
    keep_checkpoints: PositiveInt = 2
    """Per-epoch checkpoints kept under models/checkpoints/."""
    max_restarts: NonNegativeInt = 3
    """torchrun --max-restarts: a lost worker restarts the job, which resumes from the last
    complete epoch's checkpoint."""
    parallelism: Parallelism = "data"
    """data: DDP, every worker holds the whole model; fsdp: FSDP2, each worker holds 1/world of
    the model state; pipeline: the model cut into stages at block boundaries, one worker per
    stage (torch.distributed.pipelining); hybrid: pipelines replicated with DDP on a 2-D mesh."""
    pipeline_stages: Annotated[int, Field(ge=2)] = 2
    """Pipeline and hybrid: pieces the model is cut into (at most its blocks); one per pipeline
    worker, two with schedule interleaved_1f1b."""
    microbatches: PositiveInt | Literal["auto"] = "auto"
    """Each replica's batch is cut into this many microbatches; gradients are summed over them,
    then divided by their number. auto: 4 for pipeline and hybrid, 1 (no cut) otherwise."""
    schedule: Schedule = "1f1b"
    """Pipeline and hybrid: gpipe (all forwards, then all backwards), 1f1b (one forward, one
    backward: less activation memory), interleaved_1f1b (2 stages per worker: a smaller bubble)."""
    oversubscribe: bool = False
    """Allow more worker threads than cores (e.g. a 4-worker hybrid mesh on 2 cores): correct
    but slower; the run is labelled oversubscribed."""
    worker_hosts: tuple[str, ...] = Field(default=(), strict=False)
    """model.framework keras with nnodes > 1: host:port of each node, in node order (node i's
    workers listen on port + local rank; `tinyops worker` finds its node by its address). On one
    node, free 127.0.0.1 ports are picked."""
    max_worker_memory_mb: Annotated[float, Field(gt=0.0)] | None = None
    """Per-worker budget for model state (parameters, gradients, AdamW's two moments), checked
    before launch; null: no check. data holds it all on each worker, fsdp 1/world, pipeline the
    largest stage's."""

    @field_validator("microbatches", mode="before")
    @classmethod
    def _microbatches(cls, value: Any) -> Any:
        positive = isinstance(value, int) and not isinstance(value, bool) and value > 0
        if value != "auto" and not positive:
            raise ValueError("must be a positive integer or auto")
        return value

    @field_validator("worker_hosts")
    @classmethod
    def _host_ports(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            host, _, port = entry.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{entry!r} is not host:port (e.g. 10.0.0.2:23456)")
        return value

    @field_validator("nnodes", mode="before")
    @classmethod
    def _node_range(cls, value: Any) -> Any:
        """2 or "2" → 2; "1:2" → "1:2" (elastic); anything else names the forms it takes."""
        lo, hi = node_range(value)
        return lo if lo == hi else f"{lo}:{hi}"

    @property
    def min_nodes(self) -> int:
        return node_range(self.nnodes)[0]

    @property
    def max_nodes(self) -> int:
        return node_range(self.nnodes)[1]

    @property
    def elastic(self) -> bool:
        return self.min_nodes != self.max_nodes

    @property
    def federated_on(self) -> bool:
        return self.paradigm == "federated"

    @property
    def loop_steps(self) -> int:
        """The training loop's most steps: epochs, or a federated job's rounds."""
        return self.federated.rounds if self.federated_on else self.epochs

    @property
    def loop_patience(self) -> int:
        """Steps without a lower validation loss before the loop stops."""
        return self.federated.patience if self.federated_on else self.patience

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        if self.max_nodes > 1 and not self.rdzv_endpoint:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port of the rendezvous)")
        if self.elastic and self.parallelism not in ("data", "fsdp"):
            raise ValueError(
                f"nnodes {self.nnodes!r} (elastic) re-forms the job at another world size, and "
                f"parallelism {self.parallelism} cuts the model per worker, so its checkpoint "
                "cannot load at another world: use parallelism data or fsdp, or a fixed nnodes"
            )
        if self.paradigm == "federated":
            _check_federated(self)
        if self.allreduce == "shared_memory" and self.max_nodes > 1:
            raise ValueError("allreduce shared_memory needs every worker on one host (nnodes 1)")
        if self.allreduce == "shared_memory" and self.backend == "nccl":
            raise ValueError("allreduce shared_memory needs the gloo backend (CPU)")
        return self


# train keys a federated job has no use for, and the train.federated keys that replace them.
FEDERATED_REPLACES = {"epochs": "rounds", "patience": "patience"}


def _check_federated(tp: TrainParams) -> None:
    """What a round replaces, and what a federated job does not do (clients are not torchrun
    workers)."""
    replaced = FEDERATED_REPLACES
    given = [k for k in replaced if k in tp.model_fields_set]
    if given:
        names = " and ".join(f"train.{k}" for k in given)
        instead = " and ".join(f"train.federated.{replaced[k]}" for k in given)
        raise ValueError(
            f"{names} {'do' if len(given) > 1 else 'does'} not apply with train.paradigm "
            "federated (a round is the training "
            f"loop's step): remove {'them' if len(given) > 1 else 'it'} and set {instead}"
        )
    if tp.max_nodes > 1 or tp.parallelism != "data":
        raise ValueError(
            "train.paradigm federated trains each client in one process: leave train.nnodes 1 "
            "and train.parallelism data (the clients are the parallelism)"
        )


class ExportParams(_Section):
    """int8 post-training quantization."""

    calibration_samples: PositiveInt = 512
    """Training samples used to calibrate activation ranges."""
    qat: bool = False
    """Quantization-aware fine-tuning (torch, pt2e) when post-training int8 loses more than
    evaluate.max_int8_drop of validation accuracy; the better of the two int8 models is kept."""
    qat_epochs: PositiveInt = 5
    """Epochs of QAT fine-tuning (learning rate train.lr / 10, batch train.batch_size)."""


class EvaluateParams(_Section):
    """Accuracy at every level and the TFLite Micro arena measurement."""

    arena_max_bytes: PositiveInt = 4 * 1024 * 1024
    """Upper bound of the arena search; a model needing more fails the stage."""
    arena_granularity: PositiveInt = 16
    """The arena search stops at this resolution (TFLite Micro aligns to 16 bytes)."""
    tflm_samples: Annotated[int, Field(ge=0)] = 0
    """Test samples run through TFLite Micro (0: all of them)."""
    max_int8_drop: Annotated[float, Field(ge=0.0, le=1.0)] = 0.02
    """Validation accuracy int8 may lose against fp32 before export.qat fine-tunes."""


class MonitorParams(_Section):
    """The drift monitor (`tinyops field monitor`, docs/field.md): each device's field samples,
    one interval at a time, against the training split."""

    interval_samples: Annotated[int, Field(ge=8)] = 32
    """Field samples judged at once (a monitor interval); a partial last interval waits."""
    threshold: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.01
    """An interval drifted when its smallest p-value, Bonferroni-corrected over the input
    features, their joint test and the class mix, is below this (the false-alarm rate per clean
    interval)."""
    intervals: PositiveInt = 2
    """Drifted intervals in a row that make a device's drift confirmed."""


class OrchestrateParams(_Section):
    """The Prefect flow: retries of transient stage failures (never of validation errors)."""

    retries: Annotated[int, Field(ge=0, le=10)] = 2
    """Retries of a stage that failed for a reason a retry can fix (the error family says)."""
    retry_delay_seconds: Annotated[float, Field(ge=0.0)] = 5.0
    """First retry delay; each later one doubles (exponential back-off, with jitter)."""
    preflight: bool = True
    """`tinyops run` runs `tinyops preflight` first (seconds, cached by model and devices) and
    refuses a model no device can take; false skips it (a model you know fits)."""
    push: Literal["auto", "never"] = "auto"
    """auto: after a successful run, `dvc push` to DVC's default remote when one is set (a
    failed push is reported; the run stays successful); never: push by hand."""


class TflmParams(_Section):
    """The TensorFlow Lite Micro library the firmware check compiles (pipeline/firmware/)."""

    source: str | None = "../shared/third_party/tflm-offline-src.tar.gz"
    """A create_tflm_tree.py tree (folder or .tar.gz) with its third-party code, relative to the
    project root; null: $TINYOPS_TFLM_SOURCE. Missing: the firmware check is skipped, saying so."""
    build_type: Literal["release", "default"] = "release"
    """release strips error strings and debug checks (TFLite Micro's BUILD_TYPE)."""
    cache_dir: str | None = None
    """Where compiled libraries live; null: $TINYOPS_CACHE, else ~/.cache/tinyops."""


class FirmwareParams(_Section):
    """Each Cortex-M bundle built with the real TFLite Micro and run under QEMU."""

    enabled: bool = True
    """false: microcontrollers keep the datasheet estimates (labelled as such)."""
    samples: PositiveInt = 200
    """Test samples run on the emulated core and compared byte for byte with Python's TFLite Micro."""
    stack_bytes: PositiveInt = 4096
    """Stack reserved in the test firmware; the RAM figure counts the deepest use measured."""
    timeout_seconds: Annotated[float, Field(gt=0.0)] = 300.0
    """Per QEMU run."""


VARIANTS = ("fp32", "float16", "dynamic_int8", "int8")
Cpu = Literal[
    "cortex-m0",
    "cortex-m0plus",
    "cortex-m3",
    "cortex-m4",
    "cortex-m4+fp",
    "cortex-m7",
    "cortex-m7+fp",
    "xtensa-lx7",
    "riscv32",
]
Variant = Literal["fp32", "float16", "dynamic_int8", "int8"]
DEVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class DeviceProfile(_Section):
    """One deployment target, with datasheet figures and the user's own limits."""

    description: str = ""
    """Board and chip, e.g. 'nRF52840, Cortex-M4F'."""
    runtime: Literal["tflm", "litert"]
    """tflm: TensorFlow Lite Micro on a microcontroller; litert: LiteRT on an application processor."""
    flash_bytes: PositiveInt
    """Storage available for the model plus the runtime (flash on an MCU, disk elsewhere)."""
    ram_bytes: PositiveInt
    """RAM available for the tensor arena plus the runtime's own data."""
    clock_mhz: Annotated[float, Field(gt=0.0)]
    """CPU clock, for the latency estimate from MACs or from QEMU's instruction count."""
    variants: tuple[Variant, ...] = Field(default=("int8",), strict=False, min_length=1)
    """Variants the device accepts (its quantization schemes); TFLite Micro targets: int8 only."""
    cycles_per_mac: Annotated[float, Field(gt=0.0)]
    """Average CPU cycles per multiply-accumulate of the int8 kernels, for latency estimates."""
    min_accuracy: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """The chosen variant's accuracy, measured in this device's runtime, must reach this."""
    max_latency_ms: Annotated[float, Field(gt=0.0)] = 1000.0
    """The latency budget: the estimated (or QEMU-measured) inference time must stay below it."""
    cpu: Cpu | None = None
    """TFLite Micro targets: the core, '+fp' with an FPU; the firmware check builds for it."""
    kernels: Literal["reference", "cmsis_nn"] = "reference"
    """TFLite Micro kernels: reference, or Arm's CMSIS-NN (Cortex-M only)."""
    cycles_per_instruction: Annotated[float, Field(gt=0.0)] = 1.0
    """Average cycles per instruction, for the latency estimate from QEMU's instruction count."""

    @model_validator(mode="after")
    def _check(self) -> DeviceProfile:
        if self.runtime == "tflm" and set(self.variants) != {"int8"}:
            raise ValueError("TFLite Micro targets take full-int8 models only: variants: [int8]")
        if self.kernels == "cmsis_nn" and not (self.cpu or "").startswith("cortex-m"):
            raise ValueError(f"kernels: cmsis_nn needs a Cortex-M cpu, not {self.cpu}")
        return self


class DeployParams(_Section):
    """Fit checks, bundles and promotion."""

    require_all: bool = False
    """Fail the deploy stage when a device gets no bundle (else it gets rejected.json)."""
    promotion_tolerance: Annotated[float, Field(ge=0.0, le=1.0)] = 0.005
    """'production' moves only if accuracy is not lower than production's by more than this,
    both measured on the current test split in the device's runtime."""
    new_lineage: Literal["promote", "refuse"] = "refuse"
    """When production takes another input (shape, int8 or float) or predicts other classes:
    refuse keeps it (the report says why); promote replaces it with the new model."""
    runtime_flash_bytes: dict[Literal["tflm", "litert"], Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: {"tflm": 65536, "litert": 4194304}, strict=False
    )
    """The runtime's own code size, added to the model's bytes in the flash check."""
    runtime_ram_bytes: dict[Literal["tflm", "litert"], Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: {"tflm": 8192, "litert": 16777216}, strict=False
    )
    """The runtime's own RAM (interpreter, stack; LiteRT's process), added to the arena."""
    latency_runs: PositiveInt = 50
    """LiteRT targets: invokes timed on the host (median reported)."""


class Params(_Section):
    """The whole params.yaml."""

    prepare: PrepareParams = PrepareParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    export: ExportParams = ExportParams()
    evaluate: EvaluateParams = EvaluateParams()
    deploy: DeployParams = DeployParams()
    orchestrate: OrchestrateParams = OrchestrateParams()
    monitor: MonitorParams = MonitorParams()
    tflm: TflmParams = TflmParams()
    firmware: FirmwareParams = FirmwareParams()
    devices: dict[str, DeviceProfile] = Field(default_factory=dict, strict=False)
    """The device catalogue, keyed by device name (a folder name: lowercase letters, digits, _ and -)."""

    @model_validator(mode="after")
    def _check_parallelism(self) -> Params:
        """Strategy, world size and model depth validated together (pipeline/core/parallel.py)."""
        _plan(self.train, self.model, batch_size=None)
        _check_framework(self.train, self.model)
        _check_federated_data(self.prepare, self.model, self.train)
        _check_family(self.prepare, self.model, self.train)
        if self.export.qat and self.model.framework == "keras":
            raise ValueError(
                "export.qat fine-tunes with torchao's pt2e QAT, for model.framework torch; with "
                "keras set export.qat: false"
            )
        return self

    @field_validator("devices", mode="before")
    @classmethod
    def _check_names(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name in value:
                check_device_name(name)
        return value


def _check_framework(tp: TrainParams, model: ModelParams) -> None:
    """What the Keras trainer supports: data parallelism (MultiWorkerMirroredStrategy) only, and
    a worker list across several nodes."""
    if model.framework != "keras":
        return
    if tp.parallelism != "data":
        raise ValueError(
            f"model.framework keras trains with tf.distribute.MultiWorkerMirroredStrategy (data "
            f"parallelism); train.parallelism {tp.parallelism} needs model.framework torch"
        )
    if tp.elastic:
        raise ValueError(
            f"train.nnodes {tp.nnodes!r} (elastic) is for model.framework torch (torchrun's "
            "elastic agent); MultiWorkerMirroredStrategy needs a fixed worker list: set a number"
        )
    if tp.max_nodes > 1 and len(tp.worker_hosts) != tp.max_nodes:
        raise ValueError(
            f"model.framework keras with train.nnodes {tp.nnodes} needs train.worker_hosts: "
            f"host:port of each of the {tp.nnodes} nodes (got {len(tp.worker_hosts)})"
        )


def _check_federated_data(prep: PrepareParams, model: ModelParams, tp: TrainParams) -> None:
    """Federated training is torch's (its clients train with the house's torch models), and a
    natural partition needs data that names each sample's owner."""
    if not tp.federated_on:
        return
    if model.trainer != "torch":
        raise ValueError(
            f"train.paradigm federated trains torch models on the clients; model.framework "
            f"{model.framework}"
            + (f" (model.arch {model.arch})" if model.arch == "tflite" else "")
            + " is not supported there: set model.framework torch, or train.paradigm centralized"
        )
    if tp.federated.partition == "natural" and prep.source != "series_npz":
        raise ValueError(
            f"train.federated.partition natural needs data that names each sample's owner: a "
            f"`subject` or `owner` array in a series_npz file; prepare.source {prep.source} has "
            "none. Use partition iid, dirichlet or by_class"
        )


def _check_family(prep: PrepareParams, model: ModelParams, tp: TrainParams) -> None:
    """Refused before any work: a family that does not fit the data, or a model-parallel
    strategy on a family that has no block boundaries to cut at."""
    if model.arch not in ("custom", "tflite") and prep.is_sequence != (
        model.arch in SEQUENCE_ARCHS
    ):
        kind = "time series" if prep.is_sequence else "images"
        fits = ", ".join(SEQUENCE_ARCHS) if prep.is_sequence else "cnn2d"
        raise ValueError(
            f"prepare.source {prep.source} gives {kind}, which model.arch {model.arch} cannot "
            f"take; for {kind} use one of: {fits}"
        )
    if model.arch != "cnn2d" and tp.parallelism in ("pipeline", "hybrid"):
        raise ValueError(
            f"train.parallelism {tp.parallelism} cuts cnn2d at its conv blocks; model.arch "
            f"{model.arch} trains with parallelism data or fsdp"
            + (" (a custom model has no blocks tinyops can cut)" if model.arch == "custom" else "")
        )


def parallel_plan(
    params: Params, batch_size: bool = True, world: int | None = None
) -> ParallelPlan:
    """The training job's shape for these params (valid: checked when they were loaded), at
    `world` workers (an elastic job's current world; by default its largest)."""
    try:
        size = params.train.batch_size if batch_size else None
        return _plan(params.train, params.model, size, world)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _plan(
    tp: TrainParams, model: ModelParams, batch_size: int | None, world: int | None = None
) -> ParallelPlan:
    return make_plan(
        tp.parallelism,
        world or tp.nproc_per_node * tp.max_nodes,
        blocks=len(model.channels),
        pipeline_stages=tp.pipeline_stages,
        schedule=tp.schedule,
        microbatches=tp.microbatches,
        batch_size=batch_size,
    )


def require_device(params: Params, device: str, source: str = "params.yaml") -> None:
    if device not in params.devices:
        known = ", ".join(sorted(params.devices)) or "(none)"
        close = difflib.get_close_matches(device, list(params.devices), n=1)
        hint = f"Did you mean '{close[0]}'? " if close else ""
        raise ConfigError(
            f"device '{device}' is not in {source}'s devices. {hint}Known: {known}. "
            "Add a profile under devices: to deploy to a new device."
        )


def check_device_name(name: Any) -> str:
    """A device name becomes a folder name: refuse anything but a plain identifier."""
    if not isinstance(name, str) or not DEVICE_NAME.match(name):
        raise ValueError(
            f"device name {name!r} is not allowed: use 1-63 lowercase letters, digits, '_' or '-', "
            "starting with a letter or digit (it becomes the folder deploy/<name>/)"
        )
    return name


def _model_for(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the key at `loc`, to list its allowed keys."""
    model: Any = Params
    parts = list(loc[:-1])
    while parts:
        part = parts.pop(0)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        if not isinstance(part, str) or part not in model.model_fields:
            return None
        model = model.model_fields[part].annotation
        if get_origin(model) is dict:  # devices: {name: DeviceProfile}; skip the name
            model = get_args(model)[1]
            if parts:
                parts.pop(0)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _describe(error: dict[str, Any], source: str) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        owner = _model_for(loc)
        allowed = sorted(owner.model_fields) if owner else []
        given = str(loc[-1])
        close = [k for k in allowed if k.startswith(given)] or difflib.get_close_matches(
            given, allowed, n=1
        )
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"{source}: unknown key '{key}'.{hint} Allowed keys here: {', '.join(allowed)}."
    msg = error["msg"]
    if error["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
        if not loc:  # a check across sections names its own keys
            return f"{source}: {msg}"
    given = error.get("input")
    shown = "" if isinstance(given, dict) else f" (got {given!r})"
    hint = ""
    if isinstance(given, str) and _looks_numeric(given):
        hint = " YAML read this number as text: write it with a dot, e.g. 1.0e-4."
    elif error["type"] == "literal_error" and isinstance(given, str):
        close = difflib.get_close_matches(given, _choices(error), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"{source}: '{key}': {msg}{shown}.{hint}"


def _choices(error: dict[str, Any]) -> list[str]:
    """The allowed values of a Literal, from pydantic's error context."""
    expected = str((error.get("ctx") or {}).get("expected", ""))
    return [c.strip(" '") for c in expected.replace(" or ", ",").split(",") if c.strip(" '")]


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_params(data: Any, source: str = "params.yaml") -> Params:
    """Validate an already-parsed mapping; raise ConfigError listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}.")
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(e, source) for e in exc.errors()]
        raise ConfigError("Invalid configuration:\n  " + "\n  ".join(lines)) from None


def read_params(path: Path | str = DEFAULT_PARAMS) -> dict[str, Any]:
    """params.yaml as written (unvalidated): what DVC reads."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: no such file. Run tinyops from the project root or pass --params PATH."
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return data


def load_params(path: Path | str = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml."""
    return parse_params(read_params(path), source=str(path))


def missing_keys(raw: dict[str, Any], tracked: Sequence[str]) -> list[str]:
    """The keys DVC tracks (dvc.yaml's `params`: a section, or section.key) that the file
    leaves out. A tracked section counts as every one of its fields: DVC hashes the section as
    written, so a key left to its default would change no hash if the default changed. A
    federated job's train.epochs and train.patience are absent by design (they are refused)."""
    missing: list[str] = []
    train = raw.get("train")
    if isinstance(train, dict) and train.get("paradigm") == "federated":  # left out on purpose
        tracked = [k for k in tracked if k not in {f"train.{f}" for f in FEDERATED_REPLACES}]
        raw = {**raw, "train": {**train, **dict.fromkeys(FEDERATED_REPLACES)}}
    for key in tracked:
        section, _, leaf = key.partition(".")
        block = raw.get(section)
        if leaf:
            absent = not isinstance(block, dict) or leaf not in block
            missing += [key] if absent else []
        elif not isinstance(block, dict):
            missing.append(section)
        elif (model := _model_for((section, ""))) and get_origin(_field(section)) is not dict:
            missing += [f"{section}.{f}" for f in model.model_fields if f not in block]
    return list(dict.fromkeys(missing))


def _field(section: str) -> Any:
    field = Params.model_fields.get(section)
    return field.annotation if field else None


def with_defaults(raw: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """`raw` with each of `keys` (section or section.key) filled in from the validated values:
    the defaults, for keys the file leaves out."""
    resolved = parse_params(raw).model_dump(mode="json")
    filled = {name: dict(v) if isinstance(v, dict) else v for name, v in raw.items()}
    for key in keys:
        section, _, leaf = key.partition(".")
        if leaf:
            filled.setdefault(section, {})[leaf] = resolved[section][leaf]
        else:
            filled[section] = resolved[section]
    return filled


def with_example(
    base: dict[str, Any], example: dict[str, Any], source: str, arch: str | None = None
) -> dict[str, Any]:
    """`base` (a params mapping) with each section of an example overlaid key by key, and
    model.arch set when given; validated, so a bad example or arch names its key."""
    if not isinstance(example, dict):
        raise ConfigError(f"{source}: expected a mapping of sections to overlay.")
    merged = {name: dict(section) for name, section in base.items() if isinstance(section, dict)}
    merged |= {name: value for name, value in base.items() if not isinstance(value, dict)}
    for name, section in example.items():
        if not isinstance(section, dict) or name == "devices":
            raise ConfigError(
                f"{source}: '{name}' must be a section of keys (devices are not overlaid)."
            )
        merged.setdefault(name, {}).update(section)
    if arch is not None:
        merged.setdefault("model", {})["arch"] = arch
    parse_params(merged, source=f"params.yaml + {source}")
    return merged
