#!/usr/bin/env python3
"""A TVM RPC server for boards without TVM: Python stdlib + ``tvm_ffi`` + TVM's runtime libraries.

Part of the runtime-only bundle (``latbench bundle``); it does not import ``tvm`` or ``latbench``, only
its siblings ``runtime.py`` (loads the runtime), ``tracker_protocol.py`` and ``conditions.py``.
It speaks TVM's RPC protocol (the same handshake as ``python -m tvm.exec.rpc_server``), so the
stock client (``tvm.rpc.connect`` / ``connect_tracker(...).request``) works unchanged: upload,
``load_module``, ``relax.VirtualMachine`` and ``time_evaluator`` all run in ``libtvm_runtime``.

    python3 board_server.py --port 9090 [--host 127.0.0.1] [--tracker HOST:PORT --key rasp4]

It listens on 127.0.0.1 unless ``--host`` says otherwise: TVM RPC is unauthenticated, so latbench
reaches it through an SSH port forward (``rpc.tunnel: true``) rather than over the network.

Each session runs in a forked child calling the runtime's ``rpc.ServerLoop`` (in a fresh work
directory); the parent keeps registering with the tracker. Start it with ``setsid`` and stop it
by killing its process group (the session child is in the same group).
"""
from __future__ import annotations

import argparse
import os
import random
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path


