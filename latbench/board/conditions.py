"""What the machine is doing right now: load, CPU frequency, governor, temperature, throttling.

Read once per round of a campaign, on the machine that times (this host, or a board through its
RPC server's ``latbench.conditions`` function), so a number can be judged by the conditions it
was taken in. Standard library only: this file is shipped in the board bundle.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from typing import Any

#: The name boards' RPC servers register :func:`read_json` under.
RPC_FUNCTION = "latbench.conditions"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _ints(paths: list[str]) -> list[int]:
    out = []
    for p in paths:
        v = _read(p)
        if v is not None and v.lstrip("-").isdigit():
            out.append(int(v))
    return out


def read() -> dict[str, Any]:
    """Current conditions; a field is None where the machine does not expose it."""
    out: dict[str, Any] = {"load_1m": None, "freq_mhz_min": None, "freq_mhz_max": None, "governor": None,
                           "temp_c": None, "throttled": None}
    if hasattr(os, "getloadavg"):
        out["load_1m"] = round(os.getloadavg()[0], 2)
    freqs = _ints(sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq")))
    if freqs:
        out["freq_mhz_min"], out["freq_mhz_max"] = min(freqs) // 1000, max(freqs) // 1000
    govs = sorted({g for g in (_read(p) for p in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/"
                                                            "scaling_governor")) if g})
    if govs:
        out["governor"] = ",".join(govs)
    temps = _ints(glob.glob("/sys/class/thermal/thermal_zone*/temp"))
    if temps:
        out["temp_c"] = round(max(temps) / 1000.0, 1)
    vcgencmd = shutil.which("vcgencmd")
    if vcgencmd:  # a Raspberry Pi: bit 0 under-voltage, bit 2 currently throttled, bits 16-18 since boot
        try:
            text = subprocess.run([vcgencmd, "get_throttled"], capture_output=True, text=True, timeout=2).stdout
            out["throttled"] = int(text.strip().split("=")[1], 16) & 0x7 != 0
        except (OSError, subprocess.SubprocessError, IndexError, ValueError):
            pass
    return out


def read_json() -> str:
    """:func:`read` as JSON (what crosses the RPC link)."""
    return json.dumps(read())
