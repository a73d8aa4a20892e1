"""``latbench monotonicity TABLE [TABLE ...]``: do devices rank ops/architectures the same way?"""
from __future__ import annotations

import argparse
import json

from latbench.analysis import format_matrix, load_matrix, rank_correlations


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "monotonicity", help="cross-device rank correlation (Spearman, Kendall) with bootstrap CIs",
        description="Spearman and Kendall rank correlation between every pair of devices over their shared "
                    "entries (op keys or architecture ids), with percentile bootstrap confidence intervals. "
                    "Tables: our long tables (key/device/median_ms; Parquet, CSV or a directory) or wide tables "
                    "(an id column + one latency column per device; CSV(.gz), TSV, Parquet, JSON). Missing, NaN, "
                    "zero and negative latencies (-1 = not measured) are left out pair by pair and counted.")
    p.add_argument("tables", nargs="+", metavar="TABLE", help="table files or directories (one device or many)")
    p.add_argument("--id-column", default=None,
                   help="id column of wide tables (default: the first of key, id, arch_index, arch_str, ...)")
    p.add_argument("--kind", choices=("ops", "archs"), default=None,
                   help="which rows of our long tables to compare (needed when a directory holds both)")
    p.add_argument("--devices", default=None, help="comma-separated device columns to compare (default: all)")
    p.add_argument("--bootstrap", type=int, default=200, metavar="N",
                   help="bootstrap resamples for the confidence intervals (0 = none; default 200)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    p.add_argument("--no-kendall-ci", action="store_true",
                   help="skip Kendall's bootstrap (the slow part on tables of 10k+ entries)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--json", action="store_true",
                   help='print {"spearman": {dev: {dev: rho}}, "kendall": ..., "n": ..., "dropped": ..., CIs}')
    p.add_argument("--heatmap", default=None, metavar="PNG", help="write the Spearman matrix as a heatmap PNG")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
    matrix = load_matrix(args.tables, id_column=args.id_column, devices=devices, kind=args.kind)
    res = rank_correlations(matrix, bootstrap=args.bootstrap, confidence=args.confidence, seed=args.seed,
                            kendall_bootstrap=not args.no_kendall_ci)
    if args.heatmap:
        from latbench.plots import correlation_heatmap  # lazy: imports matplotlib

        correlation_heatmap(res.spearman, f"Spearman ρ over shared entries ({len(matrix)} ids)", args.heatmap)
    if args.json:
        print(json.dumps(res.to_dict(), indent=1))
        return 0
    print(f"{len(res.devices)} devices, {len(matrix)} entries; bootstrap {res.bootstrap} resamples, "
          f"{res.confidence:.0%} intervals\n")
    print("Spearman rho:")
    print(format_matrix(res.spearman))
    print("\nKendall tau-b:")
    print(format_matrix(res.kendall))
    pairs = res.pairs()
    print("\npairs:")
    for r in pairs.itertuples():
        ci_r = f"[{r.spearman_low:.3f}, {r.spearman_high:.3f}]" if res.bootstrap else ""
        has_t = res.bootstrap and r.kendall_low == r.kendall_low  # NaN when tau is undefined
        ci_t = f"[{r.kendall_low:.3f}, {r.kendall_high:.3f}]" if has_t else ""
        print(f"  {r.device_a} vs {r.device_b}: rho={r.spearman:.3f} {ci_r}  tau={r.kendall:.3f} {ci_t}  "
              f"n={r.n} dropped={r.dropped}")
    bad = {d: v for d, v in res.invalid.items() if v["missing"] or v["nonpositive"]}
    if bad:
        print("\nleft out (per device): " + "; ".join(
            f"{d}: {v['missing']} missing/NaN, {v['nonpositive']} zero/negative" for d, v in bad.items()))
    if args.heatmap:
        print(f"\nheatmap: {args.heatmap}")
    return 0
