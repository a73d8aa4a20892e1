"""``latbench compile``: build artifacts for a device without measuring (for offline transfer)."""
from __future__ import annotations

import argparse
import json

from latbench.campaign import Job, compile_jobs
from latbench.cli.measure import add_device_args
from latbench.cli.ops import add_space_args
from latbench.devices import get_device
from latbench.netconfig import load_net_config
from latbench.space import Arch, Space


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compile", help="build artifacts for a device without measuring",
        description="Compile the space's ops (or whole networks: --arch, --net-config) for the device's target into "
                    "OUT: one directory per artifact (lib.so, input, PyTorch's expected output, meta) and a "
                    "manifest.json. Copy OUT to the device host and time it with `latbench measure --artifacts OUT`.")
    add_space_args(p)
    add_device_args(p)
    p.add_argument("--out", "-o", required=True, help="artifact set directory")
    p.add_argument("--limit", type=int, default=None, help="only the first N ops")
    p.add_argument("--arch", action="append", default=None, metavar="FILE",
                   help="build this architecture's whole network (arch JSON) instead of the ops (repeatable)")
    p.add_argument("--net-config", action="append", default=None, metavar="FILE",
                   help="build this official ProxylessNAS net.config's whole network, at --resolution (repeatable)")
    p.add_argument("--json", action="store_true", help="print the manifest summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = get_device(args.target)
    if args.arch or args.net_config:
        jobs = [Job.network(Arch.load(f)) for f in args.arch or []]
        jobs += [Job.network(load_net_config(f, args.resolution).canonical()) for f in args.net_config or []]
    else:
        space = Space(resolution=args.resolution, width_mult=args.width_mult, n_classes=args.n_classes)
        jobs = [Job.op(o) for o in space.distinct_ops()][: args.limit]
    path = compile_jobs(jobs, device, args.out, args.backend, progress=True)
    manifest = json.loads(path.read_text())
    items = [e for e in manifest["entries"] if e.get("role") != "reference"]  # the reference op comes along
    ok = sum(e["status"] == "ok" for e in items)
    if args.json:
        print(json.dumps({"manifest": str(path), "built": ok, "failed": len(jobs) - ok,
                          "target": manifest["target"], "backend": manifest["backend"]}))
    else:
        print(f"{ok}/{len(jobs)} artifacts built for {device.name} ({manifest['backend']}) → {path}")
        for e in items:
            if e["status"] != "ok":
                print(f"  failed {e['key']}: {e['error']}")
    return 0 if ok == len(jobs) else 1
