"""The released ProxylessNAS nets (official net configs, widths outside the space) measured whole vs. their ops.

Measures each ``--net-config`` (default: the released Proxyless-CPU and Proxyless-Mobile of
``tests/data/``) and ``--archs`` random archs of the space at ``--resolution`` as whole networks, with
every op of them, in ONE interleaved campaign (``latbench.campaign.measure_networks``: drift hits
networks and ops alike), then prints per network the measured latency with its 95 % CI, the sum of its
ops' measured latencies (what a LUT of this table predicts) and their ratio, plus the machine facts.

    python benchmarks/released_nets.py --target local-cpu --resolution 224 --out data/bench-released

Rerunning with the same ``--out`` only measures what is missing.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="local-cpu", help="device name or YAML (default local-cpu)")
    ap.add_argument("--backend", default=None, help="backend (default: the tvm default)")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--net-config", nargs="*", default=[str(ROOT / "tests/data/proxyless_cpu.config"),
                                                         str(ROOT / "tests/data/proxyless_mobile.config")])
    ap.add_argument("--archs", type=int, default=2, help="random archs of the space measured beside them")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="data/bench-released", help="table directory (cached, resumable)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from latbench.campaign import measure_networks
    from latbench.devices import get_device
    from latbench.facts import host_facts
    from latbench.netconfig import load_net_config
    from latbench.space import Space, random_archs
    from latbench.tables import ok_rows, read_table, table_path

    device = get_device(args.target)
    labelled = [(Path(f).stem, load_net_config(f, args.resolution)) for f in args.net_config]
    if args.archs:
        labelled += [(f"random arch {i}", a) for i, a in
                     enumerate(random_archs(Space(args.resolution), args.archs, args.seed))]
    t0 = time.perf_counter()
    rows = measure_networks([n for _, n in labelled], device, args.out, args.backend, progress=True)
    seconds = time.perf_counter() - t0
    backend = rows["backend"].iloc[0]
    ops = ok_rows(read_table(table_path(args.out, device.name, backend, "ops"))).drop_duplicates("key", keep="last")
    op_ms = ops.set_index("key")["median_ms"]
    rows = rows.set_index("key")
    facts = host_facts()
    print(f"device {device.name}, backend {backend}, resolution {args.resolution}, "
          f"{device.threads} thread(s); campaign {seconds:.0f} s (cached items cost nothing)")
    print(f"machine: {facts.get('cpu_model')} (LLVM cpu {facts.get('llvm_cpu')}, {os.cpu_count()} CPUs), "
          f"load {os.getloadavg()[0]:.2f} at the end")
    print(f"{'network':24s} {'ops':>4s} {'measured ms':>12s} {'95% CI ms':>17s} {'sum of ops ms':>14s} "
          f"{'sum/measured':>12s}")
    result = []
    for label, net in labelled:
        r = rows.loc[net.key]
        keys = [o.key for o in net.op_specs]
        total = float(op_ms.reindex(keys).sum(min_count=len(keys)))
        ci = f"{r['ci_low_ms']:.3f}–{r['ci_high_ms']:.3f}"
        print(f"{label:24s} {len(keys):4d} {r['median_ms']:12.3f} {ci:>17s} {total:14.3f} "
              f"{total / r['median_ms']:12.3f}{'  (unstable)' if r.get('unstable') else ''}")
        result.append({"network": label, "key": net.key, "n_ops": len(keys), "measured_ms": float(r["median_ms"]),
                       "ci_ms": [float(r["ci_low_ms"]), float(r["ci_high_ms"])], "sum_of_ops_ms": total})
    out = Path(args.out) / device.name / f"released-nets-r{args.resolution}.json"
    out.write_text(json.dumps({"resolution": args.resolution, "device": device.name, "backend": backend,
                               "host_facts": facts, "seconds": seconds, "networks": result}, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
