"""Benchmark: cross-device monotonicity and proxy adaptation on the published HELP NAS-Bench-201
latencies (15,625 architectures × 27 device settings, MIT; ``$LATBENCH_SHARED/data/help-nasbench201``).

Prints
1. the Spearman matrix of all devices (and Kendall summary), per device its best proxy with a
   bootstrap 95 % CI;
2. the adaptation curve (Spearman and ±10 % accuracy on held-out architectures vs k) for a few
   proxy → target pairs, comparing raw proxy, proxy + monotone map, + xgboost residual, and
   xgboost from scratch on the same k samples;
3. "one proxy for all": one fixed proxy adapted to every other device, mean over targets;
4. automatic proxy selection: for every target, the sources (all other devices; and, stricter, all
   devices of other hardware, i.e. without the same GPU at another batch size) are chosen and
   weighted from the k target samples alone, then mapped; per target and k, mean and spread over
   the draws, side by side with the fixed proxy (``--fixed``, default gold_6226) on the same draws.

    .venv/bin/python benchmarks/proxy_adaptation.py [--repeats 5] [--bootstrap 200] [--proxy gold_6226]
    .venv/bin/python benchmarks/proxy_adaptation.py --only selection [--selection soft] [--repeats 10]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latbench.adapt import SELECTIONS, adaptation_curve, data_from_wide, selection_curve, summarize  # noqa: E402
from latbench.analysis import format_matrix, load_published_help, rank_correlations  # noqa: E402

PAIRS = [("pixel3", "raspi4"), ("gold_6226", "raspi4"), ("titan_rtx_1", "samsung_a50"),
         ("1080ti_1", "eyeriss"), ("silver_4114", "fpga"), ("2080ti_32", "pixel2")]
KS = (5, 10, 20, 50)
#: HELP's meta-test devices (HayeonLee/HELP script/run_nas_metad2a.sh), where HELP reports 0.932 at 10 samples.
HELP_TEST = ("titan_rtx_256", "gold_6226", "fpga", "pixel2", "raspi4", "eyeriss")
#: HELP's meta-training devices (same script): the only sources of its protocol.
HELP_TRAIN = ("1080ti_1", "1080ti_32", "1080ti_256", "silver_4114", "silver_4210r", "samsung_a50", "pixel3",
              "essential_ph_1", "samsung_s7")


def hardware(device: str) -> str:
    """The machine behind a HELP column: GPUs appear at batch sizes 1/32/256 (``titan_rtx_32``)."""
    return re.sub(r"_(1|32|256)$", "", device) if re.search(r"(ti|titan|rtx|xp|titanx)_(1|32|256)$", device) else device


def selection_study(mat: pd.DataFrame, repeats: int, selection: str, fixed: str, strict: bool,
                    residual: str = "none", help_protocol: bool = False) -> pd.DataFrame:
    """Section 4: automatic selection vs a fixed proxy, every target, the same draws. ``help_protocol``:
    only HELP's six test devices as targets and its nine meta-training devices as sources."""
    from latbench.adapt import features_for

    feats = features_for(list(mat.index), "nb201") if residual != "none" else None
    rows = []
    for target in (HELP_TEST if help_protocol else mat.columns):
        sources = [c for c in (HELP_TRAIN if help_protocol else mat.columns)
                   if c != target and not (strict and hardware(c) == hardware(target))]
        rows.append(selection_curve(mat, target, KS, repeats=repeats, seed=0, selection=selection,
                                    sources=sources, fixed_proxy=fixed, residual=residual, features=feats))
    return pd.concat(rows, ignore_index=True)


