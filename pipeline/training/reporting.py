"""What the writing worker shows and leaves behind, whatever the framework: a progress bar and
one line per epoch, the epoch metrics the launcher forwards to MLflow, the history CSV and the
wall-time bookkeeping that lives beside (not in) the checkpoints. No torch, no TensorFlow."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from pipeline.core import atomic


class Reporter:
    """Writer output: a progress bar on a terminal, one line per epoch, and one JSON line of
    metrics per epoch that the launcher forwards to MLflow in batches (training/launcher.py), so
    a worker never imports mlflow nor waits on the tracking store."""

    def __init__(self, metrics_log: Path, epochs: int, steps: int, unit: str = "epoch") -> None:
        self.metrics_log, self.unit = metrics_log, unit
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
            TextColumn(f"[bold]train[/] {unit} " + "{task.fields[epoch]}/" + str(epochs)),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            disable=not self.console.is_terminal,
        )
        self.task = self.progress.add_task("train", total=steps, epoch=1)

    def metrics(self, epoch: int, values: dict[str, float]) -> None:
        line = json.dumps({"step": epoch, "time_ms": int(time.time() * 1000), "metrics": values})
        with self.metrics_log.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    def epoch_line(
        self, row: dict[str, float], epochs: int, improved: bool, extra: dict[str, float]
    ) -> None:
        """The console line, and the metrics line with `extra` (figures MLflow gets but the
        history CSV does not: a federated round's timings and bytes)."""
        self.console.print(
            f"{self.unit} {row['epoch']:3d}/{epochs}  train_loss {row['train_loss']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}"
            + ("  *best" if improved else "")
        )
        self.metrics(int(row["epoch"]), {k: v for k, v in row.items() if k != "epoch"} | extra)


def progress_file(timing_file: Path) -> Path:
    return timing_file.with_name("train_progress.json")


def seconds_before(timing_file: Path, epoch: int) -> float:
    """Training time spent up to the checkpoint being resumed (0 if not recorded)."""
    try:
        progress = json.loads(progress_file(timing_file).read_text())
    except (OSError, ValueError):
        return 0.0
    return float(progress["train_seconds"]) if progress.get("epoch") == epoch else 0.0


def record_seconds(timing_file: Path, epoch: int, seconds: float) -> None:
    """Wall time is kept beside, not in, the checkpoint: checkpoints are DVC outputs and must
    come out byte for byte the same on every run."""
    atomic.write_json(progress_file(timing_file), {"epoch": epoch, "train_seconds": seconds})


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    """metrics/train_history.csv, one row per epoch (DVC draws the training curve from it)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic.write_text(path, buf.getvalue())
