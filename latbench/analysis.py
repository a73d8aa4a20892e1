"""Cross-device latency monotonicity: do two devices rank the same entries the same way?

Input is a *latency matrix*: one row per entry (an op key or an architecture id), one column per
device, latency in ms. It is built from

* our long tables (``key``, ``device``, ``median_ms``, ``status`` … as written by
  :mod:`latbench.tables`; Parquet, CSV or a directory of them), one column per device (per
  ``device/backend`` when a device was measured with several backends);
* wide tables other tools publish (an id column, one latency column per device), CSV(.gz),
  TSV, Parquet or JSON (a list of records, ``{device: {id: ms}}`` or ``{device: [ms, …]}``).

Missing, NaN, zero or negative latencies (published tables use ``-1`` for "not measured") are
left out pair by pair; :class:`CorrelationResult` counts them. Spearman's ρ and Kendall's τ-b come
with percentile bootstrap confidence intervals (resampling the shared entries of each pair).
"""
from __future__ import annotations

import gzip
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from latbench.errors import LatbenchError
from latbench.metrics import kendall, spearman
from latbench.paths import SHARED_ENV, help_nb201_csv
from latbench.tables import ok_mask, read_table, table_paths

log = logging.getLogger(__name__)

#: Column names tried, in order, as the id of a wide table when ``id_column`` is not given.
ID_CANDIDATES: tuple[str, ...] = ("key", "id", "arch_index", "arch_str", "arch", "name", "index")
#: Columns that mark a long (one row per entry per device) table.
LONG_COLUMNS: tuple[str, ...] = ("key", "device", "median_ms")
#: Columns never taken as a device in a wide table (ids and metadata).
_NOT_DEVICES = set(ID_CANDIDATES) | {"Unnamed: 0", "resolution", "width_mult", "n_classes"}
#: Fewest shared valid entries a pair needs for a rank correlation.
MIN_SHARED = 3


class AnalysisError(LatbenchError):
    """Tables that cannot be compared (no shared entries, one device, a missing column …)."""


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
def read_any(path: str | Path) -> pd.DataFrame:
    """Read a table as a DataFrame: Parquet (ours, journal included), CSV/TSV(.gz), JSON/JSONL."""
    p = Path(path)
    name = p.name.lower()
    if not p.exists():
        raise AnalysisError(f"table {p} does not exist (check the path)")
    try:
        if p.is_dir() or name.endswith(".parquet"):  # our layout: latbench.tables reads it (journal-aware)
            if p.is_dir() and not table_paths(p):
                raise AnalysisError(f"no tables (*.parquet or *.journal.jsonl) under {p}")
            return read_table(p)
        if name.endswith((".csv", ".csv.gz", ".csv.bz2", ".csv.xz")):
            return pd.read_csv(p)
        if name.endswith((".tsv", ".tsv.gz")):
            return pd.read_csv(p, sep="\t")
        if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
            return pd.read_json(p, lines=True)
        if name.endswith((".json", ".json.gz")):
            return _json_frame(p)
    except LatbenchError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many kinds of errors for a bad file
        raise AnalysisError(f"cannot read table {p}: {exc.__class__.__name__}: {exc}") from None
    raise AnalysisError(f"{p}: unknown table format; use .parquet, .csv(.gz), .tsv, .json or .jsonl")


def _json_frame(p: Path) -> pd.DataFrame:
    """A JSON table: records, ``{device: {id: ms}}``, ``{device: [ms, ...]}`` or ``{column: [...]}``."""
    opener = gzip.open if p.name.lower().endswith(".gz") else open
    with opener(p, "rt") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise AnalysisError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, list):
        if not data or not all(isinstance(r, dict) for r in data):
            raise AnalysisError(f"{p}: a JSON list table must be a non-empty list of objects (records)")
        return pd.DataFrame.from_records(data)
    if isinstance(data, dict) and data:
        values = list(data.values())
        if all(isinstance(v, dict) for v in values):
            # {device: {id: ms}}: outer keys are devices, inner keys the entries.
            df = pd.DataFrame(data)
            df.index = df.index.map(str)
            return df.rename_axis("id").reset_index()
        if all(isinstance(v, list) for v in values):
            lengths = {len(v) for v in values}
            if len(lengths) != 1:
                raise AnalysisError(f"{p}: the lists of a {{column: [values]}} JSON table differ in length "
                                    f"({sorted(lengths)})")
            df = pd.DataFrame(data)
            if not any(c in df.columns for c in ID_CANDIDATES):
                df.insert(0, "index", range(len(df)))  # positional ids, as HELP's per-device lists
            return df
    raise AnalysisError(f"{p}: unsupported JSON layout; expected a list of records, {{device: {{id: ms}}}} "
                        f"or {{device: [ms, ...]}}")


