"""train.parallelism against single-process training, on the real worker under torchrun.

Single-process training with train.microbatches m sums the gradients of m microbatches and
divides by m, as a pipeline schedule does; with the same seed, global batch and data order:
- pipeline (GPipe, 1F1B, interleaved 1F1B) is bit for bit that: same model.pt bytes, same curve;
- fsdp and hybrid replicate the data dimension: each replica averages its BatchNorm statistics
  once per epoch instead of updating them in sequence, and draws dropout from its own copy of
  the seed, so they run with dropout 0 and are compared on the trainable weights (within 2e-3
  after one epoch: AdamW's first steps turn a rounding difference in a near-zero gradient into
  up to ±lr) and the training loss (within 1e-6).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, run_cmd

pytestmark = pytest.mark.slow

DEEP = [16, 32, 64, 64]  # 4 blocks: room for interleaved 1F1B's 2 stages per worker


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/processed of the bundled digits, prepared once."""
    ws = tmp_path_factory.mktemp("digits")
    shutil.copy2(REPO / "params.yaml", ws / "params.yaml")
    run_cmd(["tinyops", "stage", "prepare"], ws)
    return ws / "data/processed"


def train(
    digits: Path, ws: Path, train: dict, model: dict | None = None, check: bool = True
) -> tuple[Path, str]:
    """Train in a fresh workspace over the prepared digits with the exact torchrun command
    `tinyops stage train` launches (without its MLflow run, which costs seconds per test):
    (workspace, output)."""
    from pipeline.core.config import load_params
    from pipeline.training.launcher import torchrun_command, worker_env

    ws.mkdir(parents=True)
    shutil.copytree(digits, ws / "data/processed")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update({"epochs": 1, "backend": "gloo", **train})
    params["model"].update(model or {})
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    parsed = load_params(ws / "params.yaml")
    (ws / ".tinyops").mkdir()
    env = worker_env(parsed) | {"PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        torchrun_command(parsed, Path("params.yaml"), "gloo"), cwd=ws, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
    assert proc.returncode == 0 or not check, out[-4000:]
    return ws, out


def stage_train(digits: Path, ws: Path, train: dict, model: dict) -> tuple[Path, str]:
    """`tinyops stage train` itself (the launcher's checks, then torchrun)."""
    ws.mkdir(parents=True)
    shutil.copytree(digits, ws / "data/processed")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update({"epochs": 1, "backend": "gloo", **train})
    params["model"].update(model)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{digits.parent}/mlflow.db"}
    proc = run_cmd(["tinyops", "stage", "train"], ws, check=False, env=store)
    return ws, f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}"


_REFERENCES: dict[str, Path] = {}


def reference(digits: Path, microbatches: int, model: dict | None) -> Path:
    """Single-process training with `microbatches`, trained once per module for each setting."""
    key = json.dumps([microbatches, model], sort_keys=True)
    if key not in _REFERENCES:
        ws = digits.parent / f"ref-{len(_REFERENCES)}"
        _REFERENCES[key] = train(
            digits, ws, {"nproc_per_node": 1, "microbatches": microbatches}, model
        )[0]
    return _REFERENCES[key]


def _weights(ws: Path) -> dict[str, torch.Tensor]:
    blob = torch.load(ws / "models/trained/model.pt", weights_only=True)
    return blob["state_dict"]


def _curve(ws: Path) -> list[dict[str, str]]:
    """The training curve; the world size it was trained at aside (the references train alone)."""
    lines = (ws / "metrics/train_history.csv").read_text().splitlines()
    head = lines[0].split(",")
    rows = [dict(zip(head, line.split(","), strict=True)) for line in lines[1:]]
    return [{k: v for k, v in row.items() if k != "world_size"} for row in rows]


