"""Is there anything new to train on? A scheduled run asks before doing any work.

A run is "nothing new" when the raw data's content, the validated params and the pipeline code
hash the same as at the last successful run, and DVC agrees that every stage is up to date (so a
deleted or edited output is never skipped over). The record lives in the workspace, not in git.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.core import atomic
from pipeline.core.catalog import LAST_SUCCESS as RECORD
from pipeline.core.catalog import RAW_DIR
from pipeline.core.config import Params
from pipeline.core.provenance import code_sha256, json_sha256, sha256_file

# Written by `dvc add` beside the data: they follow the data, so they are not data themselves.
NOT_DATA_SUFFIXES = (".dvc",)
NOT_DATA_NAMES = {".gitignore"}


@dataclass(frozen=True)
class Fingerprint:
    data: str
    params: str
    code: str


def _hash_tree(root: Path, digest: hashlib._Hash, skip_meta: bool = True) -> None:
    """Feed every file's relative path and content hash; symlinked folders are not followed."""
    if root.is_file():
        digest.update(f"{root.name}\0{sha256_file(root)}\n".encode())
        return
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if skip_meta and (name in NOT_DATA_NAMES or name.endswith(NOT_DATA_SUFFIXES)):
                continue
            path = Path(folder, name)
            if path.is_file():
                rel = path.relative_to(root).as_posix()
                digest.update(f"{rel}\0{sha256_file(path)}\n".encode())


def fingerprint(params: Params) -> Fingerprint:
    """Content hashes of the raw data (data/raw and prepare.path), params and code."""
    data = hashlib.sha256()
    if RAW_DIR.exists():
        _hash_tree(RAW_DIR, data)
    source = Path(params.prepare.path) if params.prepare.path else None
    if source and source.exists() and not source.resolve().is_relative_to(RAW_DIR.resolve()):
        _hash_tree(source, data)
    params_hash = json_sha256(params.model_dump(mode="json"))
    return Fingerprint(data.hexdigest(), params_hash, code_sha256())


def last_success() -> dict[str, Any] | None:
    try:
        return json.loads(RECORD.read_text())
    except (OSError, ValueError):
        return None


def record_success(fp: Fingerprint, **ids: str) -> None:
    atomic.write_json(RECORD, {**asdict(fp), **ids})


def unchanged(fp: Fingerprint) -> dict[str, Any] | None:
    """The last success record when data, params and code all hash as they did then."""
    last = last_success()
    if last and all(last.get(k) == v for k, v in asdict(fp).items()):
        return last
    return None


def changes(fp: Fingerprint) -> list[str]:
    """What differs from the last successful run, in words (for the log)."""
    last = last_success()
    if last is None:
        return ["no successful run recorded in this workspace"]
    return [f"{k} changed" for k, v in asdict(fp).items() if last.get(k) != v]


def tags(fp: Fingerprint) -> dict[str, str]:
    """The fingerprint as MLflow tags on the parent run."""
    return {
        "tinyops.raw_data_sha256": fp.data,
        "tinyops.params_sha256": fp.params,
        "tinyops.code_sha256": fp.code,
    }