def is_long(df: pd.DataFrame) -> bool:
    """Whether ``df`` is one of our long tables (``key``, ``device``, ``median_ms``)."""
    return all(c in df.columns for c in LONG_COLUMNS)


def long_to_matrix(df: pd.DataFrame, value: str = "median_ms", kind: str | None = None,
                   source: str = "table") -> pd.DataFrame:
    """Pivot a long table to a matrix (rows = key, columns = device or ``device/backend``).

    Rows whose ``status`` is not ``ok`` count as not measured (NaN); duplicates of a key on a
    device take the median of the valid values. ``kind`` (``ops``/``archs``) keeps one kind of
    row; a table mixing op and architecture rows without it is an error (their latencies are on
    different scales, so one ranking of both would mean nothing).
    """
    if value not in df.columns:
        raise AnalysisError(f"long table has no {value!r} column (columns: {', '.join(map(str, df.columns))})")
    if "kind" in df.columns:
        is_arch = df["kind"].astype(str) == "arch"
        if kind == "ops":
            df = df[~is_arch]
        elif kind == "archs":
            df = df[is_arch]
        elif kind is not None:
            raise AnalysisError(f"--kind must be 'ops' or 'archs', got {kind!r}")
        elif is_arch.any() and not is_arch.all():
            raise AnalysisError(f"{source} mixes op and architecture rows; pass --kind ops or --kind archs "
                                "(or give ops-*.parquet / archs-*.parquet files)")
        if df.empty:
            raise AnalysisError(f"{source} has no {kind} rows")
    df = df.copy()
    vals = pd.to_numeric(df[value], errors="coerce")
    if "status" in df.columns:
        vals = vals.where(ok_mask(df))
    df["_v"] = vals.where(vals > 0)
    df["_col"] = df["device"].astype(str)
    if "backend" in df.columns:
        n_backends = df.groupby("_col")["backend"].nunique()
        multi = set(n_backends[n_backends > 1].index)
        if multi:
            m = df["_col"].isin(multi)
            df.loc[m, "_col"] = df.loc[m, "_col"] + "/" + df.loc[m, "backend"].astype(str)
    df["key"] = df["key"].astype(str)
    mat = df.pivot_table(index="key", columns="_col", values="_v", aggfunc="median", dropna=False)
    # pivot_table drops keys that are NaN everywhere; keep them so they are counted as missing.
    mat = mat.reindex(sorted(set(df["key"]))).astype(float)
    mat.columns.name = None
    mat.index.name = "id"
    return mat


