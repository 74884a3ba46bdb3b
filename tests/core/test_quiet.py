"""What a user cannot act on stays out of the log, and errors still show: in a fresh process,
as the CLI starts (importing torch afterwards resets its loggers' levels, which must not undo it)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import logging
from pipeline.core.quiet import quiet_third_party
quiet_third_party()
import torch  # noqa: F401
log = logging.getLogger("torch._export.non_strict_utils")
log.warning("specialized: a note no user can act on")
log.error("an error still shows")
"""


def test_torch_export_notes_are_silenced_and_errors_still_show() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True
    )
    assert "a note no user can act on" not in done.stderr
    assert "an error still shows" in done.stderr
