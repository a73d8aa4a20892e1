"""Time a prebuilt artifact set (``latbench compile --out DIR``) on a device: build here, time there.

The same campaign loop as a build here (:func:`latbench.campaign.measure_artifacts`); where ``tvm``
cannot be imported (a board with only the runtime bundle) or ``LATBENCH_RUNTIME_ONLY=1``, the set
is timed in this process by TVM's runtime alone (:mod:`latbench.runners.runtime_only`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from latbench.campaign import measure_artifacts as _measure
from latbench.devices import Device


def tvm_importable() -> bool:
    """Whether the full ``tvm`` package is installed here (False on runtime-only hosts or when forced)."""
    if os.environ.get("LATBENCH_RUNTIME_ONLY", "") not in ("", "0"):
        return False
    try:
        import tvm  # noqa: F401  (the full compiler package; heavy, so only imported to find out)
    except ImportError:
        return False
    return True


def measure_artifacts(root: str | Path, device: Device, out_dir: str | Path, progress: bool = True,
                      **plan: Any) -> pd.DataFrame:
    """Time every built entry of the artifact set ``root`` on ``device``; rows go to the usual table."""
    return _measure(root, device, out_dir, progress, runtime_only=not tvm_importable(), **plan)
