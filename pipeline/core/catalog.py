"""The catalog: every path a stage reads or writes, and the typed JSON that passes between them.

Stages hand each other files, never Python objects (each runs in its own process under DVC), so
the files are the interface. Each one is named here once, and the JSON ones are read and written
through pydantic models: a stage that finds a missing or malformed file says which stage to rerun
instead of failing with a KeyError deep inside. dvc.yaml spells the same paths; a test checks
that every output named here is declared there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.core.errors import ArtifactError

# model.arch custom: the project's own networks (a DVC dep of train, export and evaluate)
USER_MODELS = Path("user_models")
# prepare
RAW_DIR = Path("data/raw")
PROCESSED_DIR = Path("data/processed")
FIELD_DIR = Path("data/field")  # samples devices sent back: <device>/<seq>-<batch id>.npz
# The labelled field samples, in raw units, that prepare adds to any source (written when drift
# triggers retraining; a new raw file, so the flow's ingest versions it and prepare reruns).
FIELD_LABELLED = RAW_DIR / "field_labelled.npz"
META_FILE = PROCESSED_DIR / "meta.json"
# train.paradigm federated: one shard per client (its own training and validation samples),
# written by prepare from the training split, and what each holds (sizes, label histograms).
CLIENTS_DIR = PROCESSED_DIR / "clients"
PARTITIONS_FILE = CLIENTS_DIR / "partitions.json"
PARTITIONS_PNG = Path("report/partitions.png")
FLOWER_DIR = Path(".tinyops/flower")  # a federated run's scratch: the app bundle, logs, ports
FLOWER_STATUS = FLOWER_DIR / "status.json"  # how the ServerApp ended: {"ok": bool, "error": str}
# train
MODEL_DIR = Path("models")
TRAINED_DIR = MODEL_DIR / "trained"  # the trained model, in its framework's own files:
MODEL_FILE = TRAINED_DIR / "model.pt"  # torch: weights and architecture in one file
KERAS_CARD = TRAINED_DIR / "model.json"  # keras: architecture, classes, normalisation
KERAS_WEIGHTS = TRAINED_DIR / "model.weights.npz"  # keras: the weights by variable path
TFLITE_MODEL = TRAINED_DIR / "model.tflite"  # model.arch tflite: the file, as it was given
TFLITE_CARD = TRAINED_DIR / "card.json"  # tflite: its architecture, labels, normalisation
FRAMEWORK_FILES = {"torch": MODEL_FILE.name, "keras": KERAS_CARD.name, "tflite": TFLITE_MODEL.name}
CHECKPOINT_DIR = MODEL_DIR / "checkpoints"
METRICS_DIR = Path("metrics")
PREFLIGHT_METRICS = METRICS_DIR / "preflight.json"  # tinyops preflight: the answer per device
TRAIN_METRICS = METRICS_DIR / "train.json"
TRAIN_HISTORY = METRICS_DIR / "train_history.csv"
# export
EXPORT_DIR = Path("exports")
STREAMING_DIR = EXPORT_DIR / "streaming"  # a recurrent family's int8 step model + streaming.json
# evaluate
EVALUATE_METRICS = METRICS_DIR / "evaluate.json"
VARIANTS_FILE = METRICS_DIR / "variants.json"
INT8_LAYERS = METRICS_DIR / "int8_layers.json"  # export: each int8 layer against float
PREDICTIONS_FILE = METRICS_DIR / "predictions.csv"
# deploy and report
DEPLOY_ROOT = Path("deploy")
DEPLOY_STATUS_DIR = METRICS_DIR / "deploy"
REPORT_MD = Path("report/deploy.md")
REPORT_PNG = Path("report/accuracy_vs_size.png")
LAYERS_PNG = Path("report/int8_layers.png")
DRIFT_DIR = Path("report/drift")  # tinyops field monitor: a folder per device, swapped in whole
DRIFT_MD, DRIFT_PNG, DRIFT_JSON = "report.md", "drift.png", "drift.json"  # in a device's folder

# Generated documentation and bench results (committed; `tinyops docs` regenerates the pages)
BENCH_RESULTS = Path("bench/results.json")
FAMILIES_TABLE = Path("bench/families.md")
PARAMS_DOC = Path("docs/params.md")
PERFORMANCE_DOC = Path("docs/performance.md")
EXIT_CODES_DOC = Path("docs/exit-codes.md")

# Workspace state: not DVC outputs, never committed (.tinyops/ is git-ignored).
STATE_DIR = Path(".tinyops")
PREFLIGHT_CACHE = STATE_DIR / "preflight"  # its answers, keyed by model, devices and code
LOCK_FILE = STATE_DIR / "pipeline.lock"
LAST_SUCCESS = STATE_DIR / "last_success.json"
RSS_FILE = STATE_DIR / "stage_rss.json"  # the latest peak RSS of each stage, for `tinyops bench`
STAGE_STATUS_DIR = STATE_DIR / "stages"  # one outcome file per stage execution
TRAIN_TIMING = STATE_DIR / "train_timing.json"
STACK_DIR = STATE_DIR / "stack"  # `tinyops stack`'s default folder: data, configs, logs
STACK_CONFIG = "stack.json"  # in a stack folder: its ports and secrets (mode 0600)
STACK_RUNNING = "running.json"  # in a stack folder: the process group of each running service
TRAIN_METRICS_LOG = STATE_DIR / "train_metrics.jsonl"
CONFUSION_PNG = STATE_DIR / "confusion_matrix.png"
LOGGED_MODEL = STATE_DIR / "logged_model.json"  # the MLflow LoggedModel of the latest export
FIELD_TOKENS = STATE_DIR / "field_tokens.json"  # devices' ingest tokens, hashed (mode 0600)


def variant_file(variant: str, export_dir: Path = EXPORT_DIR) -> Path:
    """exports/model_<variant>.tflite."""
    return export_dir / f"model_{variant}.tflite"


def trained_framework(trained_dir: Path = TRAINED_DIR) -> str:
    """Which framework trained the model in `trained_dir`, from the files it holds: export and
    evaluate read this, never params (the model decides, whatever params say now)."""
    found = [fw for fw, name in FRAMEWORK_FILES.items() if (trained_dir / name).is_file()]
    if len(found) != 1:
        what = "no trained model" if not found else f"files of {' and '.join(found)}"
        raise ArtifactError(f"{trained_dir}: {what}. Rerun `tinyops stage train`.")
    return found[0]


def trained_sha256(trained_dir: Path = TRAINED_DIR) -> str:
    """One hash of every file of the trained model (names and bytes)."""
    import hashlib

    from pipeline.core.provenance import sha256_file

    h = hashlib.sha256()
    for path in sorted(p for p in trained_dir.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(trained_dir)}\0{sha256_file(path)}\0".encode())
    return h.hexdigest()


def deploy_status_file(device: str, status_dir: Path = DEPLOY_STATUS_DIR) -> Path:
    return status_dir / f"{device}.json"


# Set by the run path around `dvc repro`: the folder where each `tinyops stage` it starts records
# how it ended. A stage run by hand, or by a bare `dvc repro`, writes none.
ENV_STAGE_STATUS = "TINYOPS_STAGE_STATUS_DIR"


def stage_status_file(target: str, status_dir: Path = STAGE_STATUS_DIR) -> Path:
    """Where `tinyops stage` records how a DVC stage ended (deploy@x → deploy@x.json)."""
    return status_dir / f"{target}.json"


class Artifact(BaseModel):
    """A JSON file passed between stages. Extra keys are kept: an older reader never drops what a
    newer writer added."""

    model_config = ConfigDict(extra="allow", frozen=True)


class DatasetMeta(Artifact):
    """data/processed/meta.json, written by prepare."""

    source: str
    classes: list[str]
    num_classes: int
    input_shape: list[int]
    layout: str
    """NHWC (images) or NTC (time series: steps × channels)."""
    normalization: dict[str, Any]
    channels: list[str] = []
    """Time series: the channel names, in input order."""
    splits: dict[str, int]
    class_counts: dict[str, int]
    seed: int
    data_sha256: str
    processed_sha256: str


def client_shard(client: int, clients_dir: Path = CLIENTS_DIR) -> Path:
    """One client's shard, a folder of x_train, y_train, x_val, y_val .npy files (normalised
    like the splits; .npy, not .npz: a zip member carries its write time, and the bytes must
    not change run to run)."""
    return clients_dir / f"client-{client:03d}"


class ClientShard(Artifact):
    client: int
    train: int
    val: int
    labels: dict[str, int]
    """Training samples per class name."""
    owner: str = ""


class Partitions(Artifact):
    """data/processed/clients/partitions.json, written by prepare for train.paradigm federated."""

    partition: str
    clients: list[ClientShard]
    seed: int
    settings: dict[str, Any] = {}


class TrainSummary(Artifact):
    """metrics/train.json, written by the training loop (pipeline/training/loop.py): the best
    epoch, the strategy's shape and the model state each worker held (per-rank keys
    `model_state_bytes_rank<N>` ride along as extras). Deterministic figures only: a DVC metric."""

    framework: str = "torch"
    best_epoch: int
    epochs_run: int
    val_loss: float | None = None  # none for model.arch tflite: adopted, not trained
    val_accuracy: float
    parameters: int
    training_samples: int = 0
    world_size: int
    # An elastic run's world sizes: [{"from_epoch": 1, "world_size": 1}, {"from_epoch": 4, …}].
    world_history: list[dict[str, int]] = []
    parallelism: str = "data"
    strategy: str = ""
    mesh_dp: int = 1
    mesh_pp: int = 1
    pipeline_stages: int = 0
    microbatches: int = 1
    schedule: str = "none"
    model_state_bytes_max_rank: int = 0

    def per_rank_state(self) -> list[int]:
        extra = self.model_extra or {}
        return [int(extra[f"model_state_bytes_rank{r}"]) for r in range(self.world_size)
                if f"model_state_bytes_rank{r}" in extra]  # fmt: skip


class Manifest(Artifact):
    """deploy/<device>/manifest.json, the contract of a bundle: deploy writes it, and the registry,
    the champion, the report and the bench read it back through this model. A TensorFlow Lite
    Micro bundle adds the arena, ops, core, firmware figures and its I/O quantization."""

    device: str
    runtime: str
    variant: str
    model_file: str
    model_sha256: str
    model_bytes: int
    labels: list[str]
    description: str = ""
    accuracy: float = 0.0
    latency_ms: float = 0.0
    latency_kind: str = "estimated"
    estimated_latency_ms: float | None = None
    checks: list[dict[str, Any]] = []
    task: dict[str, Any] | None = None
    input_shape: list[int] = []
    layout: str = ""
    channels: list[str] = []
    normalization: dict[str, Any] = {}
    mlflow_run_id: str = ""
    git_commit: str = ""
    data_sha256: str = ""
    files: dict[str, str] = {}
    """Every other file of the bundle by name, with its sha256."""
    arena_bytes: int | None = None
    arena_measured_bytes: int | None = None
    arena_host_bytes: int | None = None
    ops: list[str] | None = None
    cpu: str | None = None
    kernels: str | None = None
    firmware: dict[str, Any] | None = None
    input_scale: float | None = None
    input_zero_point: int | None = None
    output_scale: float | None = None
    output_zero_point: int | None = None

    def dump(self) -> dict[str, Any]:
        """The JSON written: the keys deploy set (a LiteRT bundle has no TFLite Micro keys)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def host_arena(self) -> int:
        """The arena for Python's TFLite Micro: a bundle reserves what the MCU build needs, less."""
        return int(max(self.arena_bytes or 0, self.arena_host_bytes or 0))


