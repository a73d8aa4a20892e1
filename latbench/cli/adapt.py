"""``latbench adapt``: adapt a proxy device's predictor to a target device from k measured samples."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from latbench.adapt import (SELECTIONS, TEMPERATURE, AdaptData, AdaptError, ProxyAdapter, adaptation_curve,
                            check_k, data_from_wide, features_for, format_summary, save_adapter, select_sources,
                            selection_curve, summarize)
from latbench.analysis import is_long, long_to_matrix, read_any, wide_to_matrix
from latbench.nasbench201 import detect_feature_kind
from latbench.tables import ok_mask
from predictors import load_predictor

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adapt", help="adapt a proxy device's predictor to a target device from k samples",
        description="Fit a monotone (linear or isotonic, in log space) map of a proxy's latency predictions plus an "
                    "xgboost residual model on architecture features from k measured target architectures, save it, "
                    "and report on the remaining target entries Spearman and ±10 % accuracy of the raw proxy, the "
                    "adapted proxy and xgboost trained from scratch on the same k samples, for k in --eval-k. "
                    "The proxy is a predictor file (--proxy; the samples table needs an 'arch' JSON column) or a "
                    "device column of a wide table (--proxy-column, e.g. the published NAS-Bench-201 latencies).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--proxy", metavar="PREDICTOR", help="proxy predictor file (.pkl from `latbench fit-predictor`)")
    src.add_argument("--proxy-column", metavar="DEVICE",
                     help="proxy device column of the (wide) samples table; 'auto' chooses and weights the "
                          "proxy among all other device columns from the k samples alone (see --selection)")
    src.add_argument("--sources", metavar="TABLE",
                     help="choose the proxy automatically among the devices of this table (e.g. the published "
                          "HELP table), joined with --samples on the architecture id; implies --proxy-column auto")
    p.add_argument("--samples", required=True, metavar="TABLE",
                   help="target measurements: our arch table (key/arch/device/median_ms) or a wide table")
    p.add_argument("--target", default=None, metavar="DEVICE",
                   help="target device (column of a wide table, or device of a long table; default: the only one)")
    p.add_argument("--id-column", default=None, help="id column of a wide table (default: auto)")
    p.add_argument("--k", type=int, default=10, help="target samples to fit the saved adapter on (default 10)")
    p.add_argument("--out", default=None, metavar="PKL", help="write the adapted model here (plain-data .pkl)")
    p.add_argument("--mapping", choices=("linear", "isotonic"), default="linear",
                   help="monotone map of the proxy's log-latency (default linear = power law)")
    p.add_argument("--residual", choices=("xgboost", "auto", "none"), default="xgboost",
                   help="residual model on features: xgboost (default), auto (xgboost only where 5-fold CV on "
                        "the k samples says it lowers the error; the comparison then shows both), or none "
                        "(keeps the proxy ranking)")
    p.add_argument("--eval-k", default="5,10,20,50", help="k values of the comparison (default 5,10,20,50; '' = none)")
    p.add_argument("--repeats", type=int, default=5, help="random draws of the k samples per k (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample draws")
    p.add_argument("--selection", choices=SELECTIONS, default="soft",
                   help="automatic proxy: soft (default; weight every source by its leave-one-out error of a "
                        "log-linear map on the k samples), best (the single best source) or top3 (mean of the 3 best)")
    p.add_argument("--temperature", type=float, default=TEMPERATURE,
                   help=f"softness of --selection soft (default {TEMPERATURE}; smaller = closer to best)")
    p.add_argument("--compare-proxy", default=None, metavar="DEVICE",
                   help="with an automatic proxy: also score this fixed proxy column on the same draws")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def _data_from_predictor(args: argparse.Namespace):
    pred = load_predictor(args.proxy)
    df = read_any(args.samples)
    if "arch" not in df.columns:
        raise AdaptError(f"{args.samples}: no 'arch' column (architecture JSON); --proxy needs an architecture "
                         "table such as DIR/<device>/archs-<backend>.parquet")
    df = df[df["arch"].notna()]  # networks from net configs outside the space have no arch JSON
    if is_long(df):
        devices = sorted(df["device"].astype(str).unique())
        target = args.target or (devices[0] if len(devices) == 1 else None)
        if target is None:
            raise AdaptError(f"{args.samples} holds devices {', '.join(devices)}; choose one with --target")
        if target not in devices:
            raise AdaptError(f"target device {target!r} missing from {args.samples}; it has {', '.join(devices)}")
        df = df[df["device"].astype(str) == target]
        df = df[ok_mask(df)]
        y = df["median_ms"].to_numpy(dtype=float)
    else:
        if not args.target:
            raise AdaptError(f"{args.samples} is a wide table; name the target latency column with --target")
        if args.target not in df.columns:
            raise AdaptError(f"target device column {args.target!r} missing from {args.samples}")
        target, y = args.target, df[args.target].to_numpy(dtype=float)
    archs = df["arch"].astype(str).tolist()
    proxy_ms = np.asarray(pred.predict(archs), dtype=float)
    data = AdaptData.build(archs, proxy_ms, y, None, f"predictor {Path(args.proxy).name}", target)
    data.features = features_for(list(data.ids), "arch") if len(data) else None
    return data, {"proxy_kind": "predictor", "proxy": str(args.proxy), "target": target, "feature_kind": "arch"}


def _matrix_of(path: str, id_column: str | None) -> tuple[pd.DataFrame, dict[str, str]]:
    """A samples/sources table as a latency matrix, and the arch JSON of our arch tables' ids."""
    raw = read_any(path)
    id_col = "arch_str" if "arch_str" in raw.columns else id_column
    arch_json: dict[str, str] = {}
    if is_long(raw):
        matrix = long_to_matrix(raw, kind="archs" if "arch" in raw.columns else None, source=str(path))
        if "arch" in raw.columns and "arch_str" not in raw.columns:  # NAS-Bench-201 rows: ids are cell strings
            arch_json = dict(zip(raw["key"].astype(str), raw["arch"].astype(str)))
    else:
        matrix = wide_to_matrix(raw, id_col, None, str(path))
    return matrix, arch_json


