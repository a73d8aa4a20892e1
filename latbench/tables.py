"""Latency tables: one row per (op or architecture) per device per backend, stored as Parquet.

Layout under an output directory ``DIR``::

    DIR/<device>/ops-<backend>.parquet      # op latencies (key = official ProxylessNAS op key)
    DIR/<device>/archs-<backend>.parquet    # whole-network latencies (key = Arch.key, arch = JSON; or
                                            # key = Net.key, net_config = official net.config JSON)
    DIR/<device>/<table>.journal.jsonl      # rows not yet consolidated into the Parquet file

Every result is appended to the journal and fsync'd the moment it is taken, so Ctrl-C, a crash or
a killed process loses nothing; :meth:`TableStore.consolidate` folds the journal into the Parquet
file (atomically) at the end of a campaign, or at the start of the next one. A row's ``status``
is ``ok`` or ``error`` (with ``error`` saying why); a resumed campaign skips keys that are ``ok``.

Columns (users open these in pandas):
``key``, ``kind`` (op kind or ``arch``), op shape fields and :data:`latbench.features.FEATURE_NAMES`
(op tables), ``arch``/``resolution``/``width_mult`` (arch tables; ``net_config``/``resolution``/
``n_classes`` for networks from official net configs outside the space), ``device``, ``backend``,
``target`` (JSON), ``status``, ``error``, ``mean_ms``, ``median_ms``, ``std_ms``, ``min_ms``,
``max_ms``, ``cv`` (std/mean), timing settings ``number``, ``repeat``, ``min_repeat_ms``,
``warmup``, ``num_threads``, ``max_abs_err`` (vs PyTorch), ``server`` (which RPC server timed
it), ``emulated``, ``build`` (JSON build notes), ``versions`` (JSON), ``host_facts`` and
``device_facts`` (JSON), ``code`` (:func:`code_id` of the code it timed), ``timestamp`` (ISO 8601 UTC).

A row is *done* only for the code that timed it: the fields of :data:`CODE_FIELDS` (backend, target,
backend settings such as the TVM rules' version, thread count). A campaign whose code differs from a
row's times that item again and the new row replaces the old one (:meth:`TableStore.stale_keys`), so
a table never mixes code versions silently; every old visit stays in the visits table.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latbench.errors import LatbenchError
from latbench.files import temp_sibling

log = logging.getLogger(__name__)

#: The row fields that say which code a row timed (see :meth:`TableStore.stale_keys`).
CODE_FIELDS = ("backend", "target", "backend_settings", "num_threads")

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
        frames = [read_table(f) for f in table_paths(p)]
        if not frames:
            raise TableError(f"no tables (*.parquet or *.journal.jsonl) under {p}")
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


#: The long table of every visit beside a latency table (``<table>.visits.parquet``): not a latency table.
VISITS_SUFFIX = ".visits.parquet"


def table_paths(root: str | Path) -> list[Path]:
    """Our tables under ``root``: every ``*.parquet`` but the visits tables (:data:`VISITS_SUFFIX`, one row
    per visit), plus tables that so far exist only as a journal (a campaign still running or interrupted),
    named by their future Parquet path."""
    root = Path(root)
    paths = {p for p in root.rglob("*.parquet") if not p.name.endswith(VISITS_SUFFIX)}
    for j in root.rglob("*.journal.jsonl"):
        paths.add(j.with_name(j.name.replace(".journal.jsonl", ".parquet")))
    return sorted(paths)


def _journal_of(path: Path) -> Path:
    return path.with_name(path.name.replace(".parquet", "") + ".journal.jsonl")


#: Numeric row fields: when present they must be numbers (or null), whatever wrote the line.
NUMERIC_FIELDS = STAT_COLUMNS + ("ci_low_ms", "ci_high_ms", "raw_median_ms", "ref_level_ms", "n_visits",
                                 "n_rejected", "max_abs_err", "tolerance", "number", "repeat")
STATUSES = ("ok", "error")


def row_problem(row: Any) -> str | None:
    """Why ``row`` cannot be a table row (``None`` if it can): a JSON object with a non-empty string ``key``, a
    ``status`` of ok/error, and numbers (or null) in the numeric fields."""
    if not isinstance(row, dict):
        return f"not a JSON object ({type(row).__name__})"
    key = row.get("key")
    if not isinstance(key, str) or not key:
        return "no key" if key is None else f"key is not a non-empty string ({key!r:.40})"
    status = row.get("status", "ok")
    if status is not None and status not in STATUSES:
        return f"status {status!r:.40} is not ok or error"
    for f in NUMERIC_FIELDS:
        v = row.get(f)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return f"{f} is not a number ({v!r:.40})"
    return None


def _read_journal(journal: Path) -> list[dict[str, Any]]:
    """The valid rows of a JSON-lines journal (see :func:`_scan_journal`), with one warning for the others."""
    rows, bad = _scan_journal(journal)
    if bad:
        log.warning("%s: skipped %d bad line(s) (torn, undecodable or malformed); what they held is measured again",
                    journal, len(bad))
    return rows


def _scan_journal(journal: Path) -> tuple[list[dict[str, Any]], list[bytes]]:
    """(valid rows, raw bad lines) of a journal. A line is bad when it is not UTF-8, not JSON, or not a valid row
    (:func:`row_problem`): a torn last line from a killed process, a full disk, or damage."""
    if not journal.exists():
        return [], []
    rows: list[dict[str, Any]] = []
    bad: list[bytes] = []
    try:
        data = journal.read_bytes()
    except OSError as exc:
        raise TableError(f"cannot read journal {journal}: {exc.strerror or exc}") from None
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            bad.append(raw)
            continue
        if row_problem(row) is None:
            rows.append(row)
        else:
            bad.append(raw)
    return rows, bad


def quarantine(journal: Path, bad: list[bytes]) -> Path | None:
    """Keep a journal's bad lines in ``<journal>.quarantine`` (appended) before the journal is rewritten or
    removed, and say so in one warning line; returns that file."""
    if not bad:
        return None
    q = journal.with_name(journal.name + ".quarantine")
    try:
        with q.open("ab") as f:
            f.write(b"".join(b + b"\n" for b in bad))
    except OSError as exc:
        log.warning("%s: %d bad line(s) dropped (cannot keep them in %s: %s)", journal, len(bad), q,
                    exc.strerror or exc)
        return None
    log.warning("%s: %d bad line(s) (torn, undecodable or malformed) quarantined in %s; what they held is "
                "measured again", journal, len(bad), q)
    return q


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
    ok = ok_mask(merged).astype(int)
    merged = merged.assign(_ok=ok, _order=range(len(merged)))
    merged = merged.sort_values(["_ok", "_order"]).drop_duplicates("key", keep="last")
    return merged.sort_values("_order").drop(columns=["_ok", "_order"]).reset_index(drop=True)


def code_id(code: Mapping[str, Any]) -> str:
    """A short stable name of the code a campaign times (its :data:`CODE_FIELDS`), kept with every visit."""
    blob = json.dumps({f: _canonical(code.get(f)) for f in CODE_FIELDS}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _canonical(v: Any) -> Any:
    """A row cell as a comparable value: JSON strings parsed, integral floats (Parquet's) as ints, NaN as None."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, str) and v[:1] in "{[":
        try:
            return json.loads(v)
        except ValueError:
            return v
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def code_difference(row: Mapping[str, Any], code: Mapping[str, Any]) -> str | None:
    """How ``row``'s code differs from ``code`` (``None``: the same); a field ``code`` leaves out (or
    ``None``: not known, e.g. an artifact set built before settings were recorded) is not compared."""
    diffs = []
    for f in CODE_FIELDS:
        want = _canonical(code.get(f))
        if want is None:
            continue
        have = _canonical(row.get(f))
        if have == want:
            continue
        if isinstance(want, dict) and isinstance(have, dict):
            keys = sorted(k for k in {*want, *have} if want.get(k) != have.get(k))
            diffs.append(f"{f} " + ", ".join(f"{k} {have.get(k, 'unset')} → {want.get(k, 'unset')}" for k in keys))
        else:
            diffs.append(f"{f} {'not recorded' if have is None else have} → {want}")
    return "; ".join(diffs) or None


class TableStore:
    """One table on disk: append rows as they are measured, read what is done, consolidate.

    Appends go to a JSON-lines journal that is flushed and fsync'd per row.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.journal = _journal_of(self.path)
        self.visits_journal = self.path.with_name(self.path.name.replace(".parquet", "") + ".visits.jsonl")
        self.visits_path = self.path.with_name(self.path.name.replace(".parquet", "") + VISITS_SUFFIX)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            probe = temp_sibling(self.path.parent / ".write-test")  # its own: two campaigns open one table
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

    def done_keys(self, code: Mapping[str, Any] | None = None) -> set[str]:
        """Keys already measured successfully — with ``code`` (:data:`CODE_FIELDS`), only those timed with
        that code (a resumed campaign skips them)."""
        return self.done_and_stale(code)[0]

    def stale_keys(self, code: Mapping[str, Any] | None) -> dict[str, str]:
        """Key → how its code differed, for the ``ok`` rows timed with other code than ``code`` (an older
        latbench's rules, another thread count or target): a campaign times them again."""
        return self.done_and_stale(code)[1]

    def done_and_stale(self, code: Mapping[str, Any] | None = None) -> tuple[set[str], dict[str, str]]:
        """:meth:`done_keys` and :meth:`stale_keys` from one read of the table."""
        df = self.frame()
        if df.empty:
            return set(), {}
        ok = df.loc[ok_mask(df)]
        stale: dict[str, str] = {}
        if code:
            cols = [c for c in CODE_FIELDS if c in ok]
            for key, *vals in ok[["key", *cols]].itertuples(index=False):
                why = code_difference(dict(zip(cols, vals)), code)
                if why:
                    stale[key] = why
        return set(ok["key"]) - set(stale), stale

    def append(self, row: dict[str, Any]) -> None:
        """Persist one row now (durable on return); a row that could not be read back is refused."""
        problem = row_problem(row)
        if problem:
            raise TableError(f"refusing to write a malformed row to {self.journal}: {problem}")
        _append_line(self.journal, json.dumps(row, default=_json_default, sort_keys=True))

    # -- visits (every timing window of a campaign; resume works at this granularity) ------------------
    def append_visit(self, key: str, visit: dict[str, Any]) -> None:
        """Persist one visit now (durable on return)."""
        _append_line(self.visits_journal, json.dumps({"key": key, **visit}, default=_json_default, sort_keys=True))

    def pending_visits(self, code: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Visits of items not finished yet (an interrupted campaign's), by key, in the order taken; with
        ``code`` (a :func:`code_id`), only the visits taken of that code (the others stay in the journal
        and go to the visits table with their own ``code`` when the item finishes)."""
        out: dict[str, list[dict[str, Any]]] = {}
        other = 0
        for v in _read_journal(self.visits_journal):
            if not (isinstance(v.get("median_ms"), (int, float)) and v["median_ms"] > 0):
                continue
            if code is not None and v.get("code") != code:
                other += 1
                continue
            out.setdefault(v["key"], []).append(v)
        if other:
            log.info("%s: %d visit(s) of an interrupted campaign timed other code (another latbench, backend "
                     "setting or thread count) are not counted", self.visits_journal.name, other)
        return out

    def fold_visits(self, finished: set[str]) -> None:
        """Move the visits of finished items from the journal to ``<table>.visits.parquet`` (a long table)."""
        if not self.visits_journal.exists():
            return
        visits, bad = _scan_journal(self.visits_journal)
        quarantine(self.visits_journal, bad)
        done = [v for v in visits if v["key"] in finished]
        keep = [v for v in visits if v["key"] not in finished]
        try:
            if done:
                new = pd.DataFrame(done)
                old = pd.read_parquet(self.visits_path) if self.visits_path.exists() else pd.DataFrame()
                df = _normalise(pd.concat([old, new], ignore_index=True) if len(old) else new)
                _write_parquet(df, self.visits_path)
            if keep:
                tmp = temp_sibling(self.visits_journal)
                tmp.write_text("".join(json.dumps(v, default=_json_default, sort_keys=True) + "\n" for v in keep))
                os.replace(tmp, self.visits_journal)
            else:
                self.visits_journal.unlink()
        except OSError as exc:  # a full disk: the journal stays as it was, nothing is lost
            raise TableError(f"cannot write {self.visits_path.parent}: {exc.strerror or exc} (disk full?); every "
                             "visit is still in the journal — free space and rerun to resume") from None

    def consolidate(self) -> pd.DataFrame:
        """Fold the journal into the Parquet file (atomic replace) and return the table."""
        df = self.frame()
        if df.empty:
            return df
        df = _normalise(df)
        try:
            _write_parquet(df, self.path)
        except OSError as exc:  # a full disk: the journal is kept, so nothing is lost
            raise TableError(f"cannot write table {self.path}: {exc.strerror or exc} (disk full?); the rows are "
                             f"still in {self.journal.name} — free space and rerun to resume") from None
        if self.journal.exists():
            _, bad = _scan_journal(self.journal)
            quarantine(self.journal, bad)
            self.journal.unlink()
        return df


def _append_line(path: Path, line: str) -> None:
    """Append one line and fsync it; a write that fails (a full disk, a file-size limit) is one clear error and
    leaves at most a torn last line, which readers quarantine."""
    try:
        with path.open("a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise TableError(f"cannot write {path}: {exc.strerror or exc} (disk full?); every result taken before is "
                         "kept — free space and rerun the same command to resume") from None


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` to ``path`` atomically (a temporary file, then a rename)."""
    tmp = temp_sibling(path, ".parquet.tmp")
    try:
        df.to_parquet(tmp, index=False)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot store {type(o).__name__} in a table")


def _numeric_list(v: Any) -> bool:
    if isinstance(v, np.ndarray):  # a list cell read back from Parquet
        return v.dtype.kind in "biuf"
    return isinstance(v, (list, tuple)) and all(isinstance(x, (int, float, bool, np.number, np.bool_)) for x in v)


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Make columns Parquet-friendly: dict cells (and lists of anything but numbers) become JSON strings;
    lists of numbers or booleans (``visits_ms``…) stay Parquet list columns."""
    for col in df.columns:
        if df[col].dtype != object:
            continue
        cells = df[col].dropna()
        if len(cells) and cells.map(_numeric_list).all():
            df[col] = df[col].map(lambda v: [x if isinstance(x, (bool, np.bool_)) else float(x) for x in v]
                                  if isinstance(v, (list, tuple, np.ndarray)) else None)
            continue
        if cells.map(lambda v: isinstance(v, (dict, list, tuple))).any():
            df[col] = df[col].map(lambda v: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list, tuple)) else v)
    return df


def ok_mask(df: pd.DataFrame) -> pd.Series:
    """True for rows whose ``status`` is ``ok`` (a table or row without a status counts as ok)."""
    if "status" not in df:
        return pd.Series(True, index=df.index)
    return df["status"].fillna("ok") == "ok"


def ok_rows(df: pd.DataFrame, value: str = "median_ms") -> pd.DataFrame:
    """Only successfully measured rows with a finite, positive ``value`` (the median)."""
    if df.empty or value not in df:  # a table of error rows only has no latency column
        return df.iloc[:0]
    return df[ok_mask(df) & (pd.to_numeric(df[value], errors="coerce") > 0)]


def error_kinds(df: pd.DataFrame, top: int = 4) -> str:
    """The error rows of a table counted by kind (stage and the error's first phrase), most frequent
    first: ``"3 build: TVMError, 1 run: run failed"`` — one line for the end of a campaign."""
    if df.empty or "status" not in df:
        return ""
    bad = df[df["status"] != "ok"]
    if bad.empty:
        return ""
    def column(name: str, missing: str) -> pd.Series:
        return bad[name].fillna(missing).astype(str) if name in bad else pd.Series(missing, index=bad.index)

    stage, text = column("stage", "?"), column("error", "unknown error")
    kind = stage + ": " + text.str.split(":", n=1).str[0].str.slice(0, 60)
    counts = kind.value_counts()
    parts = [f"{n} {k}" for k, n in counts.head(top).items()]
    if len(counts) > top:
        parts.append(f"{int(counts.iloc[top:].sum())} other")
    return ", ".join(parts)


def concat_tables(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Read and concatenate several tables."""
    frames = [read_table(p) for p in paths]
    if not frames:
        raise TableError("no tables given")
    return pd.concat(frames, ignore_index=True)
