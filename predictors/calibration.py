"""Calibration of a predictor's Σ op latencies to measured whole networks: ``measured ≈ scale * Σops + offset``."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from latbench.errors import LatbenchError

MODES = ("auto", "affine", "scale")


def fit_calibration_line(raw: np.ndarray, measured: np.ndarray, mode: str = "auto") -> tuple[float, float, str]:
    """``(scale, offset, mode used)`` mapping raw predictions to measured latencies (ms).

    Both fits are robust to a few outliers (a network timed while the machine was busy):

    * ``"scale"``: offset 0, scale = median of measured / predicted;
    * ``"affine"``: Theil–Sen line (median of pairwise slopes); needs ≥ 3 archs;
    * ``"auto"`` (default): affine with ≥ 5 archs when its slope is positive and within a factor
      2 of the median ratio (so a narrow, noisy sample cannot produce a wild line), else scale.
    """
    if mode not in MODES:
        raise LatbenchError(f"calibration mode must be 'auto', 'affine' or 'scale', got {mode!r}")
    raw, y = np.asarray(raw, dtype=float), np.asarray(measured, dtype=float)
    n = len(raw)
    scale, offset, used = float(np.median(y / raw)), 0.0, "scale"
    if mode == "affine" and (n < 3 or np.ptp(raw) <= 0):
        raise LatbenchError(f"an affine calibration needs at least 3 architectures of different predicted "
                            f"latency (got {n}); use mode='scale'")
    if mode == "affine" or (mode == "auto" and n >= 5 and np.ptp(raw) > 0):
        from scipy.stats import theilslopes  # deferred: scipy.stats takes ~0.5 s to import, only this needs it

        slope, intercept, *_ = theilslopes(y, raw)
        if mode == "affine" or (slope > 0 and 0.5 * scale <= slope <= 2 * scale):
            scale, offset, used = float(slope), float(intercept), "affine"
    return scale, offset, used


def check_calibration(cal: Any, source: str = "predictor") -> dict[str, Any]:
    """A calibration record (``scale``, ``offset``, ``n``, ``mode``) validated: the scale a finite number > 0, the
    offset finite — a hand-edited file with NaN, inf or a negative scale would turn every prediction into nonsense."""
    if not isinstance(cal, dict):
        raise LatbenchError(f"{source}: calibration is not a mapping ({type(cal).__name__})")
    out = dict(cal)
    for name, ok, what in (("scale", lambda v: v > 0, "a finite number > 0"),
                           ("offset", lambda v: True, "a finite number")):
        v = out.get(name, 1.0 if name == "scale" else 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
            raise LatbenchError(f"{source}: calibration {name} must be {what}, got {v!r}; refit the calibration "
                                "(`latbench fit-predictor --calibration ARCH_TABLE`) or the predictor")
        out[name] = float(v)
    return out
