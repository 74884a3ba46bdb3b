"""Where field batches land: data/field/<device>/<seq>-<batch id>.npz, one file per batch, in
arrival order. A batch is written to a temporary file, fsynced, then linked into place under its
final name, which never replaces a file: a reader sees whole batches or none, and two ingests
(threads or processes) never interleave one. A per-device lock orders them and keeps batch ids
unique (a replayed batch is refused); `ledger.txt` lists the ids so that the check stays cheap as
the folder grows."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core import atomic, catalog
from pipeline.core.catalog import DEPLOY_ROOT, FIELD_DIR, Manifest
from pipeline.core.errors import ArtifactError, FieldRefusal
from pipeline.field.batch import Checked, check, parse

LEDGER = "ledger.txt"  # in a device's folder: "<seq> <batch id>" per stored batch
MAX_SAMPLES = 256


@dataclass(frozen=True)
class Stored:
    path: Path
    seq: int
    samples: int


class _Ledger:
    """The batch ids already stored for one device, read incrementally from its ledger."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.ids, self.next_seq, self._offset = folder, set[str](), 1, 0
        self._checked = False

    def refresh(self) -> None:
        """New ledger lines; the first time, the files too (a process that died between its
        batch and its line leaves a file the ledger does not name: its id and seq count)."""
        with contextlib.suppress(FileNotFoundError), open(self.folder / LEDGER, "rb") as fh:
            fh.seek(self._offset)
            for line in fh.read().decode().splitlines():
                self._note(*line.split(" ", 1))
            self._offset = fh.tell()
        if not self._checked:
            self.rebuild()
            self._checked = True

    def rebuild(self) -> None:
        """From the files themselves: after a crash between a batch and its ledger line."""
        for path in sorted(self.folder.glob("*.npz")):
            seq, batch_id = path.stem.split("-", 1)
            if batch_id not in self.ids:
                self.append(int(seq), batch_id)
            self.next_seq = max(self.next_seq, int(seq) + 1)

    def append(self, seq: int, batch_id: str) -> None:
        with open(self.folder / LEDGER, "ab") as fh:
            fh.write(f"{seq} {batch_id}\n".encode())
            fh.flush()
            os.fsync(fh.fileno())
            self._offset = fh.tell()
        self._note(str(seq), batch_id)

    def _note(self, seq: str, batch_id: str) -> None:
        self.ids.add(batch_id)
        self.next_seq = max(self.next_seq, int(seq) + 1)


class FieldStore:
    """Checks batches against each device's deployed bundle and stores them. Safe to share
    between threads (the HTTP server's) and between processes (a lock file per device)."""

    def __init__(
        self,
        root: Path = FIELD_DIR,
        deploy_root: Path = DEPLOY_ROOT,
        max_samples: int = MAX_SAMPLES,
    ) -> None:
        self.root, self.deploy_root, self.max_samples = root, deploy_root, max_samples
        self._ledgers: dict[str, _Ledger] = {}
        self._guard = threading.Lock()
        self._device_locks: dict[str, threading.Lock] = {}

    def ingest(self, body: object, token_device: str | None = None) -> Stored:
        """Validate one batch (a parsed JSON object) and store it; `token_device` is the device
        the caller's token writes for (None: a local operator, who may write any stream)."""
        batch = parse(body)
        if token_device is not None and batch.device != token_device:
            raise FieldRefusal(
                f"this token writes for {token_device!r}, not {batch.device!r}", http_status=403
            )
        checked = check(batch, self.manifest(batch.device), self.max_samples)
        return self._store(checked)

    def manifest(self, device: str) -> Manifest:
        path = self.deploy_root / device / "manifest.json"
        if not path.is_file():
            raise FieldRefusal(f"no bundle is deployed for {device!r} ({path})", http_status=404)
        try:
            return catalog.read(path, Manifest, f"deploy --device {device}")
        except ArtifactError as exc:
            raise FieldRefusal(str(exc), http_status=409) from None

    def _store(self, checked: Checked) -> Stored:
        batch = checked.batch
        with self._locked(batch.device) as ledger:
            if batch.batch_id in ledger.ids:
                raise FieldRefusal(f"batch {batch.batch_id!r} was stored already", http_status=409)
            path = _write_new(ledger, checked)
        return Stored(path, int(path.name.split("-", 1)[0]), len(batch.samples))

    @contextlib.contextmanager
    def _locked(self, device: str) -> Iterator[_Ledger]:
        with self._guard:
            lock = self._device_locks.setdefault(device, threading.Lock())
            ledger = self._ledgers.setdefault(device, _Ledger(self.root / device))
        with lock:
            ledger.folder.mkdir(parents=True, exist_ok=True)
            with open(ledger.folder / ".lock", "w") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                ledger.refresh()
                yield ledger


def _write_new(ledger: _Ledger, checked: Checked) -> Path:
    """The batch under the next free name, linked into place (never over a file), then noted."""
    fd, tmp_name = tempfile.mkstemp(prefix=".batch.", suffix=".tmp", dir=ledger.folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh, samples=checked.samples, outputs=checked.outputs, labels=checked.labels,
                model_sha256=np.asarray(checked.batch.model_sha256),
            )  # fmt: skip
            fh.flush()
            os.fsync(fh.fileno())
        while True:
            path = ledger.folder / f"{ledger.next_seq:08d}-{checked.batch.batch_id}.npz"
            try:
                os.link(tmp, path)
                break
            except FileExistsError:  # a batch whose ledger line was lost: catch up, retry
                ledger.rebuild()
                if checked.batch.batch_id in ledger.ids:
                    raise FieldRefusal("batch was stored already", http_status=409) from None
        atomic.fsync_dir(ledger.folder)
        ledger.append(ledger.next_seq, checked.batch.batch_id)
        return path
    finally:
        tmp.unlink(missing_ok=True)


def stream(
    device: str, root: Path = FIELD_DIR, model_sha256: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A device's stored samples, outputs and labels, every batch in arrival order (None: no
    batch yet), only those the model `model_sha256` saw when given. Only whole files are named
    `<seq>-<id>.npz`, so a batch being written is skipped."""
    files = sorted((root / device).glob("*.npz"))
    batches = [read(path) for path in files]
    if model_sha256 is not None:
        batches = [b for b in batches if str(b["model_sha256"]) == model_sha256]
    if not batches:
        return None
    return tuple(np.concatenate([b[k] for b in batches]) for k in ("samples", "outputs", "labels"))  # type: ignore[return-value]


def read(path: Path) -> dict[str, np.ndarray]:
    """A stored batch's arrays."""
    with np.load(path) as data:
        return {name: data[name] for name in data.files}
