"""Emulated boards: a device YAML with ``extra.emulator`` runs its board server on this machine under qemu.

The `rasp4-qemu` device is a Raspberry Pi 4 stand-in: Debian's ``qemu-aarch64-static`` runs an
aarch64 Python (``latbench/scripts/setup_arm_sysroot.sh``) with the aarch64 runtime bundle, so the same
cross-compiled artifacts, the same bundle and the same RPC path as on a real Pi are exercised.
Timings are emulation (about 25x slower than native and unrelated to Pi speed); such devices set
``emulated: true`` and every row they produce says so. YAML::

    extra:
      emulator:
        qemu: qemu-aarch64-static   # the user-mode emulator (binfmt is not needed)
        cpu: cortex-a72             # QEMU_CPU: limits the ISA to the board's (bad mcpu/mattr → SIGILL)
        python: auto                # aarch64 python wrapper; auto: <cache>/arm64-python/bin/python3-arm
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from latbench.artifacts import default_cache_dir
from latbench.boards.hosts import LocalHost
from latbench.devices import Device
from latbench.errors import ConfigError, DeviceError

FIELDS = ("qemu", "cpu", "python")


def sysroot_dir() -> Path:
    """Where ``latbench/scripts/setup_arm_sysroot.sh`` puts the aarch64 Python by default."""
    return default_cache_dir() / "arm64-python"


def setup_script() -> Path:
    """The script that builds it, shipped inside the package (``latbench/scripts/``)."""
    return Path(str(resources.files("latbench") / "scripts" / "setup_arm_sysroot.sh"))


def ensure_arm_python(build: bool = True, timeout: float = 900) -> Path:
    """The aarch64 Python wrapper, built with the setup script if missing (idempotent, cached)."""
    wrapper = sysroot_dir() / "bin" / "python3-arm"
    if (sysroot_dir() / ".done").exists() and wrapper.exists():
        return wrapper
    if not build:
        raise DeviceError(f"no aarch64 Python at {wrapper}; build it with {setup_script()}")
    try:
        res = subprocess.run(["bash", str(setup_script()), str(sysroot_dir())], capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DeviceError(f"{setup_script()} took more than {timeout:g} s") from None
    if res.returncode != 0 or not wrapper.exists():
        last = (res.stderr.strip().splitlines() or res.stdout.strip().splitlines() or ["no output"])[-1]
        raise DeviceError(f"cannot build the aarch64 Python for qemu ({setup_script().name}): {last}")
    return wrapper


@dataclass(frozen=True)
class Emulator:
    """How an emulated device's board runs here."""

    device: Device
    qemu: str = "qemu-aarch64-static"
    cpu: str = "cortex-a72"
    python: str = "auto"

    @property
    def workdir(self) -> Path:
        return default_cache_dir() / "boards" / self.device.name

    def python_cmd(self) -> str:
        if shutil.which(self.qemu) is None:
            raise DeviceError(f"{self.qemu} is not installed (apt-get install -y qemu-user-static); device "
                              f"{self.device.name!r} is emulated with it")
        if self.python == "auto":
            return str(ensure_arm_python())
        p = Path(self.python).expanduser()
        if not p.exists():
            raise ConfigError(f"{self.device.source}: field 'extra.emulator.python': {p} does not exist "
                              f"(use 'auto' or the wrapper made by {setup_script().name})")
        return str(p)

    def host(self) -> LocalHost:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return LocalHost(f"{self.device.name} (qemu {self.cpu})", self.python_cmd(), {"QEMU_CPU": self.cpu})


def emulator_of(device: Device) -> Emulator | None:
    """The device's emulator settings (``extra.emulator``), validated; None for real boards."""
    emu: Any = device.extra.get("emulator") if device.extra else None
    if emu is None:
        return None
    if not isinstance(emu, dict):
        raise ConfigError(f"{device.source}: field 'extra.emulator': expected a mapping ({', '.join(FIELDS)}), "
                          f"got {emu!r}")
    unknown = sorted(set(emu) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{device.source}: unknown field 'extra.emulator.{unknown[0]}'; known: {', '.join(FIELDS)}")
    for k, v in emu.items():
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{device.source}: field 'extra.emulator.{k}': expected a non-empty string, got {v!r}")
    if not device.emulated:
        raise ConfigError(f"{device.source}: field 'emulated': a device with extra.emulator must say emulated: true "
                          "(its timings are not the board's)")
    return Emulator(device, **emu)
