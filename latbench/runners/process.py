"""Processes latbench starts on this machine. Helper servers (a TVM RPC server, an RPC tracker), each in a process
group of its own: TVM's servers fork a listener and per-session children, and killing the group is the
only way to stop them all; the port helpers they are started with. And worker processes (build workers, the SSH
tunnel helper), which die with latbench and leave its signals to it (:func:`die_with_parent`,
:class:`WorkerContext`)."""
from __future__ import annotations

import ctypes
import logging
import multiprocessing.context
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
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


#: What a terminal sends a whole process group: a worker leaves these to latbench, which stops it.
TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def die_with_parent(parent: int | None = None, ignore_terminal_signals: bool = False) -> None:
    """In a worker process: the kernel SIGKILLs it when its parent dies (``PR_SET_PDEATHSIG``), even by SIGKILL; if
    the parent (pid ``parent``) is already gone, exit now. With ``ignore_terminal_signals``, Ctrl-C (which reaches
    the whole process group) and SIGTERM are latbench's to handle: it kills its workers itself, and a worker
    interrupted halfway would only print a traceback of its own."""
    if ignore_terminal_signals:
        for sig in TERMINAL_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):  # not Linux: the process group is all there is
        pass
    if parent is not None and os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


@contextmanager
def terminal_signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back while a worker is launched: a signal handled halfway through a launch leaves the
    child reading a truncated start-up message (it dies with an ``EOFError`` traceback on the shared stderr). The
    signals that arrived are delivered as soon as the launch is done. Outside the main thread, a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in TERMINAL_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(pending):
            signal.raise_signal(sig)


class _WorkerProcess(multiprocessing.context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        with terminal_signals_deferred():
            return multiprocessing.context.SpawnProcess._Popen(process_obj)


class WorkerContext(multiprocessing.context.SpawnContext):
    """The ``spawn`` start method (fork after importing torch/TVM is unsafe), with each launch shielded from
    SIGINT/SIGTERM (:func:`terminal_signals_deferred`). Workers call :func:`die_with_parent` first thing."""

    Process = _WorkerProcess


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
