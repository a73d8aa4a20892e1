"""Benchmark: each constant of the ``tvm`` rules at its value and at an alternative, on the ops it affects.

The rules' named constants (``latbench/backends/tvm_schedules.py``) each came from a one-off A/B; this script
keeps those A/Bs repeatable. For every constant, a process of its own builds the ops it affects with the
constant as shipped and another with the alternative (set on the module before the build), each build checked
against PyTorch; then one process loads every library and times them interleaved: ``--rounds`` rounds, each
visiting every (constant, value, op) once in a shuffled order, ``--gap-ms`` apart; a visit is the median of 5
repeats of >= 20 ms of the whole op in the Relax VM. Printed per op: both medians and alternative/shipped (the
median of the rounds' ratios, min-max): above 1 means the shipped value is faster. ``TVM_NUM_THREADS`` =
``--threads``.

    .venv/bin/python benchmarks/rule_constants.py                          # every constant
    .venv/bin/python benchmarks/rule_constants.py --only DENSE_UNROLL --rounds 9
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from rules_ab import build_libraries, time_interleaved  # noqa: E402  (the same builds and timing loop)

#: constant → (alternative value, what the alternative means, the ops it affects)
FLIPS: dict[str, tuple[int, str, list[str]]] = {
    "REDUCTION_UNROLL": (1, "conv reductions rolled", [
        "expanded_conv-input:28x28x40-output:28x28x40-expand:6-kernel:3-stride:1-idskip:1",
        "expanded_conv-input:14x14x96-output:14x14x96-expand:6-kernel:3-stride:1-idskip:1",
        "Conv_1-input:7x7x320-output:7x7x1280"]),
    "DENSE_UNROLL": (1, "the classifier's reduction rolled", ["Logits-input:7x7x1280-output:1000"]),
    "SPATIAL_BANDS": (1, "channel-major loops not split into row bands", [
        "expanded_conv-input:112x112x16-output:56x56x24-expand:6-kernel:3-stride:2-idskip:0",
        "expanded_conv-input:56x56x24-output:56x56x24-expand:6-kernel:7-stride:1-idskip:1"]),
    "DEPTHWISE_SPARE_REGISTERS": (999, "large-kernel depthwise rows from the accumulator budget only", [
        "expanded_conv-input:56x56x24-output:56x56x24-expand:6-kernel:7-stride:1-idskip:1",
        "expanded_conv-input:28x28x40-output:28x28x40-expand:6-kernel:5-stride:1-idskip:1"]),
    "PROJECTION_PIXEL_VECTORS": (1, "one pixel vector per projection tile (more output channels)", [
        "expanded_conv-input:56x56x24-output:56x56x24-expand:6-kernel:3-stride:1-idskip:1",
        "expanded_conv-input:112x112x16-output:56x56x24-expand:6-kernel:3-stride:2-idskip:0"]),
    "PREFETCH_TILES_AHEAD": (0, "no software prefetch in 28x28 projections", [
        "expanded_conv-input:28x28x40-output:28x28x40-expand:6-kernel:3-stride:1-idskip:1",
        "expanded_conv-input:56x56x24-output:28x28x40-expand:6-kernel:5-stride:2-idskip:0"]),
    "STRIDED_SPARE_REGISTERS": (999, "the stem's tile from the accumulator budget only", [
        "Conv-input:224x224x3-output:112x112x32"]),
}

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", choices=sorted(FLIPS), help="a constant (repeatable; default all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--gap-ms", type=float, default=50)
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    import latbench.backends.tvm_schedules as rules

    names = args.only or list(FLIPS)
    with tempfile.TemporaryDirectory() as tmp:
        dirs: dict[str, Path] = {}
        for name in names:
            alt, _, keys = FLIPS[name]
            for value in ("shipped", str(alt)):
                d = dirs[f"{name}={value}"] = Path(tmp) / f"{name}-{value}"
                t0 = time.perf_counter()
                build_libraries(ROOT, d, ops=keys, overrides=[] if value == "shipped" else [f"{name}={value}"])
                print(f"built {name}={value} in {time.perf_counter() - t0:.0f} s", flush=True)
        ms = time_interleaved(dirs, args.rounds, args.gap_ms)
    from latbench.facts import host_facts

    facts = host_facts()
    print(f"{args.rounds} interleaved rounds, {args.threads} threads, visits {args.gap_ms:g} ms apart; "
          f"{facts.get('cpu_model')} ({facts.get('llvm_cpu')}), load avg {os.getloadavg()[0]:.1f}")
    for name in names:
        alt, meaning, keys = FLIPS[name]
        print(f"{name} = {getattr(rules, name)} (shipped) vs {alt} ({meaning}):")
        for i, key in enumerate(keys):
            a, b = ms[(f"{name}=shipped", f"op{i:02d}")], ms[(f"{name}={alt}", f"op{i:02d}")]
            ratios = [y / x for x, y in zip(a, b)]
            print(f"  {key[:60]:60s} {statistics.median(a):7.3f} vs {statistics.median(b):7.3f} ms  "
                  f"alt/shipped {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
