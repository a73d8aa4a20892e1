"""Held-out accuracy of the whole-network predictor (``xgb-arch``) against the op-sum LUT, from measured tables.

Reads an archs table (``latbench measure --space nasbench201 --archs N`` or ``--archs N``: rows with ``key``,
``status``, ``median_ms``, and for NAS-Bench-201 ``arch_str``/``arch_index``; never measures anything). For
each k, ``--repeats`` seeded draws pick k networks to fit an :class:`~predictors.ArchGBDTPredictor` on; it is
scored on all the other networks of the table (MAPE, Spearman), and the mean ± std over the draws is printed,
after the table's own noise (median CI half-width of the networks, how many are flagged unstable).
If an op table is given (``--ops``, by default ``ops-<backend>.parquet`` beside the archs table, when it exists),
the op-sum LUT fitted on it (what ``latbench fit-predictor --kind lut --table OPS`` gives) is scored on the same
held-out networks, raw and with its scale/offset calibrated on the same k networks — the fair comparison, since
both then use k measured networks::

    python benchmarks/arch_predictor.py --table runs/our_proxy/local-cpu/archs-torch.parquet
    python benchmarks/arch_predictor.py --table T.parquet --ops O.parquet --ks 50 100 200 --repeats 5 --seed 0
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from latbench.errors import LatbenchError
from latbench.metrics import accuracy_metrics
from latbench.tables import ok_rows, read_table
from predictors import ArchGBDTPredictor, LUTPredictor
from predictors.data import ArchData, arch_data


def draws(n: int, k: int, repeats: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``repeats`` seeded splits of ``n`` networks into k fitted and n − k held out."""
    out = []
    for r in range(repeats):
        perm = np.random.default_rng(seed + r).permutation(n)
        out.append((np.sort(perm[:k]), np.sort(perm[k:])))
    return out


def score(pred: np.ndarray, ms: np.ndarray) -> tuple[float, float]:
    m = accuracy_metrics(pred, ms)
    return m["mape_pct"], m["spearman"]


def summary(rows: list[tuple[float, float]]) -> str:
    a = np.asarray(rows)
    return (f"MAPE {a[:, 0].mean():6.2f} ± {a[:, 0].std():4.2f} %   "
            f"Spearman {a[:, 1].mean():.4f} ± {a[:, 1].std():.4f}")


def noise_note(table: Path) -> str:
    """The measurements' own noise: the median 95 % CI half-width of the networks and how many are unstable."""
    ok = ok_rows(read_table(table))
    parts = []
    if "ci_halfwidth_pct" in ok and ok["ci_halfwidth_pct"].notna().any():
        parts.append(f"median CI ±{float(ok['ci_halfwidth_pct'].median()):.1f} %")
    if "unstable" in ok:
        parts.append(f"{int(ok['unstable'].fillna(False).astype(bool).sum())} of {len(ok)} flagged unstable")
    return "noise: " + ", ".join(parts) if parts else "noise: not recorded"


def fit_lut(ops: Path | None, data: ArchData) -> tuple[LUTPredictor | None, str]:
    """The op-sum LUT of the op table and a note on it (or why there is none)."""
    if ops is None or not ops.exists():
        return None, f"no op table {ops}" if ops else "no op table"
    try:
        lut = LUTPredictor().fit(ops, space=data.space)
        lut.predict(data.archs)  # every network's ops must be in the table
    except LatbenchError as e:
        return None, f"LUT of {ops} unusable: {e}"
    return lut, f"LUT of {ops} ({lut.n_train_} ops)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", required=True, type=Path, help="archs table (archs-<backend>.parquet)")
    ap.add_argument("--ops", type=Path, default=None,
                    help="op table for the LUT (default: ops-<backend>.parquet beside --table, if it exists)")
    ap.add_argument("--ks", type=int, nargs="+", default=[50, 100, 200], help="networks fitted on (default 50 100 200)")
    ap.add_argument("--repeats", type=int, default=5, help="seeded draws per k (default 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-estimators", type=int, default=500, help="xgb-arch boosting rounds (default 500)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    try:
        data = arch_data(args.table)
    except LatbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ops = args.ops or args.table.with_name(args.table.name.replace("archs-", "ops-"))
    lut, note = fit_lut(ops, data)
    lut_ms = np.asarray(lut.predict(data.archs)) if lut is not None else None
    n = len(data.archs)
    print(f"{args.table}: {n} measured {data.space} networks (device {data.device}, backend {data.backend}), "
          f"{data.ms.min():.3f}–{data.ms.max():.3f} ms ({noise_note(args.table)}); {note}; {args.repeats} draws "
          f"per k, seed {args.seed}")
    for k in args.ks:
        if not 2 <= k <= n - 2:
            print(f"k={k}: skipped (the table has {n} networks; need 2 ≤ k ≤ {n - 2})")
            continue
        arch_rows, raw_rows, cal_rows = [], [], []
        for r, (fit, test) in enumerate(draws(n, k, args.repeats, args.seed)):
            pred = ArchGBDTPredictor(n_estimators=args.n_estimators, random_state=args.seed + r)
            pred.fit([data.archs[i] for i in fit], data.ms[fit], space=data.space)
            arch_rows.append(score(np.asarray(pred.predict([data.archs[i] for i in test])), data.ms[test]))
            if lut is not None and lut_ms is not None:
                raw_rows.append(score(lut_ms[test], data.ms[test]))
                lut.fit_calibration([data.archs[i] for i in fit], data.ms[fit])
                cal_rows.append(score(np.asarray(lut.predict([data.archs[i] for i in test])), data.ms[test]))
        print(f"k={k:<4d} held out {n - k:4d}   xgb-arch        {summary(arch_rows)}")
        if raw_rows:
            print(f"{'':22s}LUT (op sum)    {summary(raw_rows)}")
            print(f"{'':22s}LUT calibrated  {summary(cal_rows)}   (scale/offset on the same k)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
