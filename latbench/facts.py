"""Facts recorded with every measurement: versions and the machine (so a number can be reproduced)."""
from __future__ import annotations

import os
import platform
import socket
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("latbench", "apache-tvm", "apache-tvm-ffi", "torch", "onnxruntime", "xgboost", "numpy")


@cache
def versions() -> dict[str, str]:
    """Installed versions of the packages that shape a number (missing ones are left out)."""
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_model() -> str:
    info = _read("/proc/cpuinfo") or ""
    for line in info.splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def host_facts() -> dict[str, Any]:
    """This machine: OS, CPU, cores, memory, frequency governor, load (cheap, no subprocess)."""
    mem_kb = None
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    facts: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "mem_gb": round(mem_kb / 2**20, 1) if mem_kb else None,
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        import tvm  # noqa: F401  (only when already importable; tvm's CPU name is what targets use)

        facts["llvm_cpu"] = tvm.target.codegen.llvm_get_system_cpu()
    except Exception:  # pragma: no cover - tvm missing on a runtime-only host
        pass
    return facts