def _sibling(name: str):
    """A module beside this file: latbench's when imported from the package, else the file (in a bundle)."""
    import importlib
    import importlib.util

    if __package__:
        return importlib.import_module(f"{__package__}.{name}")
    spec = importlib.util.spec_from_file_location(f"_latbench_board_{name}", Path(__file__).with_name(f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


proto = _sibling("tracker_protocol")  # TVM's RPC / tracker wire protocol
runtime = _sibling("runtime")  # finds and loads TVM's runtime libraries
recvall, sendjson, recvjson = proto.recvall, proto.sendjson, proto.recvjson


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S ") + msg, file=sys.stderr, flush=True)


class Tracker:
    """This server's registration with a TVM RPC tracker (reconnects when the tracker drops)."""

    def __init__(self, addr: tuple[str, int], key: str, port: int, custom_addr: str | None) -> None:
        self.addr, self.key, self.port, self.custom_addr = addr, key, port, custom_addr
        self.sock: socket.socket | None = None
        self.matchkey = ""
        self.old: set[str] = set()

    def connect(self) -> None:
        while self.sock is None:
            try:
                s = socket.create_connection(self.addr, timeout=30)
                if not proto.handshake(s):
                    raise SystemExit(f"error: {self.addr[0]}:{self.addr[1]} is not a TVM RPC tracker")
                info = {"key": "server:" + self.key, "addr": [self.custom_addr, self.port]}
                sendjson(s, [proto.CODE_UPDATE_INFO, info])
                assert recvjson(s) == proto.CODE_SUCCESS
                self.sock = s
                log(f"registered with tracker {self.addr[0]}:{self.addr[1]} as '{self.key}'")
            except OSError as exc:
                log(f"cannot reach tracker {self.addr[0]}:{self.addr[1]} ({exc}); retry in 2 s")
                time.sleep(2)

    def put(self) -> None:
        """Offer this server (again) under a fresh match key."""
        while True:
            self.matchkey = f"{self.key}:{random.random()}"
            if self.matchkey not in self.old:
                break
        self.old.add(self.matchkey)
        sendjson(self.sock, [proto.CODE_PUT, self.key, [self.port, self.matchkey], self.custom_addr])
        assert recvjson(self.sock) == proto.CODE_SUCCESS

    def pending(self) -> list[str]:
        sendjson(self.sock, [proto.CODE_GET_PENDING_MATCHKEYS])
        return recvjson(self.sock)

    def drop(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None


def accept(listen: socket.socket, tracker: Tracker | None, key: str, ping: float = 2.0):
    """Wait for a client whose handshake matches; returns (conn, addr, session options)."""
    unmatched = 0
    if tracker:
        tracker.put()
    while True:
        if tracker:
            ready, _, _ = select.select([listen], [], [], ping)
            if not ready:
                # A match key handed out but never used for a while: offer a fresh one (as TVM's server does).
                unmatched = 0 if tracker.matchkey in tracker.pending() else unmatched + 1
                if unmatched * ping > 4 + ping:
                    tracker.put()
                    unmatched = 0
                continue
        conn, addr = listen.accept()
        try:
            conn.settimeout(30)
            if struct.unpack("<i", recvall(conn, 4))[0] != proto.RPC_MAGIC:
                conn.close()
                continue
            ckey = recvall(conn, struct.unpack("<i", recvall(conn, 4))[0]).decode()
            parts = ckey.split()
            expect = "client:" + (tracker.matchkey if tracker else key)
            if not parts or parts[0] != expect:
                conn.sendall(struct.pack("<i", proto.RPC_CODE_MISMATCH))
                conn.close()
                log(f"mismatched key from {addr}")
                continue
            skey = ("server:" + key).encode()
            conn.sendall(struct.pack("<i", proto.RPC_CODE_SUCCESS) + struct.pack("<i", len(skey)) + skey)
            conn.settimeout(None)
        except OSError:
            conn.close()
            continue
        opts = {}
        for kv in parts[1:]:
            if kv.startswith("-timeout="):
                opts["timeout"] = float(kv[len("-timeout="):])
        return conn, addr, opts


def serve_session(tvm_ffi, conn: socket.socket, addr, opts: dict, work_root: str | None) -> None:
    """Run one client session in a forked child; kill it when the session timeout passes."""
    work = tempfile.mkdtemp(prefix="session-", dir=work_root)
    pid = os.fork()
    if pid == 0:  # the session child
        code = 0
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            os.chdir(work)

            @tvm_ffi.register_global_func("tvm.rpc.server.workpath", override=True)
            def workpath(path):
                return os.path.join(work, path)

            @tvm_ffi.register_global_func("tvm.rpc.server.load_module", override=True)
            def load_module(name):
                return tvm_ffi.load_module(os.path.join(work, name))

            conditions = _sibling("conditions")  # the board's load, clock, temperature, throttling

            @tvm_ffi.register_global_func(conditions.RPC_FUNCTION, override=True)
            def read_conditions():
                return conditions.read_json()

            tvm_ffi.get_global_func("rpc.ServerLoop")(conn.fileno())
        except BaseException as exc:  # noqa: BLE001 - report, then leave the child without cleanup handlers
            log(f"session error: {exc}")
            code = 1
        finally:
            os._exit(code)
    conn.close()
    log(f"session from {addr[0]}:{addr[1]} (pid {pid})")
    deadline = time.monotonic() + opts["timeout"] if opts.get("timeout") else None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if deadline and time.monotonic() > deadline:
            log(f"session timeout ({opts['timeout']:g} s): killing pid {pid}")
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.05)
    shutil.rmtree(work, ignore_errors=True)
    log("session finished")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default: 127.0.0.1; another one exposes unauthenticated TVM RPC)")
    ap.add_argument("--port", type=int, default=9090)
    ap.add_argument("--port-end", type=int, default=None, help="try ports [port, port-end) (default: port+100)")
    ap.add_argument("--tracker", default=None, help="HOST:PORT of a TVM RPC tracker to register with")
    ap.add_argument("--key", default="", help="device key the server registers under with --tracker "
                    "(direct clients must then send the same key; default: none)")
    ap.add_argument("--custom-addr", default=None, help="address the tracker hands to clients (default: as seen)")
    ap.add_argument("--custom-port", type=int, default=None,
                    help="port the tracker hands to clients (default: the one bound; an SSH tunnel's port)")
    ap.add_argument("--exit-on-tracker-loss", action="store_true",
                    help="exit when the tracker link drops (an SSH reverse forward: the command holding it is gone, "
                    "nobody can reach this server any more) instead of registering again")
    ap.add_argument("--pid-file", default=None)
    ap.add_argument("--work-dir", default=None, help="where session directories go (default: the temp dir)")
    ap.add_argument("--num-threads", type=int, default=0, help="TVM_NUM_THREADS (0: the runtime's default)")
    args = ap.parse_args(argv)

    if args.num_threads:
        os.environ["TVM_NUM_THREADS"] = str(args.num_threads)
    try:
        tvm_ffi = runtime.load_runtime()
    except RuntimeError as exc:
        raise SystemExit(f"error: {exc}") from None
    listen = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    port = None
    for p in range(args.port, args.port_end or args.port + 100):
        try:
            listen.bind((args.host, p))
            port = p
            break
        except OSError:
            continue
    if port is None:
        raise SystemExit(f"error: cannot bind to any port in [{args.port}, {args.port_end or args.port + 100})")
    listen.listen(4)
    if args.pid_file:
        Path(args.pid_file).write_text(f"{os.getpid()}\n")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log(f"latbench board server on {args.host}:{port} (pid {os.getpid()}, runtime {runtime.find_runtime_dir()})")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log(f"warning: listening on {args.host}:{port}: TVM RPC is unauthenticated, anyone who reaches it can run code")
    print(f"PORT {port}", flush=True)

    tracker = None
    if args.tracker and not args.key:
        raise SystemExit("error: --tracker needs --key (the device key clients request)")
    if args.tracker:
        host, tport = args.tracker.rsplit(":", 1)
        tracker = Tracker((host, int(tport)), args.key, args.custom_port or port, args.custom_addr)
    while True:
        try:
            if tracker:
                tracker.connect()
            conn, addr, opts = accept(listen, tracker, args.key)
        except OSError as exc:  # the tracker dropped: register again
            if args.exit_on_tracker_loss:
                log(f"tracker connection lost ({exc}); exiting (--exit-on-tracker-loss)")
                return 0
            log(f"tracker connection lost ({exc}); reconnecting")
            if tracker:
                tracker.drop()
            continue
        serve_session(tvm_ffi, conn, addr, opts, args.work_dir)


if __name__ == "__main__":
    sys.exit(main())
