"""One exception type per failure family, and the contract every caller derives from it: the
exit code the CLI returns, and whether a retry could help. The flow's retry rule and the
exit-code table (`exit_codes`) read these classes; nothing else lists codes by hand."""

from __future__ import annotations


class TinyopsError(Exception):
    """Base of every error the pipeline raises on purpose (bad input, failed check)."""

    exit_code = 1
    retryable = True  # unknown failures may be transient; the families below say otherwise


class ConfigError(TinyopsError):
    """params.yaml (or a value given on the command line) is missing, malformed or out of range."""

    exit_code = 2
    retryable = False


class DataValidationError(TinyopsError):
    """The dataset cannot be used: wrong shapes, bad labels, NaN/inf, too few samples, unreadable files."""

    exit_code = 3
    retryable = False


class TrainingError(TinyopsError):
    """Distributed training failed or cannot start (world size, workers, checkpoints)."""

    exit_code = 4


class ExportError(TinyopsError):
    """Conversion to .tflite failed or produced something unusable."""

    exit_code = 5


class QuantizationCheckError(TinyopsError):
    """A model that should be full-integer int8 is not (float tensors, float I/O, dynamic range)."""

    exit_code = 6
    retryable = False


class ArtifactError(TinyopsError):
    """An input artifact from an earlier stage is missing or unreadable: rerun that stage."""

    exit_code = 7


class PipelineError(TinyopsError):
    """A stage failed inside `dvc repro`; its own message is printed above."""

    exit_code = 8


class RegistryError(TinyopsError):
    """Nothing to promote or roll back to, or the registry disagrees with the bundle."""

    exit_code = 9
    retryable = False


class DeviceBudgetError(TinyopsError):
    """No variant fits a device and deploy.require_all is set."""

    exit_code = 10
    retryable = False


class PipelineBusyError(TinyopsError):
    """Another pipeline run holds this workspace."""

    exit_code = 11
    retryable = False


class DvcRefusal(PipelineError):
    """DVC refused to run a stage before the stage's own command started: a params key that
    dvc.yaml tracks is missing, a dependency is missing, dvc.yaml is malformed. A rerun
    meets the same refusal."""

    exit_code = 12
    retryable = False


class ServiceError(TinyopsError):
    """A server or worker tinyops started did not become healthy in time, or exited; the tail of
    its log says why (pipeline/core/procs.py). It may be transient: a port taken meanwhile."""

    exit_code = 13


def _families(cls: type[TinyopsError] = TinyopsError) -> list[type[TinyopsError]]:
    return [cls] + [sub for c in cls.__subclasses__() for sub in _families(c)]


def exit_codes() -> dict[int, type[TinyopsError]]:
    """Each exit code and the error family it means (the README's and the docs' table)."""
    return {cls.exit_code: cls for cls in _families() if cls.__module__ == __name__}


def retryable(exit_code: int) -> bool:
    """Whether a stage that exited with this code may be retried: only the codes whose family
    says so, and any code tinyops does not own (a crash, a signal), which may be transient."""
    family = exit_codes().get(exit_code)
    return family.retryable if family else True
