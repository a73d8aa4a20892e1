"""``latbench devices``: the device configurations latbench knows."""
from __future__ import annotations

import argparse
import json

from latbench.devices import available_devices, get_device
from latbench.errors import LatbenchError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list device configurations",
                       description="List device YAMLs ($LATBENCH_DEVICE_CONFIGS, ./device_configs/, the packaged "
                                   "ones) and the embedded "
                                   "local-cpu default, with their target and how they are reached.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = []
    for name, path in sorted(available_devices().items()):
        try:
            d = get_device(str(path) if path else name)
            rows.append({"name": name, "target": d.target, "rpc": d.rpc.mode if d.rpc.mode == "local"
                         else f"{d.rpc.mode} {d.rpc.address}" + (f" key {d.rpc.key}" if d.rpc.key else ""),
                         "emulated": d.emulated, "file": str(path) if path else "(embedded)",
                         "description": d.description})
        except LatbenchError as exc:
            rows.append({"name": name, "error": str(exc), "file": str(path)})
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<14} INVALID: {r['error']}")
        else:
            tgt = json.dumps(r["target"]) if isinstance(r["target"], dict) else r["target"]
            print(f"{r['name']:<14} {r['rpc']:<32} {tgt}  {r['description']}")
    return 0
