"""Accuracy and rank metrics of latency predictions (plain arrays in, floats out)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from latbench.errors import LatbenchError


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ; NaN when either side is constant (no ranking to compare)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b; NaN when either side is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(stats.kendalltau(x, y).statistic)


def accuracy_within(pred: Sequence[float], true: Sequence[float], band: float = 0.10) -> float:
    """Share of predictions within ±``band`` of the measured latency."""
    pred, true = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    return float(np.mean(np.abs(pred - true) <= band * true))


def accuracy_metrics(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """RMSE (ms), MAPE (%), share within ±5 % / ±10 % (%), bias (%), Spearman ρ and Kendall τ."""
    p = np.asarray(predicted, dtype=float)
    m = np.asarray(measured, dtype=float)
    if p.shape != m.shape or p.ndim != 1 or p.size == 0:
        raise LatbenchError(f"need equally long non-empty predicted/measured arrays, got {p.shape} and {m.shape}")
    if not (np.all(np.isfinite(m)) and np.all(m > 0)):
        raise LatbenchError("measured latencies must be finite and > 0 ms")
    if not np.all(np.isfinite(p)):
        raise LatbenchError("predicted latencies must be finite")
    rel = (p - m) / m
    out = {"n": int(p.size), "rmse_ms": float(np.sqrt(np.mean((p - m) ** 2))),
           "mape_pct": float(100 * np.mean(np.abs(rel))),
           "max_ape_pct": float(100 * np.max(np.abs(rel))),
           "within_5_pct": float(100 * np.mean(np.abs(rel) <= 0.05)),
           "within_10_pct": float(100 * np.mean(np.abs(rel) <= 0.10)),
           "bias_pct": float(100 * np.mean(rel)),
           "spearman": float("nan"), "kendall": float("nan")}
    if p.size >= 2:
        out["spearman"], out["kendall"] = spearman(p, m), kendall(p, m)
    return out
