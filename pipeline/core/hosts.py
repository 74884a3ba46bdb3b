"""Two network hosts on one machine: Linux network namespaces joined by a veth pair, each with
its own address and interface, for the multi-node tests and `tinyops bench --only nodes`.

Needs root and iproute2's `ip`; `available()` says why not otherwise (callers fall back to two
agents on 127.0.0.1 and say so). The namespaces and the link are deleted on every path: leaving
the `with` block, an exception, or this interpreter exiting. Only addresses made here are used:
10.213.<n>.1 and .2, where n comes from this process's id.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from types import TracebackType


@dataclass(frozen=True)
class Host:
    """One namespace: its name, its address and the interface that carries it."""

    netns: str
    address: str
    iface: str

    def prefix(self) -> list[str]:
        """Prepend to a command to run it on this host."""
        return ["ip", "netns", "exec", self.netns]


def available() -> str:
    """Empty when namespaces can be made here; else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's `ip`"
    return ""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class TwoHosts:
    """`with TwoHosts() as (a, b):` two namespaces on one veth link."""

    def __init__(self) -> None:
        tag = os.getpid() % 250 + 1
        self.names = (f"tinyops{tag}a", f"tinyops{tag}b")
        self.hosts = (
            Host(self.names[0], f"10.213.{tag}.1", f"veth{tag}a"),
            Host(self.names[1], f"10.213.{tag}.2", f"veth{tag}b"),
        )

    def __enter__(self) -> tuple[Host, Host]:
        why = available()
        if why:
            raise OSError(why)
        self.delete()  # a namespace left by a killed earlier run with this pid
        atexit.register(self.delete)
        try:
            for host in self.hosts:
                _ip("netns", "add", host.netns)
            a, b = self.hosts
            _ip("link", "add", a.iface, "type", "veth", "peer", "name", b.iface)
            for host in self.hosts:
                _ip("link", "set", host.iface, "netns", host.netns)
                _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", host.iface)
                _ip("-n", host.netns, "link", "set", host.iface, "up")
                _ip("-n", host.netns, "link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise
        return self.hosts

    def delete(self) -> None:
        """Deleting a namespace deletes its end of the veth pair, and so the pair."""
        for name in self.names:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "delete", name)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.delete()
        atexit.unregister(self.delete)
