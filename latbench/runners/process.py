"""Helper servers latbench starts on this machine (a TVM RPC server, an RPC tracker), each in a process
group of its own: TVM's servers fork a listener and per-session children, and killing the group is the
only way to stop them all. Also the port helpers they are started with."""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

from latbench.errors import DeviceError

log = logging.getLogger(__name__)
S = TypeVar("S", bound="ProcessGroupServer")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def port_is_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


#: Addresses that only this machine can reach.
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def warn_exposed(what: str, address: str) -> None:
    """The one warning line when a server latbench starts listens beyond this machine's loopback."""
    log.warning("%s listens on %s: TVM RPC is unauthenticated — anyone who reaches it can register fake servers, "
                "feed bogus timings or run code; bind 127.0.0.1 and use an SSH tunnel (rpc.tunnel: true) "
                "unless this network is trusted", what, address)


def kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop a process started with ``start_new_session=True`` and every child it forked."""
    # SIGKILL after SIGTERM: forked children (TVM's per-session worker) may outlive the leader
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            if sig == signal.SIGKILL:
                log.warning("process %d did not exit after SIGKILL", proc.pid)


class ProcessGroupServer:
    """A server subprocess on ``host:port`` in its own process group, used as a context manager.

    :meth:`start` picks the port (``port=0``: a free one), starts :meth:`command` with its output in
    a log file and waits until :meth:`ready` (or raises :class:`DeviceError` with the log's tail);
    :meth:`stop` kills the whole group. Subclasses set :attr:`what` and :attr:`label` and implement
    :meth:`command`, :meth:`ready` and :meth:`busy_error`.
    """

    #: Names used in messages: ``"the RPC tracker exited at start"``, ``"RPC tracker up on ..."``.
    what = "the server"
    label = "server"
    log_prefix = "latbench-"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 60.0,
                 python: str | None = None, log_path: str | Path | None = None) -> None:
        self.host = host
        self.requested_port = port
        self.port = port
        self.start_timeout = start_timeout
        self.python = python or sys.executable
        self.log_path = Path(log_path) if log_path else None
        self._own_log = log_path is None
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The subprocess's environment (None: this process's)."""
        return None

    def ready(self) -> bool:
        """Whether the started server serves yet."""
        raise NotImplementedError

    def busy_error(self) -> str:
        """The message when the requested port is taken."""
        return f"port {self.host}:{self.requested_port} is busy; stop what uses it or choose another port"

    def start(self: S) -> S:
        """Start the server and wait until it is ready; returns ``self``."""
        if self.requested_port:
            if not port_is_free(self.host, self.requested_port):
                raise DeviceError(self.busy_error())
            self.port = self.requested_port
        else:
            self.port = free_port(self.host)
        if self._own_log:
            fd, name = tempfile.mkstemp(prefix=self.log_prefix, suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        assert self.log_path is not None
        with open(self.log_path, "w") as logf:
            self.proc = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT, env=self.environment(),
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("%s up on %s (pid %d)", self.label, self.address, self.proc.pid)
        if not is_loopback(self.host):
            warn_exposed(f"the {self.label}", self.address)
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DeviceError(f"{self.what} exited at start (code {self.proc.returncode}): {self.tail_log()}")
            if self.ready():
                return
            time.sleep(0.2)
        raise DeviceError(f"{self.what} did not start within {self.start_timeout:g} s (log: {self.log_path})")

    def tail_log(self, n: int = 400) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-n:].strip().replace("\n", " | ")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
            self.proc = None
        if self._own_log and self.log_path and self.log_path.exists():
            self.log_path.unlink()

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
