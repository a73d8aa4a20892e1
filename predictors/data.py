"""Training data of predictors: op tables (paths, DataFrames) or ``(ops, ms)`` turned into validated :class:`OpData`;
architecture tables or ``(archs, ms)`` into :class:`ArchData` (the whole-network predictor's)."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latbench.errors import LatbenchError
from latbench.nasbench201 import NB201Op
from latbench.ops import OpSpec
from latbench.space import Arch
from latbench.spaces import DEFAULT_SPACE, NB201, SpaceError, arch_key, nb201_arch, space_of, space_of_op_key
from latbench.tables import ok_mask, read_table

log = logging.getLogger(__name__)


@dataclass
class OpData:
    """Validated training data: op specs, latencies (ms), the search space they belong to and where they came
    from (:class:`~latbench.ops.OpSpec` for the default space, :class:`~latbench.nasbench201.NB201Op` for
    ``nasbench201``)."""

    ops: list[Any]
    ms: np.ndarray
    device: str | None = None
    backend: str | None = None
    target: str | None = None
    source: str = "data"
    space: str = DEFAULT_SPACE


def parse_op(key: Any, space: str = DEFAULT_SPACE) -> Any:
    """An op of ``space`` from its key (an already parsed op passes through); a one-line error for a key of
    another space."""
    if isinstance(key, (OpSpec, NB201Op)):
        key = key.key
    if isinstance(key, str) and space_of_op_key(key) != space:
        raise LatbenchError(f"op {key} belongs to the {space_of_op_key(key)} space, not {space}; use a "
                            f"predictor fitted on {space_of_op_key(key)} tables (fit-predictor --space "
                            f"{space_of_op_key(key)})")
    return NB201Op.parse(key) if space == NB201 else OpSpec.parse(key)


def space_of_keys(keys: Any, source: str = "data") -> str:
    """The one search space the op keys belong to; a one-line error when they mix spaces."""
    spaces = sorted({space_of_op_key(k) if isinstance(k, str) else
                     (NB201 if isinstance(k, NB201Op) else DEFAULT_SPACE) for k in keys})
    if len(spaces) > 1:
        raise LatbenchError(f"{source}: the tables mix ops of the {' and '.join(spaces)} search spaces; fit one "
                            "predictor per space (pass only that space's tables, with --space NAME)")
    return spaces[0] if spaces else DEFAULT_SPACE


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



_WARNED: set[tuple[str, int, int]] = set()


def _warn_once(source: str, n_bad: int, n: int, example: str) -> None:
    """One warning per table and process (the demo fits a LUT and an xgb predictor on the same table)."""
    if (source, n_bad, n) in _WARNED:
        return
    _WARNED.add((source, n_bad, n))
    log.warning("%s: %d of %d ops are flagged unstable (CI above the campaign's target), e.g. %s; "
                "re-measure them on a quieter machine for a better predictor", source, n_bad, n, example)

def op_data(X: Any, y: Any = None, stat: str = "median_ms", space: str | None = None) -> OpData:
    """Turn tables / a DataFrame / ``(ops, ms)`` into validated :class:`OpData`.

    Error rows are skipped (logged); an ``ok`` row with a NaN or non-positive latency, a table that
    mixes devices or backends, an arch table, or an unparsable key is a one-line error. Tables whose ops
    belong to several search spaces are an error too, unless ``space`` names the one to keep (one
    ``--out`` directory gathers every space's ops in its op table): the other rows are then skipped (logged).
    """
    if y is not None:
        X = list(X)
        space = space_of_keys(X, "ops")
        ops = [parse_op(o, space) for o in X]
        ms = np.asarray(y, dtype=float)
        if ms.shape != (len(ops),):
            raise LatbenchError(f"got {len(ops)} ops but {ms.size} latencies")
        for op, v in zip(ops, ms):
            check_latency(v, op.key, "latencies")
        return OpData(ops, ms, space=space)
    df, source = frame_of(X)
    if df.empty:
        raise LatbenchError(f"{source}: the table is empty (measure some ops first)")
    if is_arch_table(df):
        raise LatbenchError(f"{source}: this is an architecture table; fit lut/xgb predictors on op tables "
                            "(ops-<backend>.parquet), or --kind xgb-arch on whole networks")
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
        _warn_once(source, len(bad), len(df), str(bad.iloc[0]))
    if space is not None:
        mine = df["key"].map(lambda k: space_of_op_key(str(k)) == space)
        if not mine.all():
            others = sorted({space_of_op_key(str(k)) for k in df.loc[~mine, "key"]})
            if not mine.any():
                raise LatbenchError(f"{source}: no {space} ops in these tables (they hold {', '.join(others)} "
                                    f"ops); pass that space's tables or --space {others[0]}")
            log.warning("%s: keeping the %d %s ops, skipping %d rows of the %s space", source, int(mine.sum()),
                        space, int((~mine).sum()), ", ".join(others))
            df = df[mine]
    space = space_of_keys(df["key"], source)
    ops, ms = [], []
    for key, v in zip(df["key"], df[stat]):
        try:
            op = parse_op(key, space)
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
                  device, backend, target, source, space)


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


# -- whole networks -------------------------------------------------------------------------------
@dataclass
class ArchData:
    """Validated whole-network training data: architectures (an :class:`~latbench.space.Arch` for ProxylessNAS,
    the plain dict of :func:`latbench.spaces.nb201_arch` for NAS-Bench-201), their latencies (ms), the search
    space and where they came from."""

    archs: list[Any]
    ms: np.ndarray
    device: str | None = None
    backend: str | None = None
    target: str | None = None
    source: str = "data"
    space: str = DEFAULT_SPACE


def is_arch_table(df: pd.DataFrame) -> bool:
    """Rows of whole networks (``latbench measure --archs``), not of ops."""
    return "arch" in df.columns or "arch_str" in df.columns or \
        ("kind" in df.columns and len(df) > 0 and bool((df["kind"] == "arch").all()))


def arch_table_space(df: pd.DataFrame, source: str) -> str:
    """The one search space of an architecture table's networks (rows without ``space``: ProxylessNAS);
    a one-line error when the tables mix spaces."""
    spaces = {str(s) for s in df["space"].dropna()} if "space" in df else set()
    if "space" not in df or df["space"].isna().any():
        spaces.add(NB201 if "arch_str" in df and df["arch_str"].notna().all() else DEFAULT_SPACE)
    if len(spaces) > 1:
        raise SpaceError(f"{source}: the tables mix networks of the {' and '.join(sorted(spaces))} search spaces; "
                         "pass only one space's archs tables")
    return spaces.pop() if spaces else DEFAULT_SPACE


def table_archs(df: pd.DataFrame, space: str, source: str) -> tuple[list[Any], np.ndarray]:
    """The architectures of an architecture table's rows and their ``median_ms`` (rows of ProxylessNAS networks
    from net configs outside the space have no arch to predict from: skipped)."""
    if space == NB201:
        col = "arch_str" if "arch_str" in df else "arch_index"
        return [nb201_arch(v if col == "arch_str" else int(v)) for v in df[col]], df["median_ms"].to_numpy(float)
    if "arch" not in df:
        raise LatbenchError(f"{source}: not a {DEFAULT_SPACE} architecture table (no 'arch' column)")
    df = df[df["arch"].notna()]
    archs = [Arch.from_dict(json.loads(a) if isinstance(a, str) else a, source) for a in df["arch"]]
    return archs, df["median_ms"].to_numpy(float)


def arch_data(X: Any, y: Any = None, stat: str = "median_ms", space: str | None = None) -> ArchData:
    """Architecture tables (``archs-<backend>.parquet``: paths, a DataFrame, a list of them) or ``(archs, ms)``
    as validated :class:`ArchData`.

    Error rows are skipped (logged); an op table, a table mixing devices, backends or spaces, one of another space
    than ``space``, or an ``ok`` row with a bad latency is a one-line error. A network measured in several tables
    keeps the median of its latencies.
    """
    if y is not None:
        archs = list(X)
        ms = np.asarray(y, dtype=float)
        if ms.shape != (len(archs),):
            raise LatbenchError(f"got {len(archs)} architectures but {ms.size} latencies")
        first = archs[0] if archs else None
        theirs = DEFAULT_SPACE if first is None or isinstance(first, Arch) or \
            isinstance(first, dict) and space_of(first) == DEFAULT_SPACE else NB201
        for i, v in enumerate(ms):
            check_latency(v, f"architecture {i}", "latencies")
        return ArchData(archs, ms, space=space or theirs)
    df, source = frame_of(X)
    if df.empty:
        raise LatbenchError(f"{source}: the table is empty (measure some networks first)")
    if not is_arch_table(df):
        raise LatbenchError(f"{source}: this is an op table; the whole-network predictor (xgb-arch) learns from "
                            "architecture tables (archs-<backend>.parquet); fit --kind lut or xgb on op tables")
    if stat not in df.columns:
        raise LatbenchError(f"{source}: not a latbench architecture table (no {stat!r} column)")
    if "kind" in df.columns and not (df["kind"] == "arch").all():  # a directory's op tables came along
        log.warning("%s: skipping %d op rows (keeping the %d networks)", source, int((df["kind"] != "arch").sum()),
                    int((df["kind"] == "arch").sum()))
        df = df[df["kind"] == "arch"]
    device, backend = _single(df, "device", source), _single(df, "backend", source)
    target = _single(df, "target", source)
    ok = ok_mask(df)
    if int((~ok).sum()):
        log.warning("%s: skipping %d rows whose status is not ok", source, int((~ok).sum()))
    df = df[ok]
    if df.empty:
        raise LatbenchError(f"{source}: no successfully measured networks (every row has status error)")
    theirs = arch_table_space(df, source)
    if space is not None and space != theirs:
        raise SpaceError(f"{source}: these are {theirs} networks, not {space} ones; pass --space {theirs} or "
                         "that space's archs tables")
    df = df.assign(median_ms=df[stat])
    archs, ms = table_archs(df, theirs, source)
    by_key: dict[str, list[float]] = {}
    first_arch: dict[str, Any] = {}
    for a, v in zip(archs, ms):
        key = a.key if isinstance(a, Arch) else arch_key(a)
        check_latency(v, key, source, stat)
        by_key.setdefault(key, []).append(float(v))
        first_arch.setdefault(key, a)
    keys = list(by_key)
    if not keys:
        raise LatbenchError(f"{source}: no architectures of the {theirs} space to learn from")
    return ArchData([first_arch[k] for k in keys], np.array([float(np.median(by_key[k])) for k in keys]),
                    device, backend, target, source, theirs)
