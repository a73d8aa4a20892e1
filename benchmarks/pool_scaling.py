"""Device-pool scaling: ops/minute with 1, 2 and 4 local RPC servers behind one tracker key.

    .venv/bin/python benchmarks/pool_scaling.py [--ops 16] [--servers 1 2 4] [--repeat 5]

Compiles the first ``--ops`` ops of the resolution-32 space once (artifact cache), starts a real TVM
RPC tracker, then for each pool size starts that many ``python -m tvm.exec.rpc_server`` processes
(1 thread each) under one key and times every op through :class:`latbench.runners.pool.PoolRunner`.

Figures printed:
* ops/min: wall-clock throughput of the pool (tracker requests, sessions, upload, load, timing).
* busy: share of server-time spent inside an op (upload + load + check + timing).
* overhead/op: the rest of the server-time per op — scheduling (tracker request, session setup,
  queue hand-off, supervisor polling, end of run) — ``(servers x wall - sum(op times)) / ops``.
* baseline: one plain SessionRunner on one direct server (no tracker, no pool), for comparison.
This machine has 2 cores: past 2 servers the servers compete for CPU, so ops/min stops scaling
(and per-op times grow), which the figures show.
"""
from __future__ import annotations

import argparse
import os
import threading
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ops", type=int, default=16)
    ap.add_argument("--servers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--min-repeat-ms", type=int, default=10)
    ap.add_argument("--cache", default=None, help="artifact cache (default: the latbench cache)")
    args = ap.parse_args()

    from latbench.artifacts import ArtifactCache
    from latbench.backends.base import get_backend
    from latbench.campaign import Job, build_all
    from latbench.devices import device_from_dict
    from latbench.runners.pool import PoolRunner
    from latbench.runners.rpc import LocalRPCServer
    from latbench.runners.session import SessionRunner
    from latbench.runners.tracker import LocalTracker
    from latbench.space import Space

    timing = {"number": 1, "repeat": args.repeat, "min_repeat_ms": args.min_repeat_ms, "warmup": 1, "op_timeout": 120}
    local = device_from_dict({"name": "bench-cpu", "target": {"kind": "llvm", "mcpu": "native"}, "num_threads": 1,
                              "rpc": {"mode": "local"}, "timing": timing}, "<bench>")
    jobs = [Job.op(o) for o in Space(resolution=32).distinct_ops()[: args.ops]]
    t0 = time.perf_counter()
    arts, errors = build_all(jobs, get_backend(None), local, ArtifactCache(args.cache), progress=False)
    print(f"{len(arts)} ops ready ({len(errors)} build errors) in {time.perf_counter() - t0:.1f} s "
          f"(cached after the first run); cpu count {os.cpu_count()}")
    items = [(j.key, arts[j.key]) for j in jobs if j.key in arts]

    class TimedPool(PoolRunner):
        """Records how long each op occupies its server."""

        busy: list[float] = []

        def _time(self, item, runner):
            t = time.perf_counter()
            try:
                return super()._time(item, runner)
            finally:
                self.busy.append(time.perf_counter() - t)

    def recorder(rows: list):
        return lambda key, res: rows.append((key, res))

    # Baseline: one direct session, no tracker.
    with LocalRPCServer(threads=1) as srv:
        dev = device_from_dict({"name": "bench-direct", "target": {"kind": "llvm", "mcpu": "native"},
                                "num_threads": 1, "rpc": {"mode": "direct", "host": "127.0.0.1", "port": srv.port},
                                "timing": timing}, "<bench>")
        rows: list = []
        t = time.perf_counter()
        with SessionRunner(dev) as r:
            r.run(items, recorder(rows), progress=False)
        base_wall = time.perf_counter() - t
    base_rate = len(rows) / base_wall * 60
    print(f"\nbaseline (1 direct session, no pool): {len(rows)} ops in {base_wall:.2f} s = {base_rate:.0f} ops/min")

    print(f"\n{'servers':>7} {'ops':>4} {'wall s':>7} {'ops/min':>8} {'speedup':>7} {'busy':>5} "
          f"{'op s (mean)':>11} {'overhead/op ms':>14} {'sessions':>8}")
    results = []
    with LocalTracker() as tracker:
        for n in args.servers:
            key = f"bench{n}"
            servers = [LocalRPCServer(threads=1, tracker=tracker.address, key=key) for _ in range(n)]
            starters = [threading.Thread(target=s.start) for s in servers]
            for s in starters:
                s.start()
            for s in starters:
                s.join()
            try:
                tracker.wait_for_servers(key, n, timeout=120)
                dev = device_from_dict({"name": f"bench-pool{n}", "target": {"kind": "llvm", "mcpu": "native"},
                                        "num_threads": 1, "rpc": {"mode": "tracker", "host": "127.0.0.1",
                                                                  "port": tracker.port, "key": key},
                                        "timing": timing}, "<bench>")
                rows = []
                TimedPool.busy = []
                t = time.perf_counter()
                with TimedPool(dev) as pool:
                    pool.run(items, recorder(rows), progress=False)
                wall = time.perf_counter() - t
                busy = sum(TimedPool.busy)
                ok = sum(r.get("status", "ok") == "ok" for _, r in rows)
                assert len(rows) == len(items) == len({k for k, _ in rows}), "rows lost or duplicated"
                overhead = (n * wall - busy) / len(rows)
                rate = len(rows) / wall * 60
                results.append((n, rate))
                print(f"{n:>7} {ok:>4} {wall:>7.2f} {rate:>8.0f} {rate / results[0][1]:>7.2f} "
                      f"{busy / (n * wall):>5.0%} {busy / len(rows):>11.3f} {overhead * 1e3:>14.0f} "
                      f"{pool.stats['sessions']:>8}")
            finally:
                for s in servers:
                    s.stop()
    print(f"\npool(1) vs direct session: {(results[0][1] / base_rate - 1) * 100:+.0f}% throughput")


if __name__ == "__main__":
    main()
