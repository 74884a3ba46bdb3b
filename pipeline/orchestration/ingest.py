"""New raw data: whatever lands in data/raw is versioned with `dvc add` before a run uses it.

Each top-level entry of data/raw (a file, or a folder such as an image-folder dataset) becomes its
own DVC-tracked output (`<entry>.dvc`, content in the DVC cache), so every model can be traced to
the exact bytes it was trained on and any earlier version restored with `dvc checkout`. Commit
the `.dvc` files (and data/raw/.gitignore) with git. prepare depends on data/raw as a whole, so
a new or changed entry reruns it; unchanged data leaves the stage alone.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from pipeline.core.catalog import FIELD_DIR, RAW_DIR
from pipeline.core.errors import DataValidationError
from pipeline.orchestration.dvc import tool
from pipeline.orchestration.freshness import NOT_DATA_NAMES

SKIP = {"README.md", ".gitkeep", *NOT_DATA_NAMES}


def _entries(raw: Path) -> list[Path]:
    return [
        p
        for p in sorted(raw.iterdir())
        if p.name not in SKIP and not p.name.endswith(".dvc") and not p.name.startswith(".")
    ]


def _dvc(args: list[str], env: dict[str, str] | None) -> str:
    proc = subprocess.run([tool("dvc"), *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DataValidationError(
            f"`dvc {' '.join(args)}` failed while versioning new raw data in {RAW_DIR}/:\n"
            f"{(proc.stderr or proc.stdout).strip()}\nFix or remove the entry and run again."
        )
    return proc.stdout


def pending_raw(env: dict[str, str] | None = None) -> list[str]:
    """The entries of data/raw that are new or changed since their last `dvc add`."""
    if not RAW_DIR.is_dir():
        return []
    entries = _entries(RAW_DIR)
    todo = [p for p in entries if not Path(f"{p}.dvc").is_file()]
    tracked = [f"{p}.dvc" for p in entries if p not in todo]
    if tracked:
        status = json.loads(_dvc(["status", "--json", *tracked], env) or "{}")
        todo += [p for p in entries if f"{p}.dvc" in status]
    return sorted(str(p) for p in todo)


def ingest_raw(
    env: dict[str, str] | None = None, on_line: Callable[[str], None] = print
) -> list[str]:
    """`dvc add` each entry of data/raw that is new or changed; returns what was added."""
    names = pending_raw(env)
    if not names:
        return []
    on_line(f"new raw data, versioning with dvc add: {', '.join(names)}")
    _dvc(["add", "--quiet", *names], env)
    return names


def version_field(env: dict[str, str] | None = None) -> bool:
    """`dvc add data/field`: the field data a monitor judges, versioned as raw data is (its
    lock and half-written batches are in .dvcignore). False outside a DVC project or without
    field data."""
    if not FIELD_DIR.is_dir() or not Path(".dvc").is_dir():
        return False
    _dvc(["add", "--quiet", str(FIELD_DIR)], env)
    return True
