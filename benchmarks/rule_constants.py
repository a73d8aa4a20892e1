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
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

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
    "STRIDED_SPARE_REGISTERS": (999, "the stem's tile from the accumulator budget only", [
        "Conv-input:224x224x3-output:112x112x32"]),
}

BUILD = r"""
import json, sys
from pathlib import Path
out, name, value, keys = Path(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
import numpy as np, torch, tvm
from tvm import relax
import latbench.backends.tvm_schedules as rules
from latbench.backends.base import get_backend
from latbench.devices import get_device
from latbench.jobs import Job
if value != "shipped":
    setattr(rules, name, int(value))
out.mkdir(parents=True, exist_ok=True)
for i, key in enumerate(keys):
    module, x = Job(key, "ops").module_and_input()
    notes = get_backend("tvm").build(module, x, get_device("local-cpu"), out / f"op{i}.so")
    with torch.no_grad():
        want = module(x).numpy()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(out / f"op{i}.so")), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x.numpy(), tvm.cpu())).numpy()
    err = float(np.abs(got - want).max() / max(1e-6, float(np.abs(want).max())))
    assert err < 1e-3, (key, err)
    print(json.dumps({"op": i, "unscheduled": len(notes.get("fallbacks") or []), "error": err}), flush=True)
"""


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
        libs: dict[tuple[str, str, int], Path] = {}
        for name in names:
            alt, _, keys = FLIPS[name]
            for value in ("shipped", str(alt)):
                d = Path(tmp) / f"{name}-{value}"
                t0 = time.perf_counter()
                r = subprocess.run([sys.executable, "-c", BUILD, str(d), name, value, json.dumps(keys)],
                                   capture_output=True, text=True, timeout=3600, cwd=ROOT,
                                   env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)})
                if r.returncode:
                    print(f"build of {name}={value} failed:\n{r.stderr[-2000:]}", file=sys.stderr)
                    return 1
                unscheduled = sum(json.loads(line)["unscheduled"] for line in r.stdout.splitlines())
                print(f"built {name}={value} ({len(keys)} ops, {unscheduled} functions unscheduled) "
                      f"in {time.perf_counter() - t0:.0f} s", flush=True)
                for i in range(len(keys)):
                    libs[(name, value, i)] = d / f"op{i}.so"
        import tvm
        from tvm import relax

        from latbench.facts import host_facts
        from latbench.jobs import Job

        dev = tvm.cpu()
        evals, inputs = {}, {}
        for (name, value, i), lib in libs.items():
            key = FLIPS[name][2][i]
            if key not in inputs:
                inputs[key] = tvm.runtime.tensor(Job(key, "ops").module_and_input()[1].numpy(), dev)
            vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), dev)
            evals[(name, value, i)] = vm.time_evaluator("main", dev, number=1, repeat=5, min_repeat_ms=20)
        ms: dict[tuple[str, str, int], list[float]] = {k: [] for k in evals}
        for r in range(args.rounds):
            for k in random.Random(r).sample(list(evals), len(evals)):
                time.sleep(args.gap_ms / 1e3)
                ms[k].append(statistics.median(evals[k](inputs[FLIPS[k[0]][2][k[2]]]).results) * 1e3)
    facts = host_facts()
    print(f"{args.rounds} interleaved rounds, {args.threads} threads, visits {args.gap_ms:g} ms apart; "
          f"{facts.get('cpu_model')} ({facts.get('llvm_cpu')}), load avg {os.getloadavg()[0]:.1f}")
    for name in names:
        alt, meaning, keys = FLIPS[name]
        print(f"{name} = {getattr(rules, name)} (shipped) vs {alt} ({meaning}):")
        for i, key in enumerate(keys):
            a, b = ms[(name, "shipped", i)], ms[(name, str(alt), i)]
            ratios = [y / x for x, y in zip(a, b)]
            print(f"  {key[:60]:60s} {statistics.median(a):7.3f} vs {statistics.median(b):7.3f} ms  "
                  f"alt/shipped {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
