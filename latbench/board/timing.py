"""The timing core: how one callable is timed, its statistics and the output check. numpy only.

Shared by every runner that times in Python (host backends, the runtime-only timer) and shipped
beside ``runtime_timer.py`` in a board bundle, so it imports nothing from latbench. TVM RPC
sessions time with TVM's own ``time_evaluator`` but use the same number calibration rule
(:func:`number_for`) and statistics (:func:`summarize`).

Semantics (TVM's time evaluator): ``warmup`` untimed runs, then ``repeat`` repeats of ``number``
runs each; a sample is one repeat's time divided by ``number``. ``number`` is calibrated once per
item so that a repeat lasts at least ``min_repeat_ms``, then kept fixed: later visits of the same
item repeat nothing of the calibration.
"""
from __future__ import annotations

import math
import time
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np

#: Relative tolerance of the numerical check against PyTorch (fp32; scaled by the output's magnitude).
RTOL = 1e-3
#: Upper bound of ``number`` (an op faster than a nanosecond would loop forever otherwise).
MAX_NUMBER = 1 << 20


def tolerance(expected: np.ndarray) -> float:
    """The largest absolute error accepted for an output whose reference is ``expected``."""
    return RTOL * (1.0 + float(np.max(np.abs(expected)))) if expected.size else RTOL


def output_error(y: np.ndarray, expected: np.ndarray) -> float:
    """Largest absolute difference from the reference (inf when the shapes differ)."""
    y = np.asarray(y)
    if y.shape != expected.shape:
        return float("inf")
    return float(np.max(np.abs(y.astype(np.float64) - expected))) if y.size else 0.0


def check_output(expected: np.ndarray, max_abs_err: float) -> tuple[bool, float]:
    """Whether an output error is within tolerance; returns ``(ok, tolerance)``."""
    tol = tolerance(expected)
    return bool(max_abs_err <= tol), tol


def check_fields(expected: np.ndarray, max_abs_err: float) -> dict[str, Any]:
    """Row fields of the output check: ``max_abs_err``, ``tolerance`` and, on failure, the error."""
    ok, tol = check_output(expected, max_abs_err)
    out: dict[str, Any] = {"max_abs_err": max_abs_err, "tolerance": tol}
    if not ok:
        out.update(status="error", stage="check",
                   error=f"output differs from PyTorch: max abs err {max_abs_err:.3g} > {tol:.3g}")
    return out


def summarize(samples_s: Sequence[float]) -> dict[str, float]:
    """Statistics in ms of per-run times given in seconds."""
    ms = np.asarray(samples_s, dtype=float) * 1e3
    mean = float(ms.mean())
    return {"mean_ms": mean, "median_ms": float(np.median(ms)), "std_ms": float(ms.std()),
            "min_ms": float(ms.min()), "max_ms": float(ms.max()), "cv": float(ms.std() / mean) if mean else 0.0}


def number_for(per_run_s: float, min_repeat_ms: float, number: int = 1) -> int:
    """Runs per repeat so that one repeat lasts at least ``min_repeat_ms``."""
    if min_repeat_ms <= 0 or per_run_s <= 0:
        return max(1, number)
    return int(min(MAX_NUMBER, max(number, math.ceil(min_repeat_ms / (per_run_s * 1e3)))))


def calibrate(fn: Callable[[], Any], sync: Callable[[], None], min_repeat_ms: float, number: int = 1) -> int:
    """Raise ``number`` until ``number`` runs of ``fn`` last ``min_repeat_ms`` (TVM's rule)."""
    number = max(1, number)
    while True:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        dt = time.perf_counter() - t0
        if dt * 1e3 >= min_repeat_ms or number >= MAX_NUMBER:
            return number
        number = max(number * 2, number_for(dt / number, min_repeat_ms * 1.1, number))


def time_runs(fn: Callable[[], Any], sync: Callable[[], None], warmup: int, number: int, repeat: int,
              cooldown_ms: float = 0.0) -> list[float]:
    """``warmup`` untimed runs, then ``repeat`` samples (seconds per run) of ``number`` runs each."""
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        samples.append((time.perf_counter() - t0) / number)
        if cooldown_ms:
            time.sleep(cooldown_ms / 1e3)
    return samples


def no_sync() -> None:
    """The ``sync`` of a synchronous (CPU) callable."""
