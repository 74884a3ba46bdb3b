"""Per-device ingest tokens. A token is shown once, when issued; the file keeps only its sha256
(a token is 256 random bits, so a fast hash is enough: nothing to brute-force), mode 0600. A
token names one device and writes only that device's stream."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.core import atomic
from pipeline.core.catalog import FIELD_TOKENS
from pipeline.core.errors import ConfigError, FieldRefusal

PREFIX = "tfd"


@dataclass(frozen=True)
class Token:
    id: str
    device: str
    sha256: str
    revoked: bool = False


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    """The tokens file, re-read whenever it changed on disk: a token revoked from another shell
    is refused by a running server at its next request."""

    def __init__(self, path: Path = FIELD_TOKENS) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._tokens: dict[str, Token] = {}

    def tokens(self) -> dict[str, Token]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        if self._seen != (stat.st_ino, stat.st_mtime_ns):
            rows = json.loads(self.path.read_text())["tokens"]
            self._tokens = {row["id"]: Token(**row) for row in rows}
            self._seen = (stat.st_ino, stat.st_mtime_ns)
        return self._tokens

    def device_of(self, token: str) -> str:
        """The device a presented token writes for; refused (401) if unknown or revoked."""
        parts = token.split("_", 2)
        found = self.tokens().get(parts[1]) if len(parts) == 3 and parts[0] == PREFIX else None
        if found is None or not hmac.compare_digest(found.sha256, _digest(parts[2])):
            raise FieldRefusal("unknown token", http_status=401)
        if found.revoked:
            raise FieldRefusal(f"token {found.id} was revoked", http_status=401)
        return found.device

    def issue(self, device: str) -> str:
        """A new token for `device`, returned once; only its hash is kept."""
        token_id, secret = secrets.token_hex(4), secrets.token_urlsafe(32)
        with self._editing() as rows:
            rows.append(Token(token_id, device, _digest(secret)))
        return f"{PREFIX}_{token_id}_{secret}"

    def revoke(self, which: str) -> list[str]:
        """Revoke a token by id, or every token of a device; the ids revoked."""
        with self._editing() as rows:
            hit = [i for i, t in enumerate(rows) if which in (t.id, t.device) and not t.revoked]
            if not hit and not any(which in (t.id, t.device) for t in rows):
                raise ConfigError(f"no field token or device named {which!r}")
            for i in hit:
                rows[i] = Token(rows[i].id, rows[i].device, rows[i].sha256, revoked=True)
            return [rows[i].id for i in hit]

    @contextlib.contextmanager
    def _editing(self) -> Iterator[list[Token]]:
        """The rows, under an exclusive lock, written back (owner-only) if the block succeeds."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            rows = list(self.tokens().values())
            yield rows
            body = {"tokens": [t.__dict__ for t in rows]}
            atomic.write_private(self.path, json.dumps(body, indent=2, sort_keys=True) + "\n")