def print_selection(curve: pd.DataFrame, title: str) -> dict:
    """Per target Spearman at k=10 (mean ± std over draws), then the mean over targets per k with the
    spread of that mean over draws."""
    print(f"\n   {title}")
    k10 = curve[curve["k"] == 10]
    per = k10.groupby(["target", "method"])["spearman"].agg(["mean", "std"]).unstack("method")
    methods = list(dict.fromkeys(curve["method"]))
    cells = pd.DataFrame({m: [f"{a:.3f} ± {b:.3f}" for a, b in zip(per[("mean", m)], per[("std", m)])]
                          for m in methods}, index=per.index)
    cells["chosen (first draw)"] = k10[k10["repeat"] == 0].drop_duplicates("target").set_index("target")["chosen"]
    print("   Spearman at k=10 per target, mean ± std over draws:")
    print(cells.to_string())
    # mean over targets within each draw, then mean and spread of that over draws
    per_draw = curve.groupby(["k", "method", "repeat"])["spearman"].mean()
    agg = per_draw.groupby(["k", "method"]).agg(["mean", "std", "min", "max"]).unstack("k")
    print("   mean Spearman over targets (mean ± std over draws [min, max]):")
    for m in methods:
        line = "  ".join(f"k={k}: {agg.loc[m, ('mean', k)]:.3f} ± {agg.loc[m, ('std', k)]:.3f} "
                         f"[{agg.loc[m, ('min', k)]:.3f}, {agg.loc[m, ('max', k)]:.3f}]" for k in KS)
        print(f"   {m:<32} {line}")
    sub = curve[curve["target"].isin(HELP_TEST)]
    sub_draw = sub.groupby(["k", "method", "repeat"])["spearman"].mean().groupby(["k", "method"]).agg(["mean", "std"])
    print(f"   mean over HELP's six test devices ({', '.join(HELP_TEST)}):")
    for m in methods:
        line = "  ".join(f"k={k}: {sub_draw.loc[(k, m), 'mean']:.3f} ± {sub_draw.loc[(k, m), 'std']:.3f}"
                         for k in KS if (k, m) in sub_draw.index)
        print(f"   {m:<32} {line}")
    return {m: {int(k): float(agg.loc[m, ("mean", k)]) for k in KS} for m in methods}