class VariantInfo(Artifact):
    """One .tflite variant as evaluate measured it (metrics/variants.json)."""

    bytes: int
    file: str
    litert_accuracy: float
    macs: int
    input_scale: float | None = None
    input_zero_point: int | None = None
    ops: list[str] | None = None
    tflm_accuracy: float | None = None
    tflm_arena_bytes: int | None = None


class Variants(Artifact):
    """metrics/variants.json: every exported variant by name (a model trained elsewhere,
    model.arch tflite, has the int8 one alone)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    fp32: VariantInfo | None = None
    float16: VariantInfo | None = None
    dynamic_int8: VariantInfo | None = None
    int8: VariantInfo

    def items(self) -> list[tuple[str, VariantInfo]]:
        """The variants that were exported."""
        found = [(name, getattr(self, name)) for name in type(self).model_fields]
        return [(name, info) for name, info in found if info is not None]


class EvaluateMetrics(Artifact):
    """metrics/evaluate.json: accuracy at every level, sizes and the TFLite Micro arena."""

    framework: str = "torch"  # what trained the model: the first level is its fp32 accuracy
    # absent for model.arch tflite (no float model or variants: trained elsewhere)
    framework_fp32_accuracy: float | None = None
    tflite_fp32_accuracy: float | None = None
    tflite_int8_accuracy: float
    tflm_int8_accuracy: float
    tflite_fp32_bytes: int | None = None
    tflite_int8_bytes: int
    tflm_arena_bytes: int
    test_samples: int

    def as_metrics(self) -> dict[str, float | int]:
        """The numeric fields, kept as they are (byte counts stay whole in summaries)."""
        return {
            k: v
            for k, v in self.model_dump().items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }


class DeployStatus(Artifact):
    """metrics/deploy/<device>.json: what deploy decided for one device, and why."""

    device: str
    status: str  # promoted | kept | rejected | registered
    reason: str = ""
    runtime: str | None = None
    variant: str | None = None
    model_bytes: int | None = None
    arena_bytes: int | None = None
    accuracy: float | None = None
    latency_ms: float | None = None
    version: int | None = None
    production_version: int | None = None
    candidates: list[dict[str, Any]] = []
    # Champion and challenger on the same data: production re-scored on this test split.
    test_split_sha256: str | None = None
    champion_version: int | None = None
    champion_accuracy: float | None = None


class LoggedModelRef(Artifact):
    """Which MLflow LoggedModel holds the exported model (its id is new every export, so it is
    workspace state, not a DVC output)."""

    model_id: str
    model_sha256: str  # of models/trained/, so a stale reference is never followed


def logged_model_id() -> str | None:
    """The MLflow LoggedModel of the current models/trained/, if the export stage logged one.
    A missing, unreadable or stale reference (another model) is none: it is workspace state,
    never a reason to fail a stage."""
    try:
        ref = read(LOGGED_MODEL, LoggedModelRef, "export")
        return ref.model_id if ref.model_sha256 == trained_sha256() else None
    except (ArtifactError, OSError):
        return None


class StageStatus(Artifact):
    """.tinyops/stages/<target>.json: how one `tinyops stage` run ended, read by the run path
    instead of DVC's printed text."""

    target: str
    exit_code: int
    error: str = ""


A = TypeVar("A", bound=Artifact)


def read(path: Path, kind: type[A], producer: str) -> A:
    """Load and validate an artifact; a missing or malformed one names the stage to rerun."""
    import json

    if not path.is_file():
        raise ArtifactError(f"{path}: missing. Run `tinyops stage {producer}` (or `dvc repro`).")
    try:
        return kind.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[:3]
        raise ArtifactError(
            f"{path}: not a valid {kind.__name__} ({' '.join(first)}). "
            f"Rerun `tinyops stage {producer}`."
        ) from None


def write(path: Path, artifact: Artifact) -> None:
    """Atomically, with sorted keys: the same content gives the same bytes."""
    from pipeline.core import atomic

    atomic.write_json(path, artifact.model_dump(mode="json", exclude_none=True))
