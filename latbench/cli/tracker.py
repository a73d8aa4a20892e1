"""``latbench tracker``: run a TVM RPC tracker (the device pool's directory) and show what it serves."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from latbench.errors import LatbenchError
from latbench.runners.tracker import (LocalTracker, format_summary, is_our_tracker, is_running, pid_file_default,
                                     stop_pid, tracker_summary)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tracker", help="start / inspect a TVM RPC tracker (device pool)",
        description="A TVM RPC tracker is where device servers register under a key (e.g. rasp4) and where "
                    "`latbench measure --target DEVICE` (rpc mode tracker) finds every free server of that key "
                    "and times ops on all of them in parallel.")
    tsub = p.add_subparsers(dest="tracker_cmd", metavar="ACTION", required=True)

    s = tsub.add_parser("start", help="start a tracker (foreground; Ctrl-C stops it)")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; boards reach it through an "
                        "SSH tunnel, rpc.tunnel: true). Another address exposes unauthenticated TVM RPC: a warning "
                        "says so")
    s.add_argument("--port", type=int, default=9190, help="port (default: 9190)")
    s.add_argument("--background", action="store_true",
                   help="detach and record the PID in --pid-file (stop with `latbench tracker stop`)")
    s.add_argument("--pid-file", default=None, help="PID file (default: ~/.cache/latbench/tracker-PORT.pid)")
    s.set_defaults(func=run_start)

    st = tsub.add_parser("status", help="keys, free/pending counts and server addresses")
    st.add_argument("--host", default="127.0.0.1")
    st.add_argument("--port", type=int, default=9190)
    st.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the tracker (default: 5)")
    st.add_argument("--json", action="store_true", help="the raw summary as JSON")
    st.set_defaults(func=run_status)

    sp = tsub.add_parser("stop", help="stop a tracker started with --background")
    sp.add_argument("--port", type=int, default=9190)
    sp.add_argument("--pid-file", default=None)
    sp.set_defaults(func=run_stop)


def run_start(args: argparse.Namespace) -> int:
    if args.background:
        pid_file = Path(args.pid_file) if args.pid_file else pid_file_default(args.port)
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        tracker = LocalTracker(args.host, args.port, log_path=pid_file.with_suffix(".log")).start()
        pid_file.write_text(f"{tracker.proc.pid}\n")
        print(f"RPC tracker on {tracker.address} (pid {tracker.proc.pid}, log {tracker.log_path}); "
              f"stop it with `latbench tracker stop --port {tracker.port}`")
        tracker.proc = None  # detach: leaving this process must not stop it
        return 0
    tracker = LocalTracker(args.host, args.port)
    with tracker:
        print(f"RPC tracker on {tracker.address} (pid {tracker.proc.pid}); register servers with "
              f"--tracker <this host>:{tracker.port} --key KEY. Ctrl-C stops it.", flush=True)
        try:
            code = tracker.wait()
        except KeyboardInterrupt:
            print("stopping the tracker", file=sys.stderr)
            return 0
    print(f"the tracker exited with code {code}", file=sys.stderr)
    return 1


def run_status(args: argparse.Namespace) -> int:
    summary = tracker_summary(args.host, args.port, args.timeout)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"tracker {args.host}:{args.port}")
        print(format_summary(summary))
    return 0


def run_stop(args: argparse.Namespace) -> int:
    pid_file = Path(args.pid_file) if args.pid_file else pid_file_default(args.port)
    if not pid_file.exists():
        raise LatbenchError(f"no PID file {pid_file}; was the tracker started with `latbench tracker start "
                            f"--background --port {args.port}`?")
    try:
        pid = int(pid_file.read_text().split()[0])
    except (ValueError, IndexError, OSError):
        raise LatbenchError(f"PID file {pid_file} does not hold a PID; remove it") from None
    if is_running(pid) and not is_our_tracker(pid):
        raise LatbenchError(f"PID file {pid_file} names process {pid}, which is not a latbench RPC tracker "
                            f"(the tracker exited and the PID was reused?); not killing it — remove {pid_file}")
    running = stop_pid(pid)
    pid_file.unlink()
    print(f"tracker (pid {pid}) {'stopped' if running else 'was not running'}")
    return 0
