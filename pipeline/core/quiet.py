"""What third-party libraries print that a user cannot act on, silenced once per process at
start-up (cli.main), never at import: torchao's optional CUDA kernels failing to load on a CPU
wheel, torch's pytree deprecation note, TensorFlow's start-up INFO lines, MLflow's artifact
progress bars inside deploy and its ambiguous-dataset-source warning. Errors still show."""

from __future__ import annotations

import logging
import os
import warnings

QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's INFO/WARNING lines (oneDNN, absl start-up)
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
# torch.export's note that the batch dimension was specialised to the example's (export fixes
# batch 1 on purpose: that is the model firmware runs)
QUIET_LOGGERS = ("torchao", "torch.utils._pytree", "torch._export.non_strict_utils")
QUIET_WARNINGS = ("The specified dataset source can be interpreted in multiple ways",)
# Lines TensorFlow's C++ runtime prints while it loads, before TF_CPP_MIN_LOG_LEVEL is read:
# the run path leaves them out of the log it shows (pipeline/orchestration/dvc.py). Turning
# oneDNN off instead (TF_ENABLE_ONEDNN_OPTS=0) would change the numerics of the export.
NOISE_LINES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on.",
    "Created TensorFlow Lite XNNPACK delegate for CPU.",  # LiteRT's C++ runtime, every interpreter
)


def is_noise(line: str) -> bool:
    return any(text in line for text in NOISE_LINES)


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def quiet_third_party() -> None:
    """Silence the noise above for this process and the processes it starts (environment);
    a variable the user set keeps the user's value."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in QUIET_LOGGERS:  # a filter too: importing torch resets its loggers' levels
        logging.getLogger(name).setLevel(logging.ERROR)
        logging.getLogger(name).addFilter(_errors_only)
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
