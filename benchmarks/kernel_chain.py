"""Benchmark: where a network's time goes between its kernels — each kernel alone vs the same kernels as a chain.

Builds one op or network with the ``tvm`` rules, then times, interleaved over ``--rounds`` rounds:

* ``vm``      the whole module in the Relax VM (what latbench measures);
* ``chain``   its kernels called in the VM's order, each reading what the previous wrote, on buffers reused as
              the VM's pooled allocator reuses them (the VM minus its bookkeeping);
* ``alone``   each kernel repeated on its own buffers (its inputs and weights stay in its core's caches).

``--pairs`` times each kernel right after each kernel of the chain (itself included), interleaved. A kernel that is
slow only after one particular kernel writes lines which that kernel's threads left in *other* cores' caches (each
store waits for an invalidation). Seen on a 2-vCPU EPYC (znver4, December 7) in the 7×7 expand-3 7×7 block: the
depthwise conv 0.051 ms after the expand, 0.060-0.152 ms after the projection, whose threads each read every channel
of the buffer the depthwise conv writes next (0.034-0.048 when the projection read a copy instead); the size of the
penalty moved from process to process (where the VM's vCPUs sat on the host).

``chain`` ≫ ``alone`` means the kernels are slow *together*: data a kernel wrote on one core is read by another
core in the next, weights come from L3 instead of L2, ... — what an isolated-op table cannot see, and what the
rules' spatial-major parallel loops and packed weights address. Per kernel: its rule, its time alone and in the
chain (``--per-kernel``). ``TVM_NUM_THREADS`` is set to ``--threads``.

    .venv/bin/python benchmarks/kernel_chain.py                       # the MobileNetV2-style net at 224
    .venv/bin/python benchmarks/kernel_chain.py --per-kernel \
        --op expanded_conv-input:56x56x24-output:56x56x24-expand:6-kernel:3-stride:1-idskip:1
    .venv/bin/python benchmarks/kernel_chain.py --pairs \
        --op expanded_conv-input:7x7x192-output:7x7x320-expand:3-kernel:7-stride:1-idskip:0
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build(args: argparse.Namespace) -> tuple[Any, Any, Any, dict]:
    """(scheduled Relax module, example input, target, rule notes) of the op or net."""
    from latbench.backends.tvm import export_relax
    from latbench.backends.tvm_schedules import apply_rules, prepare
    from latbench.devices import get_device
    from latbench.jobs import Job
    from latbench.space import Space

    if args.op:
        job = Job(args.op, "ops")
    else:
        space = Space(args.resolution, 1.0)
        job = Job("mbv2-3x3_MBConv6", "nets", space.uniform("3x3_MBConv6").to_dict())
    module, x = job.module_and_input()
    target = get_device("local-cpu").tvm_target()
    mod, notes = apply_rules(prepare(export_relax(module, x), target), target)
    return mod, x, target, notes


def kernel_chain(mod: Any, x: Any, target: Any) -> list[tuple[str, Any, list[Any]]]:
    """The ``call_tir`` calls of ``main`` in order: (function name, compiled kernel, its argument tensors).

    Intermediate tensors are reused as the VM's pooled allocator does: a tensor whose last reader has run
    goes back to a pool (by shape), and the next output of that shape takes it."""
    import numpy as np
    import tvm
    from tvm import relax

    dev, call_tir, compiled = tvm.cpu(), tvm.ir.Op.get("relax.call_tir"), {}
    main = mod["main"]
    rng = np.random.default_rng(0)

    def tensor(shape: Any) -> Any:
        return tvm.runtime.tensor(rng.random([int(s) for s in shape], dtype=np.float32), dev)

    calls, alias = [], {}
    for block in main.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and value.op == call_tir:
                calls.append((binding.var, value))
            elif isinstance(value, relax.Var):
                alias[binding.var] = value
    root = lambda v: root(alias[v]) if v in alias else v  # noqa: E731
    last_use: dict[Any, int] = {}
    for i, (_, call) in enumerate(calls):
        for a in call.args[1].fields:
            if isinstance(a, relax.Var):
                last_use[root(a)] = i
    env: dict[Any, Any] = {main.params[0]: tvm.runtime.tensor(x.numpy(), dev)}
    pool: dict[tuple[int, ...], list[Any]] = collections.defaultdict(list)
    steps = []
    for i, (var, call) in enumerate(calls):
        gv = call.args[0]
        func = mod[gv]
        if gv.name_hint not in compiled:
            compiled[gv.name_hint] = tvm.compile(tvm.IRModule({"main": func}), target=target).mod["main"]
        ins = [env[root(a)] if isinstance(a, relax.Var) else tensor(p.shape)
               for a, p in zip(call.args[1].fields, func.params)]
        shape = tuple(int(d) for d in func.params[-1].shape)
        env[var] = pool[shape].pop() if pool[shape] else tensor(shape)
        steps.append((gv.name_hint, compiled[gv.name_hint], [*ins, env[var]]))
        for a in {root(a) for a in call.args[1].fields if isinstance(a, relax.Var)}:
            if last_use.get(a) == i and a is not main.params[0]:
                pool[tuple(int(d) for d in env[a].shape)].append(env[a])
    return steps


def timed(fn: Any, min_s: float = 0.02) -> float:
    """ms per call: the median of 5 repeats of >= ``min_s``."""
    fn()
    t0 = time.perf_counter()
    fn()
    n = max(1, int(min_s / max(time.perf_counter() - t0, 1e-7)))
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n * 1e3)
    return statistics.median(runs)


def after(steps: list[tuple[str, Any, list[Any]]], prev: int, cur: int, calls: int = 200) -> float:
    """ms of kernel ``cur`` (median of ``calls``), each call right after one call of kernel ``prev``."""
    ts = []
    for _ in range(calls):
        steps[prev][1](*steps[prev][2])
        t0 = time.perf_counter()
        steps[cur][1](*steps[cur][2])
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def pairs(steps: list[tuple[str, Any, list[Any]]], rounds: int, notes: dict) -> int:
    """Print, for every kernel, its time right after every kernel (median over ``rounds`` interleaved rounds)."""
    from latbench.facts import host_facts

    cells = [(p, c) for c in range(len(steps)) for p in range(len(steps))]
    ms: dict[tuple[int, int], list[float]] = collections.defaultdict(list)
    for r in range(rounds):
        for p, c in random.Random(r).sample(cells, len(cells)):
            ms[(p, c)].append(after(steps, p, c))
    facts = host_facts()
    print(f"{len(steps)} kernels, {os.environ['TVM_NUM_THREADS']} threads, {rounds} interleaved rounds; "
          f"{facts.get('cpu_model')} ({facts.get('llvm_cpu')}), load avg {os.getloadavg()[0]:.1f}")
    print("ms of a kernel (row) right after a kernel (column k0, k1, ...), median over the rounds (min-max)")
    for c, (name, _, _) in enumerate(steps):
        row = "  ".join(f"k{p}: {statistics.median(ms[(p, c)]):.3f} ({min(ms[(p, c)]):.3f}-{max(ms[(p, c)]):.3f})"
                        for p in range(len(steps)))
        print(f"  k{c} {name[:30]:30s} {notes['rules'].get(name, '-')[:24]:24s} {row}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", default=None, help="an op key (default: the MobileNetV2-style network)")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-kernel", action="store_true", help="print every kernel alone and in the chain")
    ap.add_argument("--pairs", action="store_true",
                    help="instead: each kernel timed right after each kernel (an op's few kernels; a net has many)")
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    import tvm
    from tvm import relax

    from latbench.facts import host_facts

    mod, x, target, notes = build(args)
    if args.pairs:
        return pairs(kernel_chain(mod, x, target), args.rounds, notes)
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    xt = tvm.runtime.tensor(x.numpy(), tvm.cpu())
    steps = kernel_chain(mod, x, target)

    def chain() -> None:
        for _, f, a in steps:
            f(*a)

    def chain_each() -> list[float]:  # one pass, each kernel timed where it sits in the chain
        out = []
        for _, f, a in steps:
            t0 = time.perf_counter()
            f(*a)
            out.append((time.perf_counter() - t0) * 1e3)
        return out

    tests = {"vm": lambda: timed(lambda: vm["main"](xt)), "chain": lambda: timed(chain),
             "alone": lambda: sum(timed(lambda f=f, a=a: f(*a)) for _, f, a in steps)}
    res: dict[str, list[float]] = {k: [] for k in tests}
    in_chain: list[list[float]] = []
    alone: list[list[float]] = []
    for r in range(args.rounds):
        for k in random.Random(r).sample(list(tests), len(tests)):
            res[k].append(tests[k]())
        in_chain.append([statistics.median(v) for v in zip(*[chain_each() for _ in range(5)])])
        alone.append([timed(lambda f=f, a=a: f(*a), 0.005) for _, f, a in steps])
    facts = host_facts()
    print(f"{args.op or 'mbv2-3x3_MBConv6'} at {args.resolution}: {len(steps)} kernels, {args.threads} threads, "
          f"{args.rounds} interleaved rounds; {facts.get('cpu_model')} ({facts.get('llvm_cpu')}), "
          f"load avg {os.getloadavg()[0]:.1f}")
    for k, v in res.items():
        print(f"  {k:6s} median {statistics.median(v):8.3f} ms  (min {min(v):.3f}, max {max(v):.3f})")
    ratio = [c / a for c, a in zip(res["chain"], res["alone"])]
    print(f"  chain / alone: median {statistics.median(ratio):.2f} (min {min(ratio):.2f}, max {max(ratio):.2f})")
    per_alone = [statistics.median(v) for v in zip(*alone)]
    per_chain = [statistics.median(v) for v in zip(*in_chain)]
    by_rule: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for (name, _, _), a, c in zip(steps, per_alone, per_chain):
        rule = notes["rules"].get(name, "-").split()[0]
        by_rule[rule][0] += a
        by_rule[rule][1] += c
    print("  by rule (ms alone -> in the chain, one call each, timer overhead included):")
    for rule, (a, c) in sorted(by_rule.items(), key=lambda kv: -kv[1][1]):
        print(f"    {rule:22s} {a:7.3f} -> {c:7.3f}")
    if args.per_kernel:
        for (name, _, _), a, c in zip(steps, per_alone, per_chain):
            print(f"    {a:7.3f} {c:7.3f}  {name[:40]:40s} {notes['rules'].get(name, '-')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
