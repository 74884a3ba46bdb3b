"""What a run came from: git commit, content hashes. Recorded with every run, never inside artifacts."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_commit(cwd: Path | str = ".") -> str:
    """HEAD's commit, suffixed '-dirty' when tracked files differ; 'unknown' outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


CODE = ("pipeline", "flows", "user_models")  # every .py under these, plus dvc.yaml
# user_models/ also holds models trained elsewhere (model.arch tflite): code and data alike.
MODEL_SUFFIXES = (".tflite",)


def code_sha256(root: Path | str = ".") -> str:
    """The pipeline's code as it would run here: every .py (and user .tflite) under CODE, and
    dvc.yaml. The freshness check and the nodes of a multi-node job compare it."""
    base = Path(root)
    code = hashlib.sha256()
    for folder in CODE:
        found = [p for p in (base / folder).rglob("*") if p.suffix in (".py", *MODEL_SUFFIXES)]
        for path in sorted(p for p in found if p.is_file()):
            rel = path.relative_to(base).as_posix()
            code.update(f"{rel}\0{sha256_file(path)}\n".encode())
    if (base / "dvc.yaml").is_file():
        code.update(f"dvc.yaml\0{sha256_file(base / 'dvc.yaml')}\n".encode())
    return code.hexdigest()


def json_sha256(obj: object) -> str:
    """A JSON-able value's hash, keys sorted (validated params: `model_dump(mode="json")`)."""
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
