"""Benchmark: profiling the whole space on this machine.

Prints: distinct ops at the resolution; cold time (empty cache, empty table) and warm times (rerun:
nothing to do; re-time with every artifact cached); the coefficient of variation of each op's
median across 3 campaigns; and TVM vs PyTorch eager latency for the same ops, each timed in its
own process. Goals (issue 3): cold ≤ 5 min, warm ≤ 30 s, CV ≤ 3 %, ratio reported.

    .venv/bin/python benchmarks/profile_space.py [--resolution 224] [--backend tvm] [--campaigns 3]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from latbench.backends.base import DEFAULT_BACKEND
from latbench.space import Space
from latbench.tables import table_path


def latbench(*args: str) -> float:
    """Run the CLI in a fresh process; return wall seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "latbench.cli", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--backend", default=DEFAULT_BACKEND)
    ap.add_argument("--target", default="local-cpu")
    ap.add_argument("--campaigns", type=int, default=3)
    ap.add_argument("--keep", default=None, help="keep outputs in this directory")
    args = ap.parse_args()

    work = Path(args.keep or tempfile.mkdtemp(prefix="lb-bench-"))
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    n_ops = len(Space(resolution=args.resolution).distinct_ops())
    common = ["--target", args.target, "--resolution", str(args.resolution), "--cache", str(cache)]
    print(f"distinct ops at {args.resolution}: {n_ops}")

    cold = latbench("measure", *common, "--backend", args.backend, "--out", str(work / "run1"))
    print(f"cold profile (compile + measure {n_ops} ops, {args.backend}): {cold:.1f} s  (goal ≤ 300 s)")
    rerun = latbench("measure", *common, "--backend", args.backend, "--out", str(work / "run1"))
    print(f"warm rerun (same table: nothing left to do): {rerun:.1f} s  (goal ≤ 30 s)")
    runs = [work / "run1"]
    for i in range(2, args.campaigns + 1):
        t = latbench("measure", *common, "--backend", args.backend, "--out", str(work / f"run{i}"))
        runs.append(work / f"run{i}")
        print(f"warm re-time (artifacts cached, new table) #{i}: {t:.1f} s  (goal ≤ 30 s)")

    dev = args.target
    tabs = [pd.read_parquet(table_path(r, dev, args.backend)).set_index("key")["median_ms"] for r in runs]
    m = pd.concat(tabs, axis=1).dropna()
    cv = m.std(axis=1, ddof=0) / m.mean(axis=1)
    print(f"CV of op medians across {len(runs)} campaigns: median {100 * cv.median():.2f} %, "
          f"p90 {100 * cv.quantile(0.9):.2f} %, max {100 * cv.max():.2f} % ({cv.idxmax()})  (goal ≤ 3 %)")

    t = latbench("measure", *common, "--backend", "torch", "--out", str(work / "torch"))
    torch_ms = pd.read_parquet(table_path(work / "torch", dev, "torch")).set_index("key")["median_ms"]
    ratio = (m.iloc[:, 0] / torch_ms).dropna()
    print(f"torch eager profile: {t:.1f} s")
    print(f"{args.backend} / torch eager latency per op: median {ratio.median():.2f}, "
          f"min {ratio.min():.2f}, max {ratio.max():.2f} over {len(ratio)} ops; "
          f"sum {m.iloc[:, 0].sum():.1f} ms vs {torch_ms.sum():.1f} ms")
    print(f"outputs in {work}")


if __name__ == "__main__":
    main()
