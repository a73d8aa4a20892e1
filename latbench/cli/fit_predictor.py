"""``latbench fit-predictor``: fit a LUT or xgboost latency predictor (per op, or ``xgb-arch`` on whole networks)
and save it as a safe ``.pkl``."""
from __future__ import annotations

import argparse
import json

from latbench.errors import LatbenchError
from latbench.spaces import DEFAULT_SPACE, SpaceError, get_space
from latbench.tables import concat_tables, ok_rows
from predictors import ArchGBDTPredictor, BasePredictor, GBDTPredictor, LUTPredictor, save_predictor
from predictors.data import arch_table_space, table_archs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit-predictor", help="fit a latency predictor (LUT or xgboost) from op or architecture tables",
        description="Fit a latency predictor on measured op tables (ops-<backend>.parquet; several may be given, "
                    "all from one device), or with --kind xgb-arch on measured whole networks "
                    "(archs-<backend>.parquet), or import the official ProxylessNAS latency table (YAML), and save "
                    "it as a .pkl that holds plain data only (safe to load).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--table", nargs="+", metavar="PATH",
                     help="op tables (Parquet/CSV files or directories); architecture tables for --kind xgb-arch")
    src.add_argument("--proxylessnas-yaml", metavar="FILE",
                     help="an official-format latency table ({op_key: {count, mean, var}}, ms); gives a LUT")
    p.add_argument("--kind", choices=("lut", "xgb", "xgb-arch"), default="lut",
                   help="lut: sum of measured op latencies; xgb: gradient-boosted trees on op features, which "
                        "also predicts unmeasured ops; xgb-arch: gradient-boosted trees on whole-network features "
                        "(NAS-Bench-201 cell one-hot, ProxylessNAS layer choices) fitted on architecture tables, "
                        "no per-layer latencies, so not for the search (default: lut)")
    p.add_argument("--fallback", action="store_true",
                   help="lut only: fill ops missing from the table with an xgboost model fitted on the same table")
    p.add_argument("--out", "-o", required=True, help="output .pkl path")
    p.add_argument("--resolution", "-r", type=int, default=None,
                   help="deployment resolution (default: inferred from the table's stem ops)")
    p.add_argument("--width", "-w", type=float, default=None, dest="width_mult",
                   help="deployment width multiplier (default: inferred)")
    p.add_argument("--classes", type=int, default=None, dest="n_classes", help="classifier outputs (default: inferred)")
    p.add_argument("--calibration", nargs="+", metavar="ARCH_TABLE", default=None,
                   help="fit the offset/scale calibration on measured whole networks (archs-<backend>.parquet)")
    p.add_argument("--n-estimators", type=int, default=None, help="xgb/xgb-arch only: boosting rounds")
    p.add_argument("--holdout", type=float, default=0.0, metavar="F",
                   help="xgb-arch only: leave a seeded fraction F of the networks out of the fit and report the "
                        "accuracy on them (MAPE, Spearman; also in the file's summary)")
    p.add_argument("--seed", type=int, default=0, help="xgb-arch only: seed of --holdout's draw and the trees")
    p.add_argument("--space", default=None, metavar="NAME",
                   help="search space of the tables (see `latbench spaces`; default: the space the op keys belong "
                        "to, proxylessnas for its tables); nasbench201 fits on `measure --space nasbench201` tables")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def calibration_data(paths: list[str], device: str | None, space: str = DEFAULT_SPACE) -> tuple[list, list[float]]:
    """Archs and measured median ms from arch tables (ok rows; refuses another device's or space's table)."""
    df = concat_tables(paths)
    if "arch" not in df.columns:
        raise LatbenchError(f"{', '.join(paths)}: not an architecture table (no 'arch' column); "
                            "pass archs-<backend>.parquet")
    devices = set(df["device"].dropna()) if "device" in df else set()
    if device and devices and devices != {device}:
        raise LatbenchError(f"calibration tables are from device {', '.join(sorted(devices))} but the op tables "
                            f"from {device!r}; calibrate with the same device's measurements")
    theirs = arch_table_space(df, "calibration tables")
    if theirs != space:
        raise SpaceError(f"the calibration tables hold {theirs} networks but the predictor is for the {space} "
                         "space; calibrate with that space's archs tables")
    archs, ms = table_archs(ok_rows(df), space, "calibration table")
    return archs, [float(v) for v in ms]


def make_predictor(args: argparse.Namespace, space_kw: dict) -> BasePredictor:
    """The unfitted predictor ``--kind`` names, after refusing the options that do not apply to it."""
    if args.fallback and args.kind != "lut":
        raise LatbenchError("--fallback only applies to --kind lut")
    if args.kind != "xgb-arch" and args.holdout:
        raise LatbenchError("--holdout applies to --kind xgb-arch (use `latbench evaluate` for op predictors)")
    xgb_kw = {"n_estimators": args.n_estimators} if args.n_estimators else {}
    if args.kind == "xgb":
        return GBDTPredictor(**xgb_kw)
    if args.kind == "xgb-arch":
        if space_kw or args.calibration:
            raise LatbenchError("--kind xgb-arch learns whole networks as measured: --resolution/--width/--classes "
                                "and --calibration apply to op predictors")
        return ArchGBDTPredictor(holdout=args.holdout, random_state=args.seed, **xgb_kw)
    return LUTPredictor(fallback=GBDTPredictor() if args.fallback else None)


def run(args: argparse.Namespace) -> int:
    space_kw = {k: getattr(args, k) for k in ("resolution", "width_mult", "n_classes") if getattr(args, k)}
    if args.proxylessnas_yaml:
        if args.space and get_space(args.space).name != DEFAULT_SPACE:
            raise SpaceError(f"--proxylessnas-yaml is a {DEFAULT_SPACE} table; drop --space {args.space}")
        if args.kind != "lut":
            raise LatbenchError(f"--proxylessnas-yaml gives a LUT; drop --kind {args.kind} (or fit it on --table)")
        pred = LUTPredictor.from_proxylessnas_yaml(args.proxylessnas_yaml, **space_kw)
    else:
        pred = make_predictor(args, space_kw)
        if args.space:
            space_kw["space"] = get_space(args.space).name
        pred.fit(args.table, **space_kw)
    if args.calibration:
        archs, ms = calibration_data(args.calibration, pred.device_, pred.search_space)
        if not archs:
            raise LatbenchError("the calibration tables hold no successfully measured architectures")
        pred.fit_calibration(archs, ms)
    path = save_predictor(pred, args.out)
    info = {"out": str(path), **pred.describe()}
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        sp = info["space"]
        cal = info["calibration"]
        where = (f"resolution {sp['resolution']}, width {sp['width_mult']:g}" if pred.search_space == DEFAULT_SPACE
                 else f"space {pred.search_space}")
        held = info.get("holdout")
        print(f"{pred.kind} predictor fitted on {info['n_train']} {info.get('trained_on', 'ops')} (device "
              f"{info['device']}, {where}); "
              + (f"held out {held['n']:.0f}: MAPE {held['mape_pct']:.2f} %, Spearman {held['spearman']:.4f}; "
                 if held else "")
              + f"calibration scale {cal['scale']:.4f} offset {cal['offset']:.4f} ms → {path}")
    return 0
