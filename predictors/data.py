"""Training data of predictors: op tables (paths, DataFrames) or ``(ops, ms)`` turned into validated :class:`OpData`."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latbench.errors import LatbenchError
from latbench.ops import OpSpec
from latbench.tables import ok_mask, read_table

log = logging.getLogger(__name__)


@dataclass
class OpData:
    """Validated training data: op specs, latencies (ms) and where they came from."""

    ops: list[OpSpec]
    ms: np.ndarray
    device: str | None = None
    backend: str | None = None
    target: str | None = None
    source: str = "data"


def frame_of(X: Any) -> tuple[pd.DataFrame, str]:
    """A table path, a DataFrame or a list of them as one DataFrame, and a name for messages."""
    if isinstance(X, pd.DataFrame):
        return X, "DataFrame"
    if isinstance(X, (str, Path)):
        return read_table(X), str(X)
    if isinstance(X, (list, tuple)) and X and all(isinstance(p, (str, Path, pd.DataFrame)) for p in X):
        frames, names = zip(*(frame_of(p) for p in X))
        return pd.concat(frames, ignore_index=True), ", ".join(names)
    raise LatbenchError(f"cannot fit on {type(X).__name__}: give op table paths, a DataFrame, "
                        "or a list of ops with latencies")


def _single(df: pd.DataFrame, col: str, source: str) -> str | None:
    if col not in df:
        return None
    vals = sorted({str(v) for v in df[col].dropna().unique()})
    if len(vals) > 1:
        what = {"device": "devices", "backend": "backends", "target": "targets"}[col]
        raise LatbenchError(f"{source}: tables mix {what} {', '.join(vals[:4])}; fit one predictor per "
                            f"{col} (pass only that {col}'s tables)")
    return vals[0] if vals else None


def op_data(X: Any, y: Any = None, stat: str = "median_ms") -> OpData:
    """Turn tables / a DataFrame / ``(ops, ms)`` into validated :class:`OpData`.

    Error rows are skipped (logged); an ``ok`` row with a NaN or non-positive latency, a table that
    mixes devices or backends, an arch table, or an unparsable key is a one-line error.
    """
    if y is not None:
        ops = [o if isinstance(o, OpSpec) else OpSpec.parse(o) for o in X]
        ms = np.asarray(y, dtype=float)
        if ms.shape != (len(ops),):
            raise LatbenchError(f"got {len(ops)} ops but {ms.size} latencies")
        for op, v in zip(ops, ms):
            check_latency(v, op.key, "latencies")
        return OpData(ops, ms)
    df, source = frame_of(X)
    if df.empty:
        raise LatbenchError(f"{source}: the table is empty (measure some ops first)")
    if "arch" in df.columns or ("kind" in df.columns and (df["kind"] == "arch").all()):
        raise LatbenchError(f"{source}: this is an architecture table; fit predictors on op tables "
                            "(ops-<backend>.parquet)")
    for col in ("key", stat):
        if col not in df.columns:
            raise LatbenchError(f"{source}: not a latbench op table (no {col!r} column)")
    device, backend = _single(df, "device", source), _single(df, "backend", source)
    target = _single(df, "target", source)
    # Only the status filters rows: an ok row with a bad latency is an error below, not skipped.
    ok = ok_mask(df)
    n_err = int((~ok).sum())
    if n_err:
        log.warning("%s: skipping %d rows whose status is not ok", source, n_err)
    df = df[ok]
    if df.empty:
        raise LatbenchError(f"{source}: no successfully measured rows (all {n_err} have status error)")
    if "unstable" in df and df["unstable"].fillna(False).astype(bool).any():  # used, never silently
        bad = df.loc[df["unstable"].fillna(False).astype(bool), "key"]
        log.warning("%s: %d of %d ops are flagged unstable (CI above the campaign's target), e.g. %s; "
                    "re-measure them on a quieter machine for a better predictor", source, len(bad), len(df),
                    bad.iloc[0])
    ops, ms = [], []
    for key, v in zip(df["key"], df[stat]):
        try:
            op = OpSpec.parse(key)
        except LatbenchError as e:
            raise LatbenchError(f"{source}: {e}") from None
        check_latency(v, key, source, stat)
        ops.append(op)
        ms.append(float(v))
    # Several tables may hold the same op: keep the median of its measurements.
    by_key: dict[str, list[float]] = {}
    first: dict[str, OpSpec] = {}
    for op, v in zip(ops, ms):
        by_key.setdefault(op.key, []).append(v)
        first.setdefault(op.key, op)
    keys = list(by_key)
    return OpData([first[k] for k in keys], np.array([float(np.median(by_key[k])) for k in keys]),
                  device, backend, target, source)


def check_latency(v: Any, key: str, source: str, what: str = "latency") -> float:
    """A finite positive float, or a one-line error naming the key."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise LatbenchError(f"{source}: {what} of {key} is {v!r}, not a number") from None
    if not math.isfinite(f) or f <= 0:
        raise LatbenchError(f"{source}: {what} of {key} is {f!r}; latencies must be finite and > 0 ms "
                            "(re-measure that op or drop the row)")
    return f
