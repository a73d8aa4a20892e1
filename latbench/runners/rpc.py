"""TVM RPC transport with timeouts everywhere: sessions, connecting, remote timing, a local server.

TVM's RPC calls have no timeouts of their own (a tracker ``request`` for a key nobody serves
blocks forever), so every blocking call goes through :func:`call_with_timeout`. A server that
latbench starts (:class:`LocalRPCServer`) runs in its own process group
(:class:`~latbench.runners.process.ProcessGroupServer`). Boards themselves (SSH, qemu) are
:mod:`latbench.boards`' business: this module only connects to a server that is up.
"""
from __future__ import annotations

import ctypes
import itertools
import json
import math
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, TypeVar
from collections.abc import Callable

import numpy as np

from latbench.board import conditions
from latbench.board.conditions import RPC_FUNCTION
from latbench.board.timing import check_fields, number_for, output_error, summarize
from latbench.devices import Device, Timing
from latbench.errors import DeviceError
from latbench.runners.process import ProcessGroupServer, port_is_open

log = logging.getLogger(__name__)
T = TypeVar("T")
_UPLOADS = itertools.count()


class RPCTimeout(DeviceError):
    """A remote call did not return in time."""


class RPCLinkError(DeviceError):
    """The RPC link broke (server died, connection dropped)."""


def call_with_timeout(fn: Callable[[], T], timeout: float, what: str) -> T:
    """Run ``fn()`` in a daemon thread; raise :class:`RPCTimeout` if it takes longer than ``timeout``.

    The thread is abandoned on timeout (TVM's blocking socket calls cannot be interrupted); the
    caller must then drop the session it was using.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name=f"rpc:{what}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise RPCTimeout(f"{what} did not finish within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


class LocalRPCServer(ProcessGroupServer):
    """A TVM RPC server subprocess on this machine (``python -m tvm.exec.rpc_server``).

    Used as a context manager; :meth:`stop` kills its whole process group. ``tracker``
    (``host:port``) and ``key`` register it with a tracker instead of serving direct connections.
    """

    what = "the local TVM RPC server"
    label = "RPC server"
    log_prefix = "latbench-rpc-"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, threads: int = 0,
                 tracker: str | None = None, key: str | None = None, start_timeout: float = 60.0,
                 python: str | None = None, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(host, port, start_timeout, python)
        self.threads = threads
        self.tracker = tracker
        self.key = key
        self.extra_env = extra_env or {}

    def command(self) -> list[str]:
        # With our own Python, a watchdog wrapper kills the server if this process dies uncleanly.
        entry = (["latbench.runners.serve", str(os.getpid())] if self.python == sys.executable
                 else ["tvm.exec.rpc_server"])
        cmd = [self.python, "-m", *entry, "--host", self.host,
               "--port", str(self.port), "--port-end", str(self.port + 1)]
        if self.tracker:
            cmd += ["--tracker", self.tracker, "--key", self.key or "local"]
        return cmd

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.threads:
            env["TVM_NUM_THREADS"] = str(self.threads)
        env.update(self.extra_env)
        return env

    def ready(self) -> bool:
        if self.tracker:
            # Ask the tracker, not the server: a TCP probe makes TVM's server drop and re-register.
            return self._registered()
        return port_is_open(self.host, self.port, 0.5)

    def _registered(self) -> bool:
        """Whether the tracker lists this server (matched by its port)."""
        import tvm.rpc

        assert self.tracker is not None
        host, port = self.tracker.rsplit(":", 1)
        try:
            summary = call_with_timeout(lambda: tvm.rpc.connect_tracker(host, int(port)).summary(), 5.0,
                                        "asking the tracker")
        except Exception:
            return False
        return any(str(info.get("addr", [None, None])[1]) == str(self.port) or
                   f":{self.port}" in str(info.get("addr")) for info in summary.get("server_info", []))


def connect_direct(host: str, port: int, session_timeout: float, timeout: float) -> Any:
    """A session with the RPC server at ``host:port`` (clear error if it cannot be reached)."""
    import tvm.rpc

    if not port_is_open(host, port, min(timeout, 5.0)):
        raise DeviceError(
            f"no TVM RPC server at {host}:{port}; start one on the device "
            f"(`latbench device start`, or python -m tvm.exec.rpc_server --port {port} there; a board's server "
            f"listening on its 127.0.0.1 is reached with rpc.tunnel: true)"
        )
    try:
        return call_with_timeout(lambda: tvm.rpc.connect(host, port, session_timeout=int(session_timeout)),
                                 timeout, f"connecting to {host}:{port}")
    except RPCTimeout:
        raise DeviceError(f"the TVM RPC server at {host}:{port} accepted no session within {timeout:g} s "
                          "(busy with another client, or frozen); check it, then rerun the same command to resume"
                          ) from None
    except Exception as exc:
        raise DeviceError(f"cannot open a TVM RPC session with {host}:{port}: {first_line(exc)}") from None


def connect_tracker_session(host: str, port: int, key: str, session_timeout: float, timeout: float) -> Any:
    """A session with a free server of ``key`` from the tracker at ``host:port``."""
    import tvm.rpc

    if not port_is_open(host, port, min(timeout, 5.0)):
        raise DeviceError(f"no RPC tracker at {host}:{port}; start one with `latbench tracker start --port {port}`")
    tracker = None
    try:
        tracker = call_with_timeout(lambda: tvm.rpc.connect_tracker(host, port), timeout,
                                    f"connecting to tracker {host}:{port}")
        return call_with_timeout(
            lambda: tracker.request(key, priority=1, session_timeout=int(session_timeout)), timeout,
            f"waiting for a free '{key}' server",
        )
    except RPCTimeout:
        if tracker is not None:  # else the tracker may hand a server to the abandoned request
            try:
                tracker.close()
            except Exception:
                pass
        raise DeviceError(
            f"tracker {host}:{port} has no free server with key '{key}' after {timeout:g} s; start the "
            f"device's server (`latbench device start`, or python -m tvm.exec.rpc_server "
            f"--tracker {host}:{port} --key {key})"
        ) from None


def check_reachable(device: Device) -> None:
    """Fail fast (before any compile) when a remote device's server or tracker is not listening."""
    rpc = device.rpc
    if rpc.mode == "local":
        return
    if rpc.mode == "direct":
        if not port_is_open(rpc.host, rpc.port, min(rpc.connect_timeout, 5.0)):
            raise DeviceError(
                f"no TVM RPC server at {rpc.host}:{rpc.port} for device {device.name!r}; start the board's server "
                f"(`latbench device start {device.name}`, or python -m tvm.exec.rpc_server --port {rpc.port} on the "
                f"board; with rpc.tunnel: true latbench reaches its 127.0.0.1 through SSH)")
    elif not port_is_open(rpc.host, rpc.port, min(rpc.connect_timeout, 5.0)):
        raise DeviceError(
            f"no RPC tracker at {rpc.host}:{rpc.port} for device {device.name!r} (key {rpc.key!r}); start one with "
            f"`latbench tracker start --port {rpc.port}` and register the board with `latbench device start "
            f"{device.name}`")


