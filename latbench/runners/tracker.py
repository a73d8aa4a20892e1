"""The TVM RPC tracker: start one here (:class:`LocalTracker`) and ask one what it serves.

The tracker (``python -m tvm.exec.rpc_tracker``) is a directory: RPC servers register under a
device key and clients ask it for a free server of a key. latbench's device pool
(:mod:`latbench.runners.pool`) reads its summary to see how many servers a key has.

Every call here has a timeout; TVM's own tracker client has none. The wire protocol is
:mod:`latbench.board.tracker_protocol` (shared with the board server).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from latbench.board import tracker_protocol as proto
from latbench.errors import DeviceError
from latbench.runners.process import ProcessGroupServer, port_is_open

log = logging.getLogger(__name__)


def tracker_summary(host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
    """The tracker's summary: ``{"queue_info": {key: {free, pending}}, "server_info": [...]}``.

    Speaks the tracker protocol directly (no ``import tvm``, a socket timeout on every read).
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            if not proto.handshake(s):
                raise DeviceError(f"{host}:{port} is not a TVM RPC tracker")
            proto.sendjson(s, [proto.CODE_SUMMARY])
            reply = proto.recvjson(s)
    except DeviceError:
        raise
    except (OSError, ValueError) as exc:
        raise DeviceError(f"no RPC tracker at {host}:{port} ({exc.__class__.__name__}: {exc}); "
                          f"start one with `latbench tracker start --port {port}`") from None
    if not (isinstance(reply, list) and reply and reply[0] == proto.CODE_SUCCESS):
        raise DeviceError(f"tracker {host}:{port} answered the summary request with {reply!r}")
    return reply[1]


def servers_of(summary: dict[str, Any], key: str) -> list[str]:
    """Addresses (``host:port``) of the servers registered under ``key`` (free or busy)."""
    out = []
    for info in summary.get("server_info", []):
        if info.get("key") == f"server:{key}":
            addr = info.get("addr") or [None, None]
            out.append(f"{addr[0]}:{addr[1]}")
    return sorted(out)


def format_summary(summary: dict[str, Any]) -> str:
    """A human-readable table of the tracker's keys and servers."""
    lines = ["key            total  free  pending  servers"]
    queue = summary.get("queue_info", {})
    keys = sorted(set(queue) | {i.get("key", "").split(":", 1)[-1] for i in summary.get("server_info", [])
                                if i.get("key", "").startswith("server:")})
    for k in keys:
        servers = servers_of(summary, k)
        q = queue.get(k, {})
        lines.append(f"{k:<14} {len(servers):>5}  {q.get('free', 0):>4}  {q.get('pending', 0):>7}  "
                     f"{', '.join(servers) or '-'}")
    if not keys:
        lines.append("(no servers registered)")
    return "\n".join(lines)


class LocalTracker(ProcessGroupServer):
    """A TVM RPC tracker subprocess on this machine, in its own process group.

    ``with LocalTracker(port=0) as t: ...`` picks a free port (``t.port``); leaving the block
    kills the tracker. Servers register with ``--tracker t.address --key KEY``.
    """

    what = "the RPC tracker"
    label = "RPC tracker"
    log_prefix = "latbench-tracker-"

    def command(self) -> list[str]:
        # --port-end must be > port, else the tracker cannot bind (its default end is 9199).
        return [self.python, "-m", "tvm.exec.rpc_tracker", "--host", self.host, "--port", str(self.port),
                "--port-end", str(self.port + 1)]

    def busy_error(self) -> str:
        return (f"port {self.host}:{self.requested_port} is busy; is a tracker already running "
                f"(`latbench tracker status --port {self.requested_port}`)? Else pick another --port")

    def ready(self) -> bool:
        """Whether it answers a summary request."""
        if not port_is_open(self.host, self.port, 0.5):
            return False
        try:
            tracker_summary(self.host, self.port, 2.0)
            return True
        except DeviceError:
            return False

    def summary(self, timeout: float = 5.0) -> dict[str, Any]:
        return tracker_summary(self.host, self.port, timeout)

    def wait_for_servers(self, key: str, n: int, timeout: float = 60.0) -> list[str]:
        """Block until ``n`` servers are registered under ``key``; returns their addresses."""
        deadline = time.monotonic() + timeout
        while True:
            servers = servers_of(self.summary(), key)
            if len(servers) >= n:
                return servers
            if time.monotonic() > deadline:
                raise DeviceError(f"only {len(servers)} of {n} '{key}' servers registered with tracker "
                                  f"{self.address} within {timeout:g} s")
            time.sleep(0.2)

    def wait(self) -> int:
        """Block until the tracker exits (foreground `latbench tracker start`)."""
        assert self.proc is not None
        return self.proc.wait()


def pid_file_default(port: int) -> Path:
    """Where ``latbench tracker start --background`` records the tracker's PID."""
    from latbench.artifacts import default_cache_dir

    return default_cache_dir() / f"tracker-{port}.pid"


def is_running(pid: int) -> bool:
    """Whether a process ``pid`` exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def is_our_tracker(pid: int) -> bool:
    """Whether process ``pid`` is a TVM RPC tracker (``python -m tvm.exec.rpc_tracker``, as LocalTracker starts
    it) leading its own process group — so a stale PID file never makes us kill someone else's processes."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        leads = os.getpgid(pid) == pid
    except OSError:
        return False
    return leads and b"tvm.exec.rpc_tracker" in argv


def stop_pid(pid: int, grace: float = 5.0) -> bool:
    """Stop a background tracker started by latbench (its own process group). True if it was running."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        if _is_zombie(pid):
            return True
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def _is_zombie(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