@pytest.mark.parametrize(
    ("schedule", "stages", "channels"),
    [("1f1b", 2, None), ("gpipe", 2, None), ("interleaved_1f1b", 4, DEEP)],
)
def test_pipeline_is_single_process_training_bit_for_bit(
    digits: Path, tmp_path: Path, schedule: str, stages: int, channels: list[int] | None
) -> None:
    model = {"channels": channels} if channels else None
    ref = reference(digits, 4, model)
    pp, out = train(
        digits,
        tmp_path / "pp",
        {"nproc_per_node": 2, "parallelism": "pipeline", "schedule": schedule,
         "pipeline_stages": stages, "microbatches": 4},
        model,
    )  # fmt: skip
    assert f"pipeline pp2 {schedule} m4 ({stages} stages)" in out
    assert (pp / "models/trained/model.pt").read_bytes() == (
        ref / "models/trained/model.pt"
    ).read_bytes()
    assert _curve(pp) == _curve(ref)
    summary = json.loads((pp / "metrics/train.json").read_text())
    assert summary["mesh_pp"] == 2 and summary["schedule"] == schedule
    # each worker holds only its stages: together exactly the whole model's state
    whole = json.loads((ref / "metrics/train.json").read_text())["model_state_bytes_rank0"]
    assert summary["model_state_bytes_rank0"] + summary["model_state_bytes_rank1"] == whole
    ckpt = sorted((pp / "models/checkpoints").glob("epoch-*"))[-1]
    assert ckpt.is_dir() and (ckpt / ".metadata").is_file()  # torch.distributed.checkpoint shards


@pytest.mark.parametrize(
    ("train_params", "ref_microbatches"),
    [
        ({"parallelism": "fsdp", "nproc_per_node": 2, "microbatches": 1}, 2),
        (
            {
                "parallelism": "hybrid",
                "nproc_per_node": 4,
                "microbatches": 2,
                "oversubscribe": True,
            },
            4,
        ),
    ],
    ids=["fsdp-2", "hybrid-dp2xpp2-oversubscribed"],
)
def test_replicated_strategies_match_single_process_training(
    digits: Path, tmp_path: Path, train_params: dict, ref_microbatches: int
) -> None:
    no_dropout = {"dropout": 0.0}
    ref = reference(digits, ref_microbatches, no_dropout)
    other, _ = train(digits, tmp_path / "other", train_params, no_dropout)
    a, b = _weights(other), _weights(ref)
    assert list(a) == list(b)
    trainable = [k for k in a if not k.endswith(("running_mean", "running_var", "tracked"))]
    worst = max((a[k] - b[k]).abs().max().item() for k in trainable)
    assert worst < 2e-3, worst
    (x,), (y,) = _curve(other), _curve(ref)
    assert abs(float(x["train_loss"]) - float(y["train_loss"])) < 1e-6
    assert float(x["val_accuracy"]) > 0.9


def test_a_memory_budget_refuses_data_parallelism_and_pipeline_trains(
    digits: Path, tmp_path: Path
) -> None:
    """167,402 parameters cost 2.55 MiB of model state (weights, gradients, AdamW's moments) on
    every data-parallel worker; cut in two pipeline stages the heavier worker holds 1.42 MiB.
    A 2 MiB budget separates them."""
    model = {"channels": [32, 64, 128, 64]}
    budget = {"max_worker_memory_mb": 2.0, "nproc_per_node": 2}
    ws, out = stage_train(digits, tmp_path / "data", budget, model)
    assert out.startswith("exit 2\n"), out  # a configuration error
    assert "train.parallelism data needs 2.55 MiB of model state on one worker" in out, out
    assert "fsdp (1.85 MiB) or pipeline (1.42 MiB) would fit" in out
    assert "torchrun" not in out, "refused before any worker starts"
    assert not (ws / "models/trained/model.pt").exists()
    ws, out = stage_train(digits, tmp_path / "pipe", {**budget, "parallelism": "pipeline"}, model)
    assert out.startswith("exit 0\n"), out[-4000:]
    held = json.loads((ws / "metrics/train.json").read_text())["model_state_bytes_max_rank"]
    assert held <= 2.0 * 2**20, held  # measured in the workers, not estimated
    assert (ws / "models/trained/model.pt").is_file()
