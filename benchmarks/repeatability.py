"""Benchmark: how repeatable are latency tables across independent campaigns on this machine?

Runs C independent campaigns (fresh tables, cached artifacts) of the space's ops and N random
networks for each setting, the settings interleaved in a shuffled order (A B B A …) so that drift of
the machine hits both alike, and prints per-item CV across campaigns (median, p95, max), the wall
time of each campaign, and the machine's load. Settings: one pass (``--rounds 1``: the whole
``repeat`` budget in one visit per item, the old behaviour) vs the default rounds.

    .venv/bin/python benchmarks/repeatability.py [--campaigns 3] [--archs 30] [--resolution 224]

Goal (issue 12): with the default, per-item CV across campaigns median ≤ 2 %, p95 ≤ 5 %; the default
costs ≤ 1.5× the one-pass campaign.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from latbench.campaign import measure_jobs
from latbench.devices import get_device
from latbench.facts import host_facts
from latbench.jobs import Job
from latbench.space import Space
from latbench.tables import ok_rows, table_path
from predictors.evaluate import sample_archs


#: Named settings of the comparison (anything else: a number of rounds with the device's other settings).
SETTINGS = {"default": {}, "one-pass": {"rounds": 1, "reference": False}}


def cv_stats(tables: list[pd.Series]) -> dict[str, float]:
    m = pd.concat(tables, axis=1).dropna()
    cv = m.std(axis=1, ddof=0) / m.mean(axis=1)
    return {"n": int(len(cv)), "median": 100 * float(cv.median()), "p95": 100 * float(cv.quantile(0.95)),
            "max": 100 * float(cv.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="local-cpu")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--campaigns", type=int, default=3)
    ap.add_argument("--archs", type=int, default=30)
    ap.add_argument("--settings", default="one-pass,default",
                    help="comma-separated settings: 'one-pass' (the old behaviour: --rounds 1, no reference), "
                         "'default' (the device's timing section), or a number of rounds")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--out", default=None, help="keep the tables here (default: a temporary directory)")
    ap.add_argument("--json", default=None, help="also write the figures as JSON")
    args = ap.parse_args()

    device = get_device(args.target)
    space = Space(args.resolution)
    jobs = [Job.op(o) for o in space.distinct_ops()]
    if args.archs:
        jobs += [Job.network(a) for a in sample_archs(space, args.archs, 0)]
    work = Path(args.out or tempfile.mkdtemp(prefix="lb-repeat-"))
    settings = args.settings.split(",")
    # warm the artifact cache (builds are not what is measured here)
    measure_jobs(jobs, device, work / "warm", args.backend, args.cache, rounds=1, max_visits=1, reference=True)
    order = [(s, c) for c in range(args.campaigns) for s in random.Random(c).sample(settings, len(settings))]
    walls: dict[str, list[float]] = {s: [] for s in settings}
    loads = []
    for s, c in order:
        plan = SETTINGS.get(s, {"rounds": int(s)} if s.isdigit() else {})
        out = work / f"rounds-{s}" / f"c{c}"
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        measure_jobs(jobs, device, out, args.backend, args.cache, **plan)
        walls[s].append(time.perf_counter() - t0)
        loads.append((load0, os.getloadavg()[0]))
        print(f"campaign {c + 1} rounds={s}: {walls[s][-1]:.1f} s (load {load0:.2f} → {loads[-1][1]:.2f})", flush=True)

    be = args.backend or "tvm"
    result: dict = {"device": device.name, "backend": be, "resolution": args.resolution, "campaigns": args.campaigns,
                    "archs": args.archs, "timing": device.timing.__dict__ if hasattr(device.timing, "__dict__") else {},
                    "host": host_facts(), "settings": {}}
    print(f"\n{device.name} ({be}), {len(jobs) - args.archs} ops + {args.archs} networks at {args.resolution}, "
          f"{args.campaigns} campaigns per setting, interleaved; load {min(a for a, _ in loads):.2f}–"
          f"{max(max(a, b) for a, b in loads):.2f} on {os.cpu_count()} CPUs")
    print(f"{'setting':<12}{'what':<7}{'n':>4}{'CV median %':>13}{'p95 %':>8}{'max %':>8}{'wall s (min–max)':>20}"
          f"{'unstable':>10}{'rejected %':>12}")
    for s in settings:
        res = {}
        for what in ("ops", "archs") if args.archs else ("ops",):
            tabs, unstable, rej, visits = [], 0, 0, 0
            for c in range(args.campaigns):
                df = ok_rows(pd.read_parquet(table_path(work / f"rounds-{s}" / f"c{c}", device.name, be, what)))
                tabs.append(df.set_index("key")["median_ms"])
                unstable += int(df.get("unstable", pd.Series(False, index=df.index)).fillna(False).sum())
                rej += int(df.get("n_rejected", pd.Series(0, index=df.index)).fillna(0).sum())
                visits += int(df.get("n_visits", pd.Series(1, index=df.index)).fillna(1).sum())
            st = cv_stats(tabs)
            st.update(unstable=unstable, rejected_pct=100 * rej / max(1, visits),
                      sum_ms=[float(t.sum()) for t in tabs])
            res[what] = st
            w = walls[s]
            print(f"{s:<12}{what:<7}{st['n']:>4}{st['median']:>13.2f}{st['p95']:>8.2f}{st['max']:>8.2f}"
                  f"{f'{min(w):.0f}–{max(w):.0f}':>20}{unstable:>10}{st['rejected_pct']:>12.1f}")
        res["wall_s"] = walls[s]
        result["settings"][s] = res
    if len(settings) == 2:
        a, b = settings
        ratio = np.median(walls[b]) / np.median(walls[a])
        print(f"cost: rounds={b} / rounds={a} wall time (medians, same campaigns of ops + networks): {ratio:.2f}×")
        result["cost_ratio"] = float(ratio)
    for s in settings:
        print(f"sum of op medians per campaign, rounds={s}: "
              + " / ".join(f"{x:.2f}" for x in result["settings"][s]["ops"]["sum_ms"]) + " ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"tables in {work}")


if __name__ == "__main__":
    main()
