"""Cortex-M cores the firmware check builds for: compiler flags, and the QEMU machine model that
runs them (with that machine's memory map, which the test firmware is linked into)."""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class Machine:
    name: str
    """qemu-system-arm -M: a board with this core (or one that runs its instruction set)."""
    flash: tuple[int, int]
    """(origin, bytes) of the machine's code memory."""
    ram: tuple[int, int]


@dataclass(frozen=True)
class Core:
    name: str
    flags: tuple[str, ...]
    """arm-none-eabi-gcc's CPU and floating-point ABI options."""
    machines: tuple[Machine, ...]
    """Where the test firmware runs: the first whose memory holds it."""

    @property
    def machine(self) -> str:
        return self.machines[0].name


_SOFT = "-mfloat-abi=soft"


def _mps2_machine(name: str) -> Machine:
    """Arm MPS2 FPGA images: 4 MiB of code SSRAM at 0, 4 MiB of data SSRAM at 0x20000000."""
    return Machine(name, (0x0, 4 * MIB), (0x20000000, 4 * MIB))


# BBC micro:bit (nRF51, Cortex-M0): 256 KiB flash, 16 KiB RAM. A program it cannot hold runs on
# the Cortex-M3 image instead: ARMv7-M executes ARMv6-M code as it is, instruction for instruction.
_V6M = (Machine("microbit", (0x0, 256 * KIB), (0x20000000, 16 * KIB)), _mps2_machine("mps2-an385"))


def _microbit(name: str, *flags: str) -> Core:
    return Core(name, flags, _V6M)


def _mps2(name: str, machine: str, *flags: str) -> Core:
    return Core(name, flags, (_mps2_machine(machine),))


CORES: dict[str, Core] = {
    c.name: c
    for c in (
        _microbit("cortex-m0", "-mcpu=cortex-m0", _SOFT),
        _microbit("cortex-m0plus", "-mcpu=cortex-m0plus", _SOFT),
        _mps2("cortex-m3", "mps2-an385", "-mcpu=cortex-m3", _SOFT),
        _mps2("cortex-m4", "mps2-an386", "-mcpu=cortex-m4", _SOFT),
        _mps2(
            "cortex-m4+fp", "mps2-an386", "-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"
        ),
        _mps2("cortex-m7", "mps2-an500", "-mcpu=cortex-m7", _SOFT),
        # Single-precision FPU, as on the STM32F7 (TFLite Micro's cortex-m7+fp assumes double).
        _mps2(
            "cortex-m7+fp", "mps2-an500", "-mcpu=cortex-m7", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard"
        ),
    )
}

NO_TOOLCHAIN = {
    "xtensa-lx7": "Xtensa has no toolchain or emulator here (ESP-IDF's xtensa-esp32s3-elf-gcc and "
    "Espressif's QEMU fork are not in Debian)",
    "riscv32": "no RISC-V embedded toolchain and TFLite Micro build are set up here",
}
"""Cores a profile may name that the firmware check cannot build: they keep the estimates."""

CPUS = (*CORES, *NO_TOOLCHAIN)
