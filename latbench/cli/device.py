"""``latbench device``: manage a board over SSH (facts, start/stop its TVM RPC server)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from latbench.devices import get_device
from latbench.errors import DeviceError
from latbench.boards.server import board_info, governor_warning, open_host, start_server, stop_server
from latbench.runners.bundle import bundle_info, cached_bundle

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "device", help="board management over SSH: info, start/stop its RPC server",
        description="Log into a device's board with the YAML's ssh section (OpenSSH known_hosts, agent, key files) "
                    "— or run an emulated board here under qemu — to read its facts or to start/stop the "
                    "runtime-only TVM RPC server (`latbench bundle`, uploaded over SFTP) that latbench measures with.")
    dsub = p.add_subparsers(dest="device_cmd", metavar="ACTION", required=True)
    i = dsub.add_parser("info", help="uname, CPU, cores, memory, governor, temperature, Python, TVM runtime")
    i.add_argument("name", help="device name or YAML path")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=run_info)
    s = dsub.add_parser("start", help="upload the runtime bundle and start the board's RPC server")
    s.add_argument("name")
    s.add_argument("--tracker", default=None, metavar="HOST:PORT",
                   help="tracker address as the board sees it (default: the YAML's rpc.host:rpc.port)")
    s.add_argument("--bundle", default=None, help="use this bundle directory (default: built and cached)")
    s.add_argument("--bind", default=None, metavar="ADDR",
                   help="address the board's server listens on (default: rpc.bind, else 127.0.0.1; another address "
                        "exposes unauthenticated TVM RPC and prints a warning)")
    s.set_defaults(func=run_start)
    t = dsub.add_parser("stop", help="stop the board's RPC server (its whole process group)")
    t.add_argument("name")
    t.set_defaults(func=run_stop)


def _open(name: str):
    device = get_device(name)
    return device, open_host(device)


def run_info(args: argparse.Namespace) -> int:
    device, host = _open(args.name)
    with host:
        facts = board_info(device, host)
    if args.json:
        print(json.dumps(facts, indent=1))
    else:
        temps = ", ".join(f"{k} {v:.1f} °C" for k, v in (facts.get("temperature_c") or {}).items()) or "not readable"
        rows = [("device", f"{device.name}{' (EMULATED)' if facts['emulated'] else ''} — {host.name}"),
                ("uname", facts.get("uname")), ("board", facts.get("board") or "-"),
                ("cpu", facts.get("cpu_model")), ("cores", facts.get("cores")),
                ("memory", f"{facts.get('mem_gb')} GB"),
                ("governor", ", ".join(facts.get("governors") or []) or "not readable"),
                ("frequency", ", ".join(f"{f} MHz" for f in sorted(set(facts.get("freq_mhz") or [])))
                 or "not readable"),
                ("temperature", temps), ("python", facts.get("python")),
                ("tvm runtime", facts.get("tvm_runtime") or "none (run `latbench device start` to install the bundle)"),
                ("tvm_ffi", facts.get("tvm_ffi") or "none"),
                ("rpc server", f"running (pid {facts['server']['pid']})" if facts["server"]["running"] else "stopped")]
        for k, v in rows:
            print(f"{k:<12} {v}")
    warn = governor_warning(facts)
    if warn:
        print(f"latbench: warning: {warn}", file=sys.stderr)
    return 0


def run_start(args: argparse.Namespace) -> int:
    device, host = _open(args.name)
    bundle = Path(args.bundle) if args.bundle else cached_bundle(device)
    bundle_info(bundle)
    if device.rpc.tunnel and device.rpc.mode == "tracker":
        with host:
            return _serve_tunnelled(device, host, bundle, args.bind)
    with host:
        info = start_server(device, host, bundle, tracker=args.tracker, bind=args.bind)
    rpc = device.rpc
    where = (f"registered with tracker {args.tracker or rpc.address} as '{rpc.key}'" if rpc.mode == "tracker"
             else f"listening on port {info['port']}")
    print(f"{device.name}: RPC server started on {host.name} (pid {info['pid']}), {where}; log {info['log']}")
    return 0


def run_stop(args: argparse.Namespace) -> int:
    device, host = _open(args.name)
    with host:
        was = stop_server(device, host)
    print(f"{device.name}: RPC server {'stopped' if was else 'was not running'} on {host.name}")
    return 0


def _serve_tunnelled(device, host, bundle: Path, bind: str | None) -> int:
    """Tracker mode through SSH: the board registers with the loopback tracker over a reverse forward and is
    reached over a local one; both live on this command's SSH connection, so it stays in the foreground
    (Ctrl-C or SIGTERM stops the board's server and the forwards)."""
    from latbench.boards.tunnel import LocalForward, ReverseForward

    rpc = device.rpc
    transport = host.client.get_transport()
    reverse = ReverseForward(transport, rpc.host, rpc.port, rpc.connect_timeout)
    local = LocalForward(transport, None, timeout=rpc.connect_timeout)
    try:
        info = start_server(device, host, bundle, tracker=f"127.0.0.1:{reverse.port}", bind=bind,
                            advertise_port=local.port)
        local.remote_port = info["port"]
        print(f"{device.name}: RPC server started on {host.name} (pid {info['pid']}), registered with tracker "
              f"{rpc.address} as '{rpc.key}' through SSH (reached at 127.0.0.1:{local.port}); log {info['log']}. "
              "Ctrl-C stops it.", flush=True)
        try:
            while transport.is_active():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        if not transport.is_active():
            print(f"latbench: error: the SSH link to {host.name} dropped; the board's server is unreachable",
                  file=sys.stderr)
            return 3
        return 0
    finally:
        try:  # first, while both forwards still stand (the board server leaves the tracker cleanly)
            stop_server(device, host)
        except DeviceError as exc:  # the link is gone: the board server exits once its tracker link drops
            log.warning("could not stop the board server on %s (%s); it exits once its tracker link is gone — "
                        "check with `latbench device info %s`", host.name, exc, device.name)
        finally:
            local.close()
            reverse.close()
