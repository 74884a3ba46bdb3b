"""SIGTERM as an exception, so every `finally` runs: temporary files go, MLflow runs end KILLED.

Schedulers and `docker stop` end work with SIGTERM, whose default is to die on the spot, skipping
all cleanup. With `install()` it unwinds like Ctrl-C instead; `deferred()` holds both signals
over steps that must happen together (move the production alias and swap the bundle).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM: every `except KeyboardInterrupt` treats it as an interruption; exit code 143."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


received: int | None = None  # the signal seen, even if a library re-raises it as another type


def _raise(signum: int, frame: FrameType | None) -> None:
    global received
    received = signum
    raise Terminated(signum)


def check() -> None:
    """Raise if a stop signal arrived, even one whose exception a library swallowed: called
    before anything is committed (an atomic rename, an alias move)."""
    if received is not None:
        raise Terminated(received) if received == signal.SIGTERM else KeyboardInterrupt


def install() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGTERM and SIGINT until the block is done, then act on the first one received."""
    check()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    old = {s: signal.signal(s, hold) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if pending:
        global received
        received = pending[0]
        raise Terminated(pending[0]) if pending[0] == signal.SIGTERM else KeyboardInterrupt


def import_modules(*names: str) -> None:
    """Import native-heavy libraries with signals held. A SIGTERM raised in the middle of a C
    extension's initialisation (jaxlib's MLIR, TensorFlow) can leave it half-built, and the
    process then aborts (SIGABRT) instead of ending with 143; held, it acts right after."""
    import importlib

    with deferred():
        for name in names:
            importlib.import_module(name)
