"""Every fault and bad input of the fault-injection suite → outcome, rows lost (goal 0), orphans (goal 0).

Runs ``tests/test_faults.py`` (real processes on loopback: signals at each phase, a killed tracker, a dropped SSH
link, damaged journals, two campaigns on one table, a full disk, the loader fuzzers) with
``$LATBENCH_FAULTS_REPORT`` set, then prints what each case recorded as a table, with the machine's facts.

    .venv/bin/python benchmarks/faults.py [-k EXPR] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-k", default=None, help="only the cases matching this pytest -k expression")
    ap.add_argument("--json", action="store_true", help="print the records as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "faults.jsonl"
        env = {**os.environ, "LATBENCH_FAULTS_REPORT": str(report), "LATBENCH_FUZZ_RANDOM": "1"}  # fresh fuzz draws
        cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_faults.py"), "-q", "-p", "no:cacheprovider",
               "-m", "slow or not slow"]
        if args.k:
            cmd += ["-k", args.k]
        t0 = time.monotonic()
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.monotonic() - t0
        rows = [json.loads(ln) for ln in report.read_text().splitlines()] if report.exists() else []
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"# fault injection — {cpu_model()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the end, "
              f"python {platform.python_version()}; suite wall time {wall:.0f} s")
        w = max([len(r["fault"]) for r in rows] + [5])
        print(f"{'fault':<{w}}  rows lost  orphans  outcome")
        for r in rows:
            print(f"{r['fault']:<{w}}  {r['rows_lost']:>9}  {r['orphans']:>7}  {r['outcome']}")
        print(f"total: {len(rows)} cases, {sum(r['rows_lost'] for r in rows)} rows lost, "
              f"{sum(r['orphans'] for r in rows)} orphans")
    summary = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr[-300:]
    print(f"pytest: {summary}", file=sys.stderr)
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
