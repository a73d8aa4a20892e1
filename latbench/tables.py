"""Latency tables: one row per (op or architecture) per device per backend, stored as Parquet.

Layout under an output directory ``DIR``::

    DIR/<device>/ops-<backend>.parquet      # op latencies (key = official ProxylessNAS op key)
    DIR/<device>/archs-<backend>.parquet    # whole-network latencies (key = Arch.key, arch = JSON)
    DIR/<device>/<table>.journal.jsonl      # rows not yet consolidated into the Parquet file

Every result is appended to the journal and fsync'd the moment it is taken, so Ctrl-C, a crash or
a killed process loses nothing; :meth:`TableStore.consolidate` folds the journal into the Parquet
file (atomically) at the end of a campaign, or at the start of the next one. A row's ``status``
is ``ok`` or ``error`` (with ``error`` saying why); a resumed campaign skips keys that are ``ok``.

Columns (users open these in pandas):
``key``, ``kind`` (op kind or ``arch``), op shape fields and :data:`latbench.features.FEATURE_NAMES`
(op tables), ``arch``/``resolution``/``width_mult`` (arch tables), ``device``, ``backend``,
``target`` (JSON), ``status``, ``error``, ``mean_ms``, ``median_ms``, ``std_ms``, ``min_ms``,
``max_ms``, ``cv`` (std/mean), timing settings ``number``, ``repeat``, ``min_repeat_ms``,
``warmup``, ``num_threads``, ``max_abs_err`` (vs PyTorch), ``server`` (which RPC server timed
it), ``emulated``, ``build`` (JSON build notes), ``versions`` (JSON), ``host_facts`` and
``device_facts`` (JSON), ``timestamp`` (ISO 8601 UTC).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from latbench.errors import LatbenchError

STAT_COLUMNS = ("mean_ms", "median_ms", "std_ms", "min_ms", "max_ms", "cv")
TABLE_KINDS = ("ops", "archs")


class TableError(LatbenchError):
    """A table that cannot be read or written."""


def table_path(out_dir: str | Path, device: str, backend: str, what: str = "ops") -> Path:
    """Where the ``what`` (ops|archs) table of ``device``/``backend`` lives under ``out_dir``."""
    if what not in TABLE_KINDS:
        raise ValueError(f"table kind must be one of {TABLE_KINDS}, got {what!r}")
    return Path(out_dir) / device / f"{what}-{backend}.parquet"


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a Parquet or CSV table (plus its unconsolidated journal, if any) into a DataFrame."""
    p = Path(path)
    if p.is_dir():
        frames = [read_table(f) for f in sorted(p.rglob("*.parquet"))]
        if not frames:
            raise TableError(f"no .parquet tables under {p}")
        return pd.concat(frames, ignore_index=True)
    journal = _journal_of(p)
    if not p.exists() and not journal.exists():
        raise TableError(f"table {p} does not exist (run `latbench measure` first, or check the path)")
    try:
        if not p.exists():
            df = pd.DataFrame()
        elif p.suffix == ".csv" or p.name.endswith(".csv.gz"):
            df = pd.read_csv(p)
        else:
            df = pd.read_parquet(p)
    except Exception as exc:  # pyarrow/pandas raise many kinds of errors for a bad file
        raise TableError(f"cannot read table {p}: {exc.__class__.__name__}: {exc}") from None
    rows = _read_journal(journal)
    if rows:
        df = _merge(df, pd.DataFrame(rows))
    return df


def _journal_of(path: Path) -> Path:
    return path.with_name(path.name.replace(".parquet", "") + ".journal.jsonl")


def _read_journal(journal: Path) -> list[dict[str, Any]]:
    if not journal.exists():
        return []
    rows = []
    with journal.open() as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                # Only the last line can be torn (the process died mid-write); it is re-measured.
                continue
    return rows


def _merge(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``new`` replace rows of ``old`` with the same key; an ``ok`` row is never replaced
    by an ``error`` row (a failed re-measurement does not erase a good one)."""
    if old.empty:
        merged = new
    elif new.empty:
        merged = old
    else:
        merged = pd.concat([old, new], ignore_index=True)
    if merged.empty or "key" not in merged:
        return merged
    ok = (merged.get("status", pd.Series("ok", index=merged.index)) == "ok").astype(int)
    merged = merged.assign(_ok=ok, _order=range(len(merged)))
    merged = merged.sort_values(["_ok", "_order"]).drop_duplicates("key", keep="last")
    return merged.sort_values("_order").drop(columns=["_ok", "_order"]).reset_index(drop=True)


class TableStore:
    """One table on disk: append rows as they are measured, read what is done, consolidate.

    Appends go to a JSON-lines journal that is flushed and fsync'd per row.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.journal = _journal_of(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            probe = self.path.parent / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise TableError(
                f"cannot write tables to {self.path.parent}: {exc.strerror or exc} "
                "(choose another --out directory)"
            ) from None

    def frame(self) -> pd.DataFrame:
        """All rows so far (Parquet + journal)."""
        if not self.path.exists() and not self.journal.exists():
            return pd.DataFrame()
        return read_table(self.path)

    def done_keys(self) -> set[str]:
        """Keys already measured successfully (a resumed campaign skips them)."""
        df = self.frame()
        if df.empty:
            return set()
        return set(df.loc[df["status"] == "ok", "key"])

    def append(self, row: dict[str, Any]) -> None:
        """Persist one row now (durable on return)."""
        line = json.dumps(row, default=_json_default, sort_keys=True)
        with self.journal.open("a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def consolidate(self) -> pd.DataFrame:
        """Fold the journal into the Parquet file (atomic replace) and return the table."""
        df = self.frame()
        if df.empty:
            return df
        df = _normalise(df)
        tmp = self.path.with_suffix(".parquet.tmp")
        df.to_parquet(tmp, index=False)
        os.replace(tmp, self.path)
        if self.journal.exists():
            self.journal.unlink()
        return df


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot store {type(o).__name__} in a table")


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Make columns Parquet-friendly: dict/list cells become JSON strings."""
    for col in df.columns:
        if df[col].dtype == object and df[col].map(lambda v: isinstance(v, (dict, list))).any():
            df[col] = df[col].map(lambda v: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)
    return df


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Only successfully measured rows with a finite, positive median."""
    if df.empty:
        return df
    m = df["status"] == "ok" if "status" in df else pd.Series(True, index=df.index)
    return df[m & df["median_ms"].notna() & (df["median_ms"] > 0)]


def concat_tables(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Read and concatenate several tables."""
    frames = [read_table(p) for p in paths]
    if not frames:
        raise TableError("no tables given")
    return pd.concat(frames, ignore_index=True)
