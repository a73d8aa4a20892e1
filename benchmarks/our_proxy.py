"""Benchmark: our own device as the proxy — NAS-Bench-201 networks measured here against the
published HELP devices.

1. measures a fixed seeded sample of NAS-Bench-201 networks (``--n``, default 300, seed 0; the first
   m of the 300 are the draw of m) on ``--target`` (default ``local-cpu``) with each of
   ``--backends`` (default ``tvm,torch``) through ``latbench measure --space nasbench201`` (resumable:
   a rerun measures only what is missing, so a long run can be split);
2. prints, for each of our columns, Spearman ρ and Kendall τ with percentile bootstrap 95 % CIs
   against every device of the HELP table (``$LATBENCH_SHARED``), joined on the cell string, sorted,
   and our backends against each other;
3. prints the adaptation curve (k = 5, 10, 20, 50) from our ``tvm`` column to each published device:
   raw ranking, linear map, + xgboost residual, and xgboost from scratch on the same k samples,
   scored on the remaining measured networks, mean over ``--repeats`` draws.

    .venv/bin/python benchmarks/our_proxy.py                  # 300 networks x 2 backends (hours on 2 cores)
    .venv/bin/python benchmarks/our_proxy.py --n 60           # what fits; the figures say n
    .venv/bin/python benchmarks/our_proxy.py --n 60 --no-measure   # only the analysis of what is measured
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from latbench.adapt import adaptation_curve, data_from_wide, summarize  # noqa: E402
from latbench.analysis import load_matrix, load_published_help, rank_correlations  # noqa: E402
from latbench.facts import host_facts  # noqa: E402
from latbench.nasbench201 import nb201_sample  # noqa: E402
from latbench.paths import help_nb201_csv  # noqa: E402

KS = (5, 10, 20, 50)


def measure(args: argparse.Namespace, backend: str) -> None:
    from latbench.cli import main as latbench

    argv = ["measure", "--space", "nasbench201", "--archs", str(args.n), "--seed", str(args.seed),
            "--target", args.target, "--backend", backend, "--out", str(args.out)]
    t = time.time()
    code = latbench(argv)
    print(f"   measured with {backend}: exit {code}, {time.time() - t:.0f} s  (latbench {' '.join(argv)})")


def our_info(args: argparse.Namespace, want: list[str]) -> dict:
    """Per backend: rows of the sample measured, ok, unstable, median CI half-width, threads."""
    info = {}
    for b in args.backends:
        p = args.out / args.target / f"archs-{b}.parquet"
        if not p.exists():
            print(f"   (no table {p}; skipped)")
            continue
        df = pd.read_parquet(p)
        df = df[df["arch_str"].isin(want)]
        ok = df[df["status"] == "ok"]
        info[b] = {"rows": len(df), "ok": len(ok), "unstable": int(ok["unstable"].sum()) if "unstable" in ok else 0,
                   "median_ci_halfwidth_pct": float(ok["ci_halfwidth_pct"].median()) if len(ok) else float("nan"),
                   "num_threads": int(ok["num_threads"].iloc[0]) if len(ok) else None}
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="networks of the seeded sample (default 300)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    ap.add_argument("--target", default="local-cpu", help="our device (default local-cpu)")
    ap.add_argument("--backends", default="tvm,torch", help="comma-separated backends (default tvm,torch)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "our_proxy", help="table directory")
    ap.add_argument("--no-measure", dest="measure", action="store_false", help="analyse the tables as they are")
    ap.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples of the CIs (default 200)")
    ap.add_argument("--repeats", type=int, default=5, help="draws of the k samples per k (default 5)")
    ap.add_argument("--value", default="median_ms", choices=("median_ms", "raw_median_ms", "min_ms"),
                    help="our latency column (default median_ms, normalised by the reference op; raw_median_ms "
                         "when the machine was so loaded that the reference itself drifted)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args()
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    pd.set_option("display.width", 200)
    t0 = time.time()
    facts = host_facts()
    print(f"machine: {facts.get('cpu_model')}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at start "
          "(a shared VM: other jobs run beside this one)")
    if args.measure:
        print(f"1. measuring {args.n} NAS-Bench-201 networks (seed {args.seed}) on {args.target}")
        for b in args.backends:
            measure(args, b)
    want = [s for _, s in nb201_sample(args.n, args.seed)]
    info = our_info(args, want)
    for b, v in info.items():
        print(f"   {b}: {v['ok']} ok of {v['rows']} rows, {v['unstable']} unstable, median CI half-width "
              f"{v['median_ci_halfwidth_pct']:.1f} %, {v['num_threads']} threads")
    if not info:
        print("nothing measured yet")
        return 1
    help_mat = load_published_help()
    # what `latbench monotonicity OUT/<target> HELP.csv.gz` reads: our long tables joined on arch_str
    # what `latbench monotonicity OUT/<target>/archs-<b>.parquet HELP.csv.gz` reads: joined on arch_str
    cols = {}
    for b in info:
        table = args.out / args.target / f"archs-{b}.parquet"
        if args.value != "median_ms":
            raw = pd.read_parquet(table)
            cols[f"{args.target}/{b}"] = raw[raw["status"] == "ok"].set_index("arch_str")[args.value]
            continue
        one = load_matrix([table, help_nb201_csv()], kind="archs")
        mine = [c for c in one.columns if c not in help_mat.columns]
        cols[f"{args.target}/{b}"] = one[mine[0]]
    ours = pd.DataFrame(cols)
    ours = ours.loc[ours.index.isin(want)].dropna()
    mat = ours.join(help_mat, how="inner")
    print(f"\n   our latency column: {args.value}")
    print(f"\n2. rank correlation with the {help_mat.shape[1]} HELP devices over our {len(mat)} measured networks "
          f"(bootstrap {args.bootstrap}, 95 % CI; HELP table {help_nb201_csv()})")
    out: dict = {"n": int(len(mat)), "info": info, "correlation": {}, "adaptation": {}}
    for col in ours.columns:
        rows = []
        for dev in help_mat.columns:
            r = rank_correlations(mat[[col, dev]], bootstrap=args.bootstrap, seed=1)
            rows.append({"device": dev, "spearman": r.spearman.iloc[0, 1], "rho_low": r.spearman_ci[0].iloc[0, 1],
                         "rho_high": r.spearman_ci[1].iloc[0, 1], "kendall": r.kendall.iloc[0, 1],
                         "tau_low": r.kendall_ci[0].iloc[0, 1], "tau_high": r.kendall_ci[1].iloc[0, 1],
                         "n": int(r.n.iloc[0, 1])})
        tab = pd.DataFrame(rows).sort_values("spearman", ascending=False)
        out["correlation"][col] = json.loads(tab.to_json(orient="records"))
        top, bottom = tab.head(5), tab.tail(5)
        print(f"\n   {col}: top 5 " + ", ".join(f"{r.device} {r.spearman:.3f}" for r in top.itertuples())
              + "; bottom 5 " + ", ".join(f"{r.device} {r.spearman:.3f}" for r in bottom.itertuples()))
        print(f"\n   {col} vs each published device (sorted by rho):")
        for r in tab.itertuples():
            print(f"   {r.device:<15} rho {r.spearman:.3f} [{r.rho_low:.3f}, {r.rho_high:.3f}]   "
                  f"tau {r.kendall:.3f} [{r.tau_low:.3f}, {r.tau_high:.3f}]   n={r.n}")
    if len(ours.columns) > 1:
        r = rank_correlations(mat[list(ours.columns)].dropna(), bootstrap=args.bootstrap, seed=1)
        a, b = ours.columns[:2]
        print(f"\n   {a} vs {b}: rho {r.spearman.loc[a, b]:.3f} [{r.spearman_ci[0].loc[a, b]:.3f}, "
              f"{r.spearman_ci[1].loc[a, b]:.3f}]  tau {r.kendall.loc[a, b]:.3f}")
    proxy = next((c for c in ours.columns if c.endswith("/tvm")), ours.columns[0])
    ks = [k for k in KS if k <= len(mat) - 5]
    print(f"\n3. adaptation from {proxy} to each published device: Spearman on the other measured networks, "
          f"mean over {args.repeats} draws (k = {', '.join(map(str, ks))}; held-out = n - k)")
    curves = []
    for dev in help_mat.columns:
        data = data_from_wide(mat, proxy, dev)
        s = summarize(adaptation_curve(data, ks, repeats=args.repeats, residual="xgboost"))
        curves.append(s.assign(target=dev))
        out["adaptation"][dev] = json.loads(s.to_json(orient="records"))
    allc = pd.concat(curves)
    wide = allc.pivot_table(index="target", columns=["method", "k"], values="spearman")
    for m in dict.fromkeys(allc["method"]):
        print(f"\n   {m}:")
        print("   " + wide[m].round(3).to_string().replace("\n", "\n   "))
    mean = allc.groupby(["method", "k"], sort=False)["spearman"].mean().unstack("k").round(3)
    print("\n   mean over the published devices:")
    print("   " + mean.to_string().replace("\n", "\n   "))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    print(f"\ntotal {time.time() - t0:.0f} s; load {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
