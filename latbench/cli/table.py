"""``latbench table show PATH``: print a latency table."""
from __future__ import annotations

import argparse

import pandas as pd

from latbench.errors import LatbenchError
from latbench.tables import ok_rows, read_table

DEFAULT_COLUMNS = ["key", "device", "backend", "status", "median_ms", "ci_low_ms", "ci_high_ms", "n_visits",
                   "n_rejected", "std_ms", "min_ms", "num_threads"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table", help="inspect latency tables", description="Inspect latency tables.")
    tsub = p.add_subparsers(dest="table_command", metavar="ACTION", required=True)
    s = tsub.add_parser("show", help="print a table (Parquet/CSV file or a directory of them)",
                        description="Print a latency table (a Parquet or CSV file, or every table under a directory).")
    s.add_argument("path", help="table file or directory")
    s.add_argument("--columns", "-c", default=None, help="comma-separated columns (default: a useful subset)")
    s.add_argument("--all-columns", action="store_true", help="print every column")
    s.add_argument("--csv", action="store_true", help="print as CSV")
    s.add_argument("--head", type=int, default=None, help="only the first N rows")
    s.set_defaults(func=run_show)


def mixed_code(df: pd.DataFrame) -> str | None:
    """A note when one device/backend table holds ok rows of more than one code (column ``code``; rows written
    before latbench recorded it count as unknown code): what a rerun of ``latbench measure`` re-times."""
    if "code" not in df or df.empty:
        return None
    ok = ok_rows(df)
    groups = [c for c in ("device", "backend") if c in ok]
    counts = (ok.assign(code=ok["code"].fillna("unknown")).groupby(groups)["code"].nunique() if groups
              else pd.Series([ok["code"].fillna("unknown").nunique()]))
    mixed = counts[counts > 1]
    if mixed.empty:
        return None
    return (f"{int(mixed.max())} code versions in one table (column code: rows timed with other backend settings, "
            "targets or thread counts); rerunning `latbench measure` with the current code re-times the others")


def run_show(args: argparse.Namespace) -> int:
    df = read_table(args.path)
    mixed = mixed_code(df)
    unstable = df["unstable"].fillna(False).astype(bool) if "unstable" in df else None
    if unstable is not None and unstable.any() and not args.csv:  # never shown as if it were stable
        df = df.assign(key=["* " + k if u else k for k, u in zip(df["key"], unstable)])
    if args.columns:
        cols = [c.strip() for c in args.columns.split(",")]
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise LatbenchError(f"no column {missing[0]!r} in {args.path}; columns: {', '.join(df.columns)}")
        df = df[cols]
    elif not args.all_columns:
        df = df[[c for c in DEFAULT_COLUMNS if c in df.columns]]
    if args.head:
        df = df.head(args.head)
    if args.csv:
        print(df.to_csv(index=False), end="")
    else:
        with pd.option_context("display.max_rows", None, "display.max_colwidth", 90, "display.width", 200):
            print(df.to_string(index=False))
        if unstable is not None and unstable.any():
            print(f"* {int(unstable.sum())} unstable row(s): CI above the target after the visit cap, or every "
                  "visit in a slow moment (columns unstable, unstable_reason)")
        if mixed:
            print(mixed)
    return 0