def wide_to_matrix(df: pd.DataFrame, id_column: str | None = None,
                   devices: Sequence[str] | None = None, source: str = "table") -> pd.DataFrame:
    """A wide table (id column + one numeric latency column per device) as a matrix.

    ``id_column`` names the id; without it the first of :data:`ID_CANDIDATES` present is used
    (else the first non-numeric column, else the row number). Raw values are kept (negative
    and NaN included) so :func:`rank_correlations` can count them.
    """
    if id_column is not None:
        if id_column not in df.columns:
            raise AnalysisError(f"{source}: no id column {id_column!r}; columns are: "
                                f"{', '.join(map(str, df.columns[:12]))}{' ...' if len(df.columns) > 12 else ''}")
        idc = id_column
    else:
        idc = next((c for c in ID_CANDIDATES if c in df.columns), None)
        if idc is None:
            non_num = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
            idc = non_num[0] if non_num else None
    ids = df[idc].astype(str) if idc is not None else pd.Series(range(len(df))).astype(str)
    dup = int(ids.duplicated().sum())
    if dup:
        raise AnalysisError(f"{source}: id column {idc!r} has {dup} duplicated values; "
                            "name a unique id column with --id-column")
    if devices:
        missing = [d for d in devices if d not in df.columns]
        if missing:
            raise AnalysisError(f"{source}: device column {missing[0]!r} missing; columns are: "
                                f"{', '.join(map(str, df.columns[:40]))}")
        cols = list(devices)
    else:
        cols = [c for c in df.columns if c != idc and str(c) not in _NOT_DEVICES
                and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
    mat = df[cols].apply(pd.to_numeric, errors="coerce").astype(float)
    mat.index = pd.Index(ids.values, name="id")
    mat.columns = [str(c) for c in cols]
    return mat


#: Id columns that name a NAS-Bench-201 architecture (our arch rows carry both, published tables one or both).
NB201_IDS: tuple[str, ...] = ("arch_str", "arch_index")


def table_space(df: pd.DataFrame, source: str = "table") -> str | None:
    """The search space a table's entries belong to: ``nasbench201`` (cell strings), ``proxylessnas``
    (our op keys / arch JSON), or ``None`` when it cannot tell (a wide table of other ids)."""
    from latbench.nasbench201 import detect_feature_kind

    if "space" in df.columns:
        spaces = sorted(set(df["space"].dropna().astype(str)))
        if len(spaces) > 1:
            raise AnalysisError(f"{source} mixes architectures of spaces {', '.join(spaces)}; give one table per "
                                "space (their latencies cannot be ranked together)")
        if spaces:
            return spaces[0]
    if "arch_str" in df.columns:
        return "nasbench201" if detect_feature_kind(df["arch_str"].astype(str).tolist()) else None
    if is_long(df):
        ids = df["key"].astype(str).tolist()
        return "nasbench201" if detect_feature_kind(ids) else "proxylessnas"
    return None


def load_matrix(paths: Iterable[str | Path], id_column: str | None = None,
                devices: Sequence[str] | None = None, kind: str | None = None) -> pd.DataFrame:
    """Load one or more tables (long or wide, any format) and join them on the entry id.

    A device name that appears in two files gets ``@<file stem>`` appended the second time.
    ``devices`` restricts (and orders) the columns; a name not found raises one clear error.
    ``kind`` (``ops``/``archs``) selects one kind of row of our long tables.

    Our NAS-Bench-201 architecture tables (rows with ``arch_str``/``arch_index``) join published
    wide tables on the architecture: on ``id_column`` when it is one of those two, else on the cell
    string (a wide table without ``arch_str`` but with ``arch_index`` joins on the index). Tables of
    two different search spaces are refused with one line.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise AnalysisError("no tables given")
    frames = []
    for p in paths:
        df = read_any(p)
        if df.empty:
            raise AnalysisError(f"table {p} is empty")
        frames.append((p, df))
    spaces = {str(p): table_space(df, str(p)) for p, df in frames}
    known = {sp for sp in spaces.values() if sp}
    if len(known) > 1:
        raise AnalysisError("tables of different search spaces cannot be compared: " + "; ".join(
            f"{p} is {sp}" for p, sp in spaces.items() if sp))
    ours_nb201 = [df for _, df in frames if is_long(df) and all(c in df.columns for c in NB201_IDS)]
    join_on = None
    if ours_nb201:
        join_on = id_column if id_column in NB201_IDS else "arch_str"
    mats = []
    for p, df in frames:
        if is_long(df):
            if join_on and join_on in df.columns:
                df = df.assign(key=df[join_on].astype("Int64" if join_on == "arch_index" else str).astype(str))
            mat = long_to_matrix(df, kind=kind, source=str(p))
        else:
            idc = id_column
            if join_on and id_column is None:
                idc = join_on if join_on in df.columns else next((c for c in NB201_IDS if c in df.columns), None)
                if idc == "arch_index" and join_on == "arch_str":
                    mat = _reindex_by_string(wide_to_matrix(df, "arch_index", None, str(p)), str(p))
                    mats.append((p, mat))
                    continue
            mat = wide_to_matrix(df, idc, None, str(p))
        mats.append((p, mat))
    out: pd.DataFrame | None = None
    for p, mat in mats:
        if out is None:
            out = mat
            continue
        stem = p.name.split(".")[0]
        mat = mat.rename(columns={c: f"{c}@{stem}" for c in mat.columns if c in out.columns})
        out = out.join(mat, how="outer")
    assert out is not None
    if devices:
        missing = [d for d in devices if d not in out.columns]
        if missing:
            raise AnalysisError(f"device column {missing[0]!r} missing; the tables have: {', '.join(out.columns)}")
        out = out[list(devices)]
    return out


def _reindex_by_string(mat: pd.DataFrame, source: str) -> pd.DataFrame:
    """A matrix indexed by official NAS-Bench-201 index → indexed by the cell string."""
    from latbench.errors import AdaptError
    from latbench.nasbench201 import nb201_resolve

    try:
        mat.index = pd.Index([nb201_resolve(int(float(i)))[1] for i in mat.index], name="id")
    except (AdaptError, ValueError) as e:
        raise AnalysisError(f"{source}: arch_index column is not NAS-Bench-201 indices ({e})") from None
    return mat


def load_published_help(path: str | Path | None = None, devices: Sequence[str] | None = None) -> pd.DataFrame:
    """The published HELP NAS-Bench-201 table (from :func:`latbench.paths.help_nb201_csv`) as a
    matrix indexed by ``arch_str`` (keeps the cell string for feature extraction)."""
    p = Path(path) if path else help_nb201_csv()
    if not p.exists():
        raise AnalysisError(f"published HELP table not found at {p}; set {SHARED_ENV} to the shared directory")
    df = read_any(p)
    return wide_to_matrix(df.drop(columns=["arch_index"], errors="ignore"), "arch_str", devices, str(p))


# --------------------------------------------------------------------------------------------
# correlations
# --------------------------------------------------------------------------------------------
def valid_mask(values: pd.Series | np.ndarray) -> np.ndarray:
    """True where a latency is usable: finite and > 0."""
    v = np.asarray(values, dtype=float)
    return np.isfinite(v) & (v > 0)


@dataclass
class CorrelationResult:
    """Pairwise rank correlations of a latency matrix (all frames are device × device)."""

    devices: list[str]
    spearman: pd.DataFrame
    kendall: pd.DataFrame
    n: pd.DataFrame
    dropped: pd.DataFrame
    spearman_ci: tuple[pd.DataFrame, pd.DataFrame]
    kendall_ci: tuple[pd.DataFrame, pd.DataFrame]
    invalid: dict[str, dict[str, int]] = field(default_factory=dict)
    bootstrap: int = 0
    confidence: float = 0.95

    def to_dict(self) -> dict:
        """JSON-ready: ``spearman``/``kendall``/``n``/``dropped`` as ``{dev: {dev: value}}``, CIs as
        ``{dev: {dev: [low, high]}}``, ``invalid`` per device (NaN → ``null``)."""
        def mat(df: pd.DataFrame, cast=float) -> dict:
            return {a: {b: _num(df.loc[a, b], cast) for b in self.devices} for a in self.devices}

        def ci(pair: tuple[pd.DataFrame, pd.DataFrame]) -> dict:
            lo, hi = pair
            return {a: {b: [_num(lo.loc[a, b]), _num(hi.loc[a, b])] for b in self.devices} for a in self.devices}

        return {
            "spearman": mat(self.spearman), "kendall": mat(self.kendall),
            "n": mat(self.n, int), "dropped": mat(self.dropped, int),
            "spearman_ci": ci(self.spearman_ci), "kendall_ci": ci(self.kendall_ci),
            "invalid": self.invalid, "bootstrap": self.bootstrap, "confidence": self.confidence,
            "devices": list(self.devices),
        }

    def pairs(self) -> pd.DataFrame:
        """One row per unordered device pair: rho, its CI, tau, its CI, n, dropped."""
        rows = []
        for i, a in enumerate(self.devices):
            for b in self.devices[i + 1:]:
                rows.append({
                    "device_a": a, "device_b": b, "n": int(self.n.loc[a, b]), "dropped": int(self.dropped.loc[a, b]),
                    "spearman": self.spearman.loc[a, b], "spearman_low": self.spearman_ci[0].loc[a, b],
                    "spearman_high": self.spearman_ci[1].loc[a, b], "kendall": self.kendall.loc[a, b],
                    "kendall_low": self.kendall_ci[0].loc[a, b], "kendall_high": self.kendall_ci[1].loc[a, b],
                })
        return pd.DataFrame(rows)


def _num(v, cast=float):
    v = float(v)
    if math.isnan(v):
        return None
    return cast(v) if cast is int else round(v, 6)


def _midranks(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mid-ranks of every element inside each bootstrap resample, from multiplicities.

    ``counts`` is B × n (how often each element was drawn); equal values (and copies of one
    element) share their average rank, as :func:`scipy.stats.rankdata` would give on the
    resample itself. O(B·n) instead of sorting every resample.
    """
    _, inv = np.unique(values, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(inv[order])) + 1]
    group_counts = np.add.reduceat(counts[:, order], starts, axis=1).astype(float)  # B × G
    before = np.cumsum(group_counts, axis=1) - group_counts
    mid = before + (group_counts + 1.0) / 2.0
    return mid[:, inv]


