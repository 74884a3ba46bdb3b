"""One exception type per failure family; the CLI turns each into a clear message and exit code."""

from __future__ import annotations


class TinyopsError(Exception):
    """Base of every error the pipeline raises on purpose (bad input, failed check)."""

    exit_code = 1


class ConfigError(TinyopsError):
    """params.yaml (or a value given on the command line) is missing, malformed or out of range."""

    exit_code = 2


class DataValidationError(TinyopsError):
    """The dataset cannot be used: wrong shapes, bad labels, NaN/inf, too few samples, unreadable files."""

    exit_code = 3


class TrainingError(TinyopsError):
    """Distributed training failed or cannot start (world size, workers, checkpoints)."""

    exit_code = 4


class ExportError(TinyopsError):
    """Conversion to .tflite failed or produced something unusable."""

    exit_code = 5


class QuantizationCheckError(TinyopsError):
    """A model that should be full-integer int8 is not (float tensors, float I/O, dynamic range)."""

    exit_code = 6


class ArtifactError(TinyopsError):
    """An input artifact from an earlier stage is missing or unreadable: rerun that stage."""

    exit_code = 7


class PipelineError(TinyopsError):
    """A stage failed inside `dvc repro`; its own message is printed above."""

    exit_code = 8
