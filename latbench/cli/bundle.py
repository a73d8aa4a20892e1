"""``latbench bundle``: a runtime-only TVM bundle (no compiler) + RPC server/timer for a device."""
from __future__ import annotations

import argparse

from latbench.devices import get_device
from latbench.runners.bundle import build_bundle, bundle_info


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bundle", help="assemble a runtime-only TVM bundle for a device",
        description="Copy TVM's runtime libraries (libtvm_runtime + extra), the tvm_ffi package and latbench's "
                    "board server + runtime timer into OUT, for the device's architecture (aarch64 files come "
                    "from the aarch64 wheels, downloaded once with pip and cached). The board then needs only "
                    "Python 3 and numpy: `python3 OUT/board_server.py --tracker HOST:PORT --key KEY`. "
                    "`latbench device start` uploads and runs it for you.")
    p.add_argument("--target", "-t", required=True, help="device name or YAML path (its target picks the arch)")
    p.add_argument("--out", "-o", required=True, help="bundle directory (replaced if it is a bundle)")
    p.add_argument("--python-version", default="3.11",
                   help="the board's Python (for other architectures' wheels; default: 3.11)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = get_device(args.target)
    out = build_bundle(device, args.out, args.python_version)
    info = bundle_info(out)
    print(f"bundle for {device.name}: {info['arch']}, apache-tvm {info['apache-tvm']} runtime, tvm-ffi "
          f"{info['apache-tvm-ffi']}, {info['size_mb']:.1f} MB → {out}")
    print(f"  on the board: python3 {out.name}/board_server.py --port 9090 "
          f"[--tracker HOST:PORT --key KEY] (listens on 127.0.0.1; reach it with rpc.tunnel: true)")
    return 0