def curve_rows(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    wide = summary.pivot(index="method", columns="k", values=metric)
    wide = wide.reindex(list(dict.fromkeys(summary["method"])))
    wide.columns = [f"k={k}" for k in wide.columns]
    return wide


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="random draws of the k samples per k")
    ap.add_argument("--bootstrap", type=int, default=200, help="resamples for the best-proxy CIs")
    ap.add_argument("--proxy", default=None, help="proxy of the one-for-all study (default: best mean rho)")
    ap.add_argument("--mapping", default="linear", choices=("linear", "isotonic"))
    ap.add_argument("--json", default=None, metavar="PATH", help="also write every figure as JSON")
    ap.add_argument("--only", choices=("all", "selection"), default="all", help="run every section or only 4")
    ap.add_argument("--selection", choices=SELECTIONS, default="soft", help="automatic selection method (4)")
    ap.add_argument("--fixed", default="gold_6226", help="fixed proxy compared with the selection (4)")
    ap.add_argument("--residual", choices=("none", "auto", "xgboost"), default="none",
                    help="residual model on top of the selected proxy (4; auto/xgboost take ~10x longer)")
    args = ap.parse_args()
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 40)
    t0 = time.time()
    mat = load_published_help()
    print(f"published HELP NAS-Bench-201 table: {mat.shape[0]} architectures x {mat.shape[1]} devices\n")

    if args.only == "selection":
        return selection_main(mat, args, t0)
    res = rank_correlations(mat, bootstrap=0)
    print("1. Spearman rho between devices (all 15,625 architectures):")
    print(format_matrix(res.spearman, digits=2, width=5))
    off = res.spearman.to_numpy()[~np.eye(len(res.devices), dtype=bool)]
    offk = res.kendall.to_numpy()[~np.eye(len(res.devices), dtype=bool)]
    print(f"\n   off-diagonal Spearman: median {np.median(off):.3f}, min {off.min():.3f}, max {off.max():.3f}; "
          f"share of pairs >= 0.9: {np.mean(off >= 0.9):.0%}")
    print(f"   off-diagonal Kendall:  median {np.median(offk):.3f}, min {offk.min():.3f}, max {offk.max():.3f}\n")
    best = []
    for d in res.devices:
        s = res.spearman[d].drop(d)
        p = s.idxmax()
        pair = rank_correlations(mat[[d, p]], bootstrap=args.bootstrap, seed=1)
        best.append({"device": d, "best_proxy": p, "spearman": round(s.max(), 4),
                     "ci95": f"[{pair.spearman_ci[0].iloc[0, 1]:.4f}, {pair.spearman_ci[1].iloc[0, 1]:.4f}]",
                     "kendall": round(res.kendall.loc[d, p], 4),
                     "kendall_ci95": f"[{pair.kendall_ci[0].iloc[0, 1]:.4f}, {pair.kendall_ci[1].iloc[0, 1]:.4f}]",
                     "worst_proxy": s.idxmin(), "worst_spearman": round(s.min(), 4)})
    best_df = pd.DataFrame(best)
    print(f"   best proxy per device (bootstrap {args.bootstrap} resamples, 95 % CI):")
    print(best_df.to_string(index=False))

    out: dict = {"spearman": res.to_dict()["spearman"], "kendall": res.to_dict()["kendall"],
                 "best_proxy": best, "pairs": {}, "one_for_all": {}}
    print(f"\n2. adaptation curves ({args.mapping} map; mean over {args.repeats} draws; held-out = all other archs)")
    for proxy, target in PAIRS:
        t = time.time()
        data = data_from_wide(mat, proxy, target)
        s = summarize(adaptation_curve(data, KS, repeats=args.repeats, mapping=args.mapping, residual="auto"))
        print(f"\n   {proxy} -> {target} (rho(proxy, target) = {res.spearman.loc[proxy, target]:.3f}; "
              f"{time.time() - t:.0f} s)")
        print("   Spearman:")
        print(curve_rows(s, "spearman").round(3).to_string())
        print("   within ±10 %:")
        print(curve_rows(s, "acc10").round(3).to_string())
        out["pairs"][f"{proxy}->{target}"] = json.loads(s.to_json(orient="records"))

    proxy = args.proxy or res.spearman.mean().idxmax()
    why = "chosen" if args.proxy else "highest mean rho"
    print(f"\n3. one proxy for all: {proxy} ({why}) adapted to each of the other "
          f"{len(res.devices) - 1} devices; mean over targets")
    t = time.time()
    rows = []
    for target in res.devices:
        if target == proxy:
            continue
        data = data_from_wide(mat, proxy, target)
        s = summarize(adaptation_curve(data, KS, repeats=max(1, args.repeats // 2), mapping=args.mapping))
        rows.append(s.assign(target=target))
    allt = pd.concat(rows)
    agg = allt.groupby(["k", "method"], sort=False)[["spearman", "acc10"]].mean().reset_index()
    print(f"   ({time.time() - t:.0f} s)")
    print("   mean Spearman over targets:")
    print(curve_rows(agg, "spearman").round(3).to_string())
    print("   mean within ±10 % over targets:")
    print(curve_rows(agg, "acc10").round(3).to_string())
    k20 = allt[allt["k"] == 20].pivot(index="target", columns="method", values="spearman")
    wins = (k20[f"proxy + {args.mapping} map + xgb residual"] > k20["xgboost from scratch"]).mean()
    print(f"   at k=20, adapted proxy beats from-scratch Spearman on {wins:.0%} of targets")
    out["one_for_all"] = {"proxy": proxy, "mean": json.loads(agg.to_json(orient="records"))}
    out["selection"] = selection_sections(mat, args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"\ntotal {time.time() - t0:.0f} s")
    return 0


def selection_sections(mat: pd.DataFrame, args: argparse.Namespace) -> dict:
    print(f"\n4. automatic proxy selection ({args.selection}) from the k target samples alone, "
          f"{args.repeats} draws per k; fixed proxy {args.fixed} on the same draws; residual {args.residual}")
    out = {}
    for name, strict, proto, title in (
            ("all", False, False, "sources: all other devices"),
            ("strict", True, False, "sources: all devices of other hardware (no same GPU at another batch size)"),
            ("help_protocol", False, True, "HELP's protocol: sources = its 9 meta-training devices, targets = its "
                                           "6 test devices")):
        t = time.time()
        curve = selection_study(mat, args.repeats, args.selection, args.fixed, strict, args.residual, proto)
        out[name] = print_selection(curve, f"{title} ({time.time() - t:.0f} s)")
    return out


def selection_main(mat: pd.DataFrame, args: argparse.Namespace, t0: float) -> int:
    out = selection_sections(mat, args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"\ntotal {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