def first_line(exc: BaseException) -> str:
    """The informative first line of a (possibly multi-line, C++-backtraced) TVM error."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "Check failed" in ln or "Error" in ln:
            return ln[:300]
    return (lines[0] if lines else exc.__class__.__name__)[:300]


def is_link_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the RPC connection is gone (vs. an error in the op itself)."""
    text = str(exc)
    return isinstance(exc, (RPCTimeout, RPCLinkError, ConnectionError, BrokenPipeError)) or any(
        s in text for s in ("kShutdown", "Broken pipe", "SockChannel", "Connection reset", "RPCSession",
                            "Socket", "code == RPCCode::kReturn")
    )


class RPCSession:
    """A :class:`latbench.runners.base.Session` over a TVM RPC session: each item is uploaded and
    loaded into a Relax VM once; every remote call has the device's per-op timeout."""

    def __init__(self, remote: Any, address: str, is_cuda: bool = False, timeout: float = 120.0,
                 on_this_machine: bool = False) -> None:
        self.remote, self.address, self.is_cuda, self.timeout = remote, address, is_cuda, timeout
        self.on_this_machine = on_this_machine
        self.items: dict[str, tuple[Any, Any, Any]] = {}
        self.abandoned = False
        self.broken = False

    def _call(self, fn: Callable[[], T], what: str) -> T:
        try:
            return call_with_timeout(fn, self.timeout, f"{what} on {self.address}")
        except RPCTimeout:
            self.abandoned = True  # a thread still blocks inside this session
            raise
        except Exception:
            # A remote error can leave TVM's RPC protocol out of step (after a VM error every later
            # call fails with "size <= pending_request_bytes_"): the runner reopens the session.
            self.broken = True
            raise

    def load(self, key: str, art: Path | Any, min_repeat_ms: float) -> dict[str, Any]:
        lib = Path(getattr(art, "lib", art))
        root = lib.parent
        x, expected = np.load(root / "input.npy"), np.load(root / "expected.npy")
        try:
            vm, dev, xt, y = self._call(lambda: self._upload(lib, x), "loading " + key)
        except Exception as exc:
            if is_link_error(exc):
                raise
            return {"status": "error", "stage": "run", "error": f"run failed: {first_line(exc)}"}
        self.items[key] = (vm, dev, xt)
        out = check_fields(expected, output_error(y, expected))
        if out.get("status") == "error":
            return out
        # One short evaluator call calibrates `number` (TVM raises it until a repeat lasts min_repeat_ms).
        per_run = self._call(lambda: vm.time_evaluator("main", dev, number=1, repeat=1,
                                                       min_repeat_ms=int(math.ceil(min_repeat_ms)))(xt).mean,
                             "calibrating " + key)
        out["number"] = number_for(float(per_run), min_repeat_ms)
        return out

    def _upload(self, lib: Path, x: np.ndarray) -> tuple[Any, Any, Any, np.ndarray]:
        import tvm
        from tvm import relax

        # A fresh name per upload: overwriting a library the server has loaded crashes it.
        name = f"lb_{lib.parent.name}_{next(_UPLOADS)}.so"
        self.remote.upload(str(lib), name)
        rlib = self.remote.load_module(name)
        dev = self.remote.cuda(0) if self.is_cuda else self.remote.cpu(0)
        vm = relax.VirtualMachine(rlib, dev)
        xt = tvm.runtime.tensor(x, dev)
        return vm, dev, xt, vm["main"](xt).numpy()

    def time(self, key: str, warmup: int, number: int, repeat: int, cooldown_ms: float) -> list[float]:
        vm, dev, xt = self.items[key]

        def run() -> list[float]:
            if warmup:
                vm.time_evaluator("main", dev, number=warmup, repeat=1)(xt)
            res = vm.time_evaluator("main", dev, number=number, repeat=repeat, min_repeat_ms=0,
                                    cooldown_interval_ms=int(cooldown_ms))(xt)
            return [float(r) for r in res.results]

        return self._call(run, "timing " + key)

    def conditions(self) -> dict[str, Any]:
        """From the board server's ``latbench.conditions`` function; a server on this machine (TVM's own,
        which runs sessions in a fresh interpreter) is read here; a stock remote server gives ``{}``."""
        def read() -> Any:
            try:
                return self.remote.get_function(RPC_FUNCTION)()
            except AttributeError:  # TVM: "Module has no function"
                return None

        got = parse_conditions(self._call(read, "reading conditions"))
        if not got and self.on_this_machine:
            got = conditions.read()
        return got

    def close(self) -> None:
        if self.abandoned:
            _leak([self.remote, self.items])
            self.items = {}
        else:
            self.items.clear()
        self.remote = None


def _leak(objects: Any) -> None:
    """Never free ``objects``: remote handles of a session whose call timed out. Freeing one sends a message
    through the session, which waits for the lock the abandoned call (blocked in a socket read, forever if the
    link died silently) holds — the caller would hang, at once or at interpreter exit. The process keeps them
    (a few handles per timeout) until it ends."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(objects))


def parse_conditions(text: Any) -> dict[str, Any]:
    """A conditions record from its JSON (``{}`` for anything else)."""
    try:
        d = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}


def time_library(remote: Any, lib_path: Path, x: np.ndarray, timing: Timing, is_cuda: bool = False,
                 expected: np.ndarray | None = None) -> dict[str, Any]:
    """Upload a compiled library, check it and time it in one window (``repeat`` repeats); statistics in ms."""
    sess = RPCSession(remote, "rpc", is_cuda, timing.op_timeout)
    info = sess.load("lib", Path(lib_path), timing.min_repeat_ms)
    if info.get("status") == "error":
        return info
    samples = sess.time("lib", timing.warmup, info["number"], timing.repeat, timing.cooldown_ms)
    return {**summarize(samples), "number": info["number"], "max_abs_err": info["max_abs_err"]}
