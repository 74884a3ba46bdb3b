"""Where the TensorFlow Lite Micro source comes from: a tree made by TFLite Micro's
create_tflm_tree.py (with its third-party code), as a folder or a .tar.gz, unpacked once into
the cache. Its commit keys the library cache."""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.core import atomic

ENV_SOURCE = "TINYOPS_TFLM_SOURCE"
ENV_CACHE = "TINYOPS_CACHE"
PINNED_COMMIT = "90b983c2b3f1480642e040bbd2ddb37b998f3424"
ONLINE = (
    "online: git clone https://github.com/tensorflow/tflite-micro && git -C tflite-micro checkout "
    f"{PINNED_COMMIT} && python3 tflite-micro/tensorflow/lite/micro/tools/project_generation/"
    "create_tflm_tree.py --makefile_options='TARGET=cortex_m_generic OPTIMIZED_KERNEL_DIR=cmsis_nn "
    "TARGET_ARCH=cortex-m4' tflm-tree (it downloads the pinned third-party code), then set "
    f"tflm.source (or {ENV_SOURCE}) to tflm-tree"
)
_MARKER = Path("tensorflow/lite/micro/micro_interpreter.h")
_COMMIT = re.compile(r"commit\s+([0-9a-f]{40})", re.IGNORECASE)


class SourceUnavailable(Exception):
    """No usable TFLite Micro tree: the reason says what is missing and how to get it."""


@dataclass(frozen=True)
class TflmSource:
    tree: Path
    commit: str
    """The TFLite Micro commit, from the tree's README; else 'tree-' + a hash of the tree."""


def cache_root(configured: str | None = None) -> Path:
    """tflm.cache_dir, else $TINYOPS_CACHE, else $XDG_CACHE_HOME/tinyops, else ~/.cache/tinyops."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "tinyops"


def configured_path(param: str | None) -> Path | None:
    """tflm.source from params, else the environment; relative paths are from the project root."""
    value = param or os.environ.get(ENV_SOURCE)
    return Path(value).expanduser() if value else None


def _find_tree(root: Path) -> Path | None:
    for marker in sorted(root.rglob(str(_MARKER)), key=lambda p: len(p.parts)):
        return marker.parents[len(_MARKER.parts) - 1]
    return None


def _commit(tree: Path) -> str:
    for readme in (tree / "README.md", tree.parent / "README.md"):
        if readme.is_file() and (m := _COMMIT.search(readme.read_text(errors="replace"))):
            return m.group(1)
    digest = hashlib.sha256()
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(tree)).encode() + b"\0" + path.read_bytes())
    return "tree-" + digest.hexdigest()[:16]


def _unpack(archive: Path, cache: Path) -> Path:
    """The archive unpacked under the cache, once per archive content."""
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
    target = cache / "tflm-src" / digest
    if not target.is_dir():
        with atomic.atomic_dir(target) as staged, tarfile.open(archive) as tar:
            tar.extractall(staged, filter="data")
    return target


def resolve(param: str | None, cache: Path) -> TflmSource:
    path = configured_path(param)
    if path is None:
        raise SourceUnavailable(
            f"no TensorFlow Lite Micro source: set tflm.source or {ENV_SOURCE}; {ONLINE}"
        )
    if not path.exists():
        where = "" if path.is_absolute() else f" (from {Path.cwd()})"
        raise SourceUnavailable(
            f"TensorFlow Lite Micro source {path}{where} does not exist; {ONLINE}"
        )
    try:
        root = _unpack(path, cache) if path.is_file() else path
    except (tarfile.TarError, OSError) as exc:
        raise SourceUnavailable(
            f"TensorFlow Lite Micro source {path} could not be unpacked into {cache} ({exc}); "
            "tflm.source takes a folder or a .tar.gz"
        ) from None
    tree = _find_tree(root)
    if tree is None:
        raise SourceUnavailable(f"{path} holds no TFLite Micro tree (no {_MARKER}); {ONLINE}")
    return TflmSource(tree.resolve(), _commit(tree))