def _data_from_column(args: argparse.Namespace):
    raw = read_any(args.samples)
    # A NAS-Bench-201 table: the cell string is the id, so features can be derived from it.
    id_col = "arch_str" if "arch_str" in raw.columns else args.id_column
    arch_json: dict[str, str] = {}
    if is_long(raw):
        # Our arch tables of several devices (e.g. a directory): features from the arch JSON.
        matrix = long_to_matrix(raw, kind="archs" if "arch" in raw.columns else None, source=str(args.samples))
        if "arch" in raw.columns and "arch_str" not in raw.columns:  # NAS-Bench-201 rows: ids are cell strings
            arch_json = dict(zip(raw["key"].astype(str), raw["arch"].astype(str)))
    else:
        matrix = wide_to_matrix(raw, id_col, None, str(args.samples))
    target = args.target
    if target is None:
        others = [c for c in matrix.columns if c != args.proxy_column]
        if len(others) != 1:
            raise AdaptError(f"{args.samples} has {len(others)} device columns besides the proxy; choose the "
                             "target with --target")
        target = others[0]
    if arch_json:
        data = data_from_wide(matrix, args.proxy_column, target, feature_kind=None)
        data.features = features_for([arch_json[i] for i in data.ids], "arch") if len(data) else None
        return data, {"proxy_kind": "column", "proxy": args.proxy_column, "target": target, "feature_kind": "arch"}
    data = data_from_wide(matrix, args.proxy_column, target)
    kind = "nb201" if data.features is not None else None
    return data, {"proxy_kind": "column", "proxy": args.proxy_column, "target": target, "feature_kind": kind}


def _parse_eval_ks(text: str | None) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()] if text else []
    except ValueError:
        raise AdaptError(f"--eval-k must be comma-separated integers, got {text!r}") from None


