"""The stores a run talks to, named without their secrets: `tinyops check` lists them and whether
each answers. The environment chooses them (MLFLOW_TRACKING_URI, PREFECT_API_URL or the active
Prefect profile, DVC's own config), never params.yaml: a store's address must not rerun a stage.
"""

from __future__ import annotations

import configparser
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


@dataclass(frozen=True)
class Store:
    role: str  # "MLflow tracking", "Prefect API", "DVC remote"
    where: str  # redacted
    problem: str | None = None  # why it does not answer; None: it does, or there is none
    note: str = ""  # what "none" means, or what was checked

    def line(self) -> str:
        state = f"DOES NOT ANSWER: {self.problem}" if self.problem else self.note
        return f"{self.role:<16} {self.where}  ({state})"


def redact(uri: str) -> str:
    """The URI with its password replaced by ***: what logs and errors may show."""
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def scrub(text: str, uri: str) -> str:
    """`text` (a library's error, which may quote the URI) without the URI's password."""
    password = urlsplit(uri).password
    return text.replace(password, "***") if password else text


def dvc_remote(root: Path = Path(".")) -> tuple[str, str] | None:
    """The default DVC remote (name, URL) from .dvc/config and .dvc/config.local, or None."""
    config = configparser.ConfigParser()
    config.read([root / ".dvc" / "config", root / ".dvc" / "config.local"])
    name = config.get("core", "remote", fallback=None)
    if not name:
        return None
    return name, config.get(f"'remote \"{name}\"'", "url", fallback="(no url)")


def remote_store(dvc: str, timeout: float = 60.0) -> Store:
    """The default DVC remote, reached for real: `dvc status --cloud` lists what it holds."""
    found = dvc_remote()
    if found is None:
        return Store("DVC remote", "none", note="outputs stay in this checkout's .dvc/cache")
    name, url = found
    where = f"{name}: {redact(url)}"
    try:
        done = subprocess.run(
            [dvc, "status", "--cloud", "--json"], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return Store("DVC remote", where, f"no answer within {timeout:g} s")
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return Store("DVC remote", where, scrub(lines[-1] if lines else "dvc failed", url))
    return Store("DVC remote", where, note="answers: `dvc status --cloud` read it")