def bootstrap_spearman(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Spearman's ρ of each resample ``x[idx[b]], y[idx[b]]`` (``idx`` is B × n), exactly, in O(B·n)."""
    n = len(x)
    B = idx.shape[0]
    counts = np.bincount((idx + n * np.arange(B)[:, None]).ravel(), minlength=B * n).reshape(B, n).astype(float)
    rx, ry = _midranks(x, counts), _midranks(y, counts)
    mx = (counts * rx).sum(1, keepdims=True) / n
    my = (counts * ry).sum(1, keepdims=True) / n
    dx, dy = rx - mx, ry - my
    cov = (counts * dx * dy).sum(1)
    var = (counts * dx * dx).sum(1) * (counts * dy * dy).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, cov / np.sqrt(var), np.nan)


def rank_correlations(matrix: pd.DataFrame, bootstrap: int = 200, confidence: float = 0.95,
                      seed: int = 0, kendall_bootstrap: bool = True) -> CorrelationResult:
    """Spearman and Kendall (τ-b) between every pair of device columns over their shared valid
    entries, with percentile bootstrap CIs from ``bootstrap`` resamples (0 = no CIs).

    Kendall's bootstrap re-runs :func:`scipy.stats.kendalltau` per resample (≈2 ms at 15k
    entries); ``kendall_bootstrap=False`` skips it when only Spearman's CI is wanted.
    Raises :class:`AnalysisError` for fewer than two devices or a pair with < 3 shared entries.
    """
    devices = [str(c) for c in matrix.columns]
    if len(devices) < 2:
        only = f" (only {devices[0]!r})" if devices else ""
        raise AnalysisError(f"monotonicity needs at least two devices{only}; give a wide table with one "
                            "latency column per device, or tables of two or more devices")
    if not 0 < confidence < 1:
        raise AnalysisError(f"confidence must be in (0, 1), got {confidence}")
    if bootstrap < 0:
        raise AnalysisError(f"--bootstrap must be >= 0, got {bootstrap}")
    vals = matrix.to_numpy(dtype=float)
    ok = np.isfinite(vals) & (vals > 0)
    invalid = {d: {"missing": int(np.isnan(vals[:, j]).sum()),
                   "nonpositive": int((np.isfinite(vals[:, j]) & (vals[:, j] <= 0)).sum()),
                   "valid": int(ok[:, j].sum())} for j, d in enumerate(devices)}
    D = len(devices)
    res = {k: np.full((D, D), np.nan) for k in ("rho", "tau", "rlo", "rhi", "tlo", "thi")}
    n = np.zeros((D, D), dtype=int)
    dropped = np.zeros((D, D), dtype=int)
    alpha = (1 - confidence) / 2
    rng = np.random.default_rng(seed)
    work = D * (D - 1) / 2 * bootstrap * len(vals)
    if kendall_bootstrap and work > 2e8:  # ≈ 1 min of kendalltau calls on one core
        log.warning("Kendall bootstrap over %d pairs x %d resamples x %d entries takes minutes; "
                    "--no-kendall-ci or a smaller --bootstrap is much faster", D * (D - 1) // 2, bootstrap, len(vals))
    for i in range(D):
        n[i, i] = ok[:, i].sum()
        dropped[i, i] = len(vals) - n[i, i]
        res["rho"][i, i] = res["tau"][i, i] = 1.0
        for j in range(i + 1, D):
            m = ok[:, i] & ok[:, j]
            k = int(m.sum())
            if k < MIN_SHARED:
                raise AnalysisError(
                    f"devices {devices[i]!r} and {devices[j]!r} share {'no' if k == 0 else 'only ' + str(k)} "
                    f"valid entries ({invalid[devices[i]]['valid']} and {invalid[devices[j]]['valid']} valid; "
                    f"need >= {MIN_SHARED} in common); compare tables of the same ops or architectures")
            x, y = vals[m, i], vals[m, j]
            n[i, j] = n[j, i] = k
            dropped[i, j] = dropped[j, i] = len(vals) - k  # entries unusable for this pair
            res["rho"][i, j] = res["rho"][j, i] = spearman(x, y)
            res["tau"][i, j] = res["tau"][j, i] = kendall(x, y)
            if bootstrap:
                rlo, rhi, tlo, thi = _bootstrap_pair(x, y, bootstrap, alpha, rng, kendall_bootstrap)
                res["rlo"][i, j] = res["rlo"][j, i] = rlo
                res["rhi"][i, j] = res["rhi"][j, i] = rhi
                res["tlo"][i, j] = res["tlo"][j, i] = tlo
                res["thi"][i, j] = res["thi"][j, i] = thi
    frame = lambda a: pd.DataFrame(a, index=devices, columns=devices)  # noqa: E731
    for i in range(D):
        for key in ("rlo", "rhi", "tlo", "thi"):
            res[key][i, i] = 1.0 if bootstrap else np.nan
    return CorrelationResult(
        devices, frame(res["rho"]), frame(res["tau"]), frame(n), frame(dropped),
        (frame(res["rlo"]), frame(res["rhi"])), (frame(res["tlo"]), frame(res["thi"])),
        invalid, bootstrap, confidence)


def _bootstrap_pair(x: np.ndarray, y: np.ndarray, B: int, alpha: float, rng: np.random.Generator,
                    with_kendall: bool) -> tuple[float, float, float, float]:
    n = len(x)
    chunk = max(1, min(B, 4_000_000 // max(n, 1)))  # bound memory to a few tens of MB per block
    rhos, taus = [], []
    done = 0
    while done < B:
        b = min(chunk, B - done)
        idx = rng.integers(0, n, size=(b, n))
        rhos.append(bootstrap_spearman(x, y, idx))
        if with_kendall:
            taus.extend(kendall(x[r], y[r]) for r in idx)
        done += b
    rho = np.concatenate(rhos)
    q = [100 * alpha, 100 * (1 - alpha)]
    rlo, rhi = _percentiles(rho, q)
    tlo, thi = _percentiles(np.asarray(taus), q) if with_kendall else (float("nan"), float("nan"))
    return rlo, rhi, tlo, thi


def _percentiles(a: np.ndarray, q: list[float]) -> tuple[float, float]:
    a = a[np.isfinite(a)]
    if a.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(a, q)
    return float(lo), float(hi)


def format_matrix(df: pd.DataFrame, digits: int = 2, width: int = 7) -> str:
    """A square matrix as fixed-width text (device names shortened to ``width``)."""
    names = [str(c) for c in df.columns]
    short = [s if len(s) <= width else s[: width - 1] + "~" for s in names]
    rowname_w = max(len(s) for s in names)
    lines = [" " * rowname_w + " " + " ".join(f"{s:>{width}}" for s in short)]
    for a in df.index:
        cells = []
        for b in df.columns:
            v = df.loc[a, b]
            cells.append(f"{'-':>{width}}" if pd.isna(v) else f"{v:>{width}.{digits}f}")
        lines.append(f"{str(a):<{rowname_w}} " + " ".join(cells))
    return "\n".join(lines)
