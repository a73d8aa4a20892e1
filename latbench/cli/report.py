"""``latbench report``: one self-contained HTML page of tables, predictors, searches and published data."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="write a self-contained HTML report (embedded PNGs)",
        description="Scan a table directory and a runs directory and write one HTML page with embedded figures: "
                    "provenance of every table, per-device op-latency heatmaps, predicted vs measured scatter "
                    "(±10 % band), cross-device rank correlation, search trajectories, and the published HELP "
                    "NAS-Bench-201 latencies from the shared directory ($LATBENCH_SHARED, default ../shared).")
    p.add_argument("--out", "-o", default="report.html", help="output HTML file (default report.html)")
    p.add_argument("--data", default="data", metavar="DIR", help="table directory to scan (default data)")
    p.add_argument("--runs", default="runs", metavar="DIR", help="search runs directory to scan (default runs)")
    p.add_argument("--no-published", action="store_true", help="leave out the published HELP data section")
    p.add_argument("--published", default=None, metavar="CSV",
                   help="published wide table to show "
                        "(default: $LATBENCH_SHARED/data/help-nasbench201/latency_ms.csv.gz)")
    p.add_argument("--no-adapt", action="store_true", help="skip the proxy-adaptation curve on the published data")
    p.add_argument("--bootstrap", type=int, default=100, metavar="N",
                   help="bootstrap resamples for correlation CIs (default 100; 0 = none, fastest)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from latbench.report import build_report  # lazy: imports matplotlib

    out = build_report(args.out, args.data, args.runs, include_help=not args.no_published,
                       help_path=args.published, bootstrap=args.bootstrap, adapt=not args.no_adapt)
    print(f"report: {out.resolve()}")
    return 0
