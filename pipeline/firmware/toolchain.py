"""The host tools the firmware check needs, and what is missing (with the package to install)."""

from __future__ import annotations

import functools
import shutil
import subprocess

TOOLS = {
    "arm-none-eabi-gcc": "gcc-arm-none-eabi",
    "arm-none-eabi-g++": "gcc-arm-none-eabi",
    "arm-none-eabi-ar": "binutils-arm-none-eabi",
    "arm-none-eabi-size": "binutils-arm-none-eabi",
    "arm-none-eabi-nm": "binutils-arm-none-eabi",
    "qemu-system-arm": "qemu-system-arm",
    "cc": "gcc",  # the QEMU instruction-counting plugin is a host shared library
}
LIBRARIES = {
    "libc_nano.a": "libnewlib-arm-none-eabi",
    "libstdc++_nano.a": "libstdc++-arm-none-eabi-newlib",
}
APT_PACKAGES = sorted(set(TOOLS.values()) | set(LIBRARIES.values()))


def _has_library(name: str) -> bool:
    """arm-none-eabi-gcc -print-file-name answers the bare name when it cannot find the file."""
    found = subprocess.run(
        ["arm-none-eabi-gcc", "-mthumb", f"-print-file-name={name}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return found != name and bool(found)


def missing() -> list[str]:
    """What is missing, each with the Debian package that provides it; empty when all is here."""
    gaps = [
        f"{tool} (apt-get install {pkg})" for tool, pkg in TOOLS.items() if not shutil.which(tool)
    ]
    if shutil.which("arm-none-eabi-gcc"):
        gaps += [
            f"{lib} (apt-get install {pkg})"
            for lib, pkg in LIBRARIES.items()
            if not _has_library(lib)
        ]
    return gaps


@functools.cache
def compiler_version() -> str:
    """e.g. 'arm-none-eabi-gcc (15:12.2.rel1-1) 12.2.1 20221205': recorded in every manifest."""
    out = subprocess.run(
        ["arm-none-eabi-gcc", "--version"], capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()[0].strip()


@functools.cache
def qemu_version() -> str:
    out = subprocess.run(
        ["qemu-system-arm", "--version"], capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()[0].strip()
