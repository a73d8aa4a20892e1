#!/usr/bin/env python3
"""Regenerate latbench/data/nasbench201_order.txt.gz (the official NAS-Bench-201 index ↔ string order
shipped with the package) from the published HELP table in the shared directory, and say whether the
shipped file changed.

    python scripts/nb201_order.py [--table PATH]   # default: $LATBENCH_SHARED/data/help-nasbench201/latency_ms.csv.gz
"""
from __future__ import annotations

import argparse
import hashlib
import sys

from latbench.nasbench201 import ORDER_FILE, write_order_file


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", default=None, help="the published HELP latency table (arch_index, arch_str columns)")
    args = p.parse_args()
    before = hashlib.sha256(ORDER_FILE.read_bytes()).hexdigest() if ORDER_FILE.exists() else None
    path = write_order_file(ORDER_FILE, args.table)
    after = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"{path}: {path.stat().st_size} bytes, sha256 {after[:16]} "
          f"({'unchanged' if before == after else 'written'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