def run_auto(args: argparse.Namespace) -> int:
    """The proxy chosen and weighted among many source devices from the k target samples alone."""
    matrix, arch_json = _matrix_of(args.samples, args.id_column)
    if args.sources:
        src, src_json = _matrix_of(args.sources, args.id_column)
        arch_json = {**src_json, **arch_json}
        shared = matrix.index.intersection(src.index)
        if not len(shared):
            raise AdaptError(f"{args.samples} and {args.sources} share no architecture id (are they of the same "
                             f"space? ids look like {matrix.index[0]!r} and {src.index[0]!r})")
        target = args.target
        if target is None:
            if len(matrix.columns) != 1:
                raise AdaptError(f"{args.samples} has {len(matrix.columns)} device columns; choose the target "
                                 "with --target")
            target = str(matrix.columns[0])
        if target not in matrix.columns:
            raise AdaptError(f"target device column {target!r} missing from {args.samples}; it has "
                             f"{', '.join(map(str, matrix.columns))}")
        src = src.drop(columns=[c for c in src.columns if c == target])
        matrix = matrix[[target]].join(src, how="inner")
    else:
        target = args.target
        if target is None:
            raise AdaptError(f"--proxy-column auto chooses among the other columns of {args.samples}; name the "
                             "target with --target")
        if target not in matrix.columns:
            raise AdaptError(f"target device column {target!r} missing from {args.samples}; it has "
                             f"{', '.join(map(str, matrix.columns))}")
    sources = [str(c) for c in matrix.columns if c != target]
    if not sources:
        raise AdaptError(f"no source devices besides the target {target!r}")
    if args.compare_proxy is not None and args.compare_proxy not in matrix.columns:
        raise AdaptError(f"--compare-proxy {args.compare_proxy!r} is not a device column; columns are: "
                         f"{', '.join(map(str, matrix.columns))}")
    ids = [str(i) for i in matrix.index]
    kind = "arch" if arch_json else detect_feature_kind(ids)
    feats = None
    if kind and args.residual != "none":
        feats = features_for([arch_json[i] for i in ids] if kind == "arch" else ids, kind)
    t_all = matrix[target].to_numpy(dtype=float)
    valid = np.flatnonzero(np.isfinite(t_all) & (t_all > 0))
    if args.k < 3:
        raise AdaptError(f"--k must be at least 3 to choose a proxy (a leave-one-out fit), got {args.k}")
    if args.k > len(valid):
        raise AdaptError(f"k={args.k} is larger than the {len(valid)} entries with a valid {target!r} latency")
    if args.repeats < 1:
        raise AdaptError(f"--repeats must be >= 1, got {args.repeats}")
    S = matrix[sources].to_numpy(dtype=float)
    pick = valid[np.random.default_rng(args.seed).permutation(len(valid))[: args.k]]
    mix = select_sources(S[pick], t_all[pick], sources, args.selection, args.temperature)
    residual = args.residual if feats is not None else "none"
    adapter = ProxyAdapter(args.mapping, residual, seed=args.seed).fit(
        mix.predict(S[pick]), t_all[pick], None if feats is None else feats[pick])
    meta = {"proxy_kind": "auto", "proxy": f"auto ({args.selection})", "target": target, "feature_kind": kind,
            "sources": mix.get_state()}
    result: dict = {**meta, "k": args.k, "n_available": int(len(valid)), "mapping": args.mapping,
                    "residual": residual, "chosen": mix.ranked(), "slope": adapter.slope_,
                    "intercept": adapter.intercept_}
    if args.out:
        save_adapter(args.out, adapter, {**meta, "k": args.k, "samples": str(args.samples),
                                         "sample_ids": [ids[i] for i in pick], "mapping": args.mapping,
                                         "residual": residual})
        result["out"] = str(args.out)
    eval_ks = [k for k in _parse_eval_ks(args.eval_k) if 3 <= k <= len(valid) - 3]
    summary = None
    if eval_ks:
        curve = selection_curve(matrix, target, eval_ks, args.repeats, args.seed, args.selection, args.temperature,
                                sources, args.compare_proxy, residual, args.mapping, feats)
        summary = summarize(curve)
        result["curve"] = json.loads(summary.to_json(orient="records"))
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"target: {target}  sources: {len(sources)} devices  entries with a target latency: {len(valid)}")
    print(f"proxy chosen from k={args.k} samples ({args.selection}): {mix.describe(5)}")
    print(f"adapter: {args.mapping} map in log space (slope {adapter.slope_:.3f}, intercept {adapter.intercept_:.3f})"
          f"{' + xgboost residual' if adapter.use_residual_ else ''}")
    if summary is not None:
        print(f"\nheld-out entries, mean over {args.repeats} draws; the proxy is re-chosen from each draw's k "
              "samples (rho = Spearman, acc = within ±10%):")
        print(format_summary(summary))
    if args.out:
        print(f"\nsaved: {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.sources or args.proxy_column == "auto":
        return run_auto(args)
    data, meta = _data_from_predictor(args) if args.proxy else _data_from_column(args)
    check_k(args.k, data)
    eval_ks = _parse_eval_ks(args.eval_k)
    too_big = [k for k in eval_ks if k > len(data) - 3]
    if too_big:
        log.warning("skipping --eval-k %s: only %d entries (need k + 3)", too_big, len(data))
    eval_ks = [k for k in eval_ks if k <= len(data) - 3]
    if args.repeats < 1:
        raise AdaptError(f"--repeats must be >= 1, got {args.repeats}")

    residual = args.residual if data.features is not None else "none"
    if residual != args.residual:
        log.warning("no features for these ids (not NAS-Bench-201 cells or arch JSON): fitting the map only")
    rng = np.random.default_rng(args.seed)
    pick = rng.permutation(len(data))[: args.k]
    adapter = ProxyAdapter(args.mapping, residual, seed=args.seed).fit(
        data.proxy[pick], data.target[pick], None if data.features is None else data.features[pick])
    result: dict = {**meta, "k": args.k, "n_available": len(data), "mapping": args.mapping, "residual": residual,
                    "slope": adapter.slope_, "intercept": adapter.intercept_}
    if args.out:
        meta_file = {**meta, "k": args.k, "samples": str(args.samples), "sample_ids": [str(i) for i in data.ids[pick]],
                     "mapping": args.mapping, "residual": residual}
        save_adapter(args.out, adapter, meta_file)
        result["out"] = str(args.out)
    summary = None
    if eval_ks:
        curve = adaptation_curve(data, eval_ks, repeats=args.repeats, seed=args.seed, mapping=args.mapping,
                                 residual=residual)
        summary = summarize(curve)
        result["curve"] = json.loads(summary.to_json(orient="records"))
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"proxy: {meta['proxy']} ({meta['proxy_kind']})  target: {meta['target']}  "
          f"entries with both: {len(data)}")
    print(f"adapter: {args.mapping} map in log space (slope {adapter.slope_:.3f}, intercept {adapter.intercept_:.3f})"
          f"{' + xgboost residual' if adapter.use_residual_ else ''}, fitted on k={args.k} samples")
    if summary is not None:
        print(f"\nheld-out entries, mean over {args.repeats} draws (rho = Spearman, acc = within ±10%):")
        print(format_summary(summary))
    if args.out:
        print(f"\nsaved: {args.out}")
    return 0
