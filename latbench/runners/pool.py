"""A device pool: time ops on every server of a tracker key in parallel.

One worker thread per server, each holding one RPC session (so each server times one op at a
time). Workers take ops from a shared queue. When a server dies or an op times out, its op goes
back on the queue for another server; the worker drops its session and asks the tracker for a
new one. A supervisor loop adds workers when more servers register than there are workers, and
raises :class:`DeviceError` when ops remain but no server is left. Rows already recorded stay.

Each row's ``server`` is the ``host:port`` the tracker handed out (the same address
``latbench tracker status`` lists).
"""
from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from collections.abc import Sequence

from latbench.artifacts import Artifact
from latbench.board import tracker_protocol as proto
from latbench.devices import Device
from latbench.errors import DeviceError
from latbench.runners.base import OnResult, Prober, Visit
from latbench.runners.process import port_is_open
from latbench.runners.rpc import RPCSession, RPCTimeout, call_with_timeout, first_line, is_link_error
from latbench.runners.tracker import servers_of, tracker_summary

log = logging.getLogger(__name__)

#: How often the supervisor looks at the tracker for new servers / finished work (s).
POLL_S = 1.0
#: An op is tried on at most this many servers before it is recorded as an error.
MAX_TIMEOUTS = 2
MAX_LINK_LOSSES = 3


def request_server(host: str, port: int, key: str, timeout: float) -> tuple[str, int, str]:
    """Ask the tracker for a free server of ``key``: ``(host, port, matchkey)``.

    TVM's ``TrackerSession.request`` blocks forever when no server is free; here the socket has a
    timeout, and closing it on timeout tells the tracker to drop the pending request (its callback
    then fails and the server stays free for others).
    """
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 5.0)) as s:
            s.settimeout(timeout)
            if not proto.handshake(s):
                raise DeviceError(f"{host}:{port} is not a TVM RPC tracker")
            proto.sendjson(s, [proto.CODE_REQUEST, key, "", 1])
            reply = proto.recvjson(s)
    except TimeoutError:
        raise RPCTimeout(f"no free '{key}' server from tracker {host}:{port} within {timeout:g} s") from None
    except DeviceError:
        raise
    except (OSError, ValueError) as exc:
        raise DeviceError(f"lost the RPC tracker at {host}:{port} ({exc.__class__.__name__}: {exc})") from None
    if not (isinstance(reply, list) and reply[0] == proto.CODE_SUCCESS):
        raise DeviceError(f"tracker {host}:{port} refused the request for '{key}': {reply!r}")
    url, sport, matchkey = reply[1]
    return url, int(sport), matchkey


@dataclass
class _Item:
    visit: Visit
    timeouts: int = 0
    losses: int = 0
    last_error: str = ""


class PoolRunner:
    """Time artifacts over all servers of the device's tracker key (same interface as SessionRunner)."""

    def __init__(self, device: Device, visit_repeat: int | None = None, reference: Artifact | None = None) -> None:
        if device.rpc.mode != "tracker" or not device.rpc.key:
            raise DeviceError(f"device {device.name!r}: the pool needs rpc mode 'tracker' and an rpc.key")
        self.device = device
        self.rpc = device.rpc
        self.visit_repeat = visit_repeat or device.timing.repeat
        self.reference = reference
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._stop = threading.Event()
        self._wake = threading.Event()  # wakes the supervisor: all done, or a worker retired
        self._workers: dict[int, threading.Thread] = {}
        self._next_id = 0
        self._pending = 0  # items not yet recorded
        self.servers_used: set[str] = set()
        self.stats: dict[str, int] = {"requeued": 0, "sessions": 0}

    # -- context manager ------------------------------------------------------------------------
    def __enter__(self) -> PoolRunner:
        self._check_tracker()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (they hold sessions across rounds, so each server loads an item once)."""
        self._stop.set()
        for t in list(self._workers.values()):
            t.join(timeout=2.0)

    def _check_tracker(self) -> list[str]:
        """The servers registered under the key; a one-line DeviceError if none (or no tracker)."""
        r = self.rpc
        if not port_is_open(r.host, r.port, min(r.connect_timeout, 5.0)):
            raise DeviceError(f"no RPC tracker at {r.host}:{r.port} for device {self.device.name!r}; start one "
                              f"with `latbench tracker start --port {r.port}`")
        # Servers re-register with the tracker after any connection hiccup: give them connect_timeout.
        deadline = time.monotonic() + r.connect_timeout
        while True:
            servers = servers_of(tracker_summary(r.host, r.port, r.connect_timeout), r.key)
            if servers or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        if not servers:
            raise DeviceError(
                f"tracker {r.host}:{r.port} has no server with key '{r.key}' for device {self.device.name!r}; "
                f"start one (`latbench device start {self.device.name}`, or python -m tvm.exec.rpc_server "
                f"--tracker {r.host}:{r.port} --key {r.key})")
        return servers

    # -- the run --------------------------------------------------------------------------------
    def run(self, visits: Sequence[Visit], on_result: OnResult) -> None:
        """Take every visit exactly once (a result each) over the pool; see the module docstring."""
        if not visits:
            return
        self._pending = len(visits)
        for v in visits:
            self._queue.put(_Item(v))
        errors: list[BaseException] = []

        def done(item: _Item, result: dict[str, Any]) -> None:
            with self._lock:
                try:
                    on_result(item.visit, result)
                except BaseException as exc:  # e.g. disk full: stop the campaign, keep what is recorded
                    errors.append(exc)
                    self._stop.set()
                self._pending -= 1
                if self._pending == 0:
                    self._wake.set()

        self._done = done
        no_server_since: float | None = None
        try:
            while True:
                with self._lock:
                    pending = self._pending
                if pending == 0 or errors:
                    break
                live = [t for t in self._workers.values() if t.is_alive()]
                try:
                    servers = servers_of(tracker_summary(self.rpc.host, self.rpc.port, self.rpc.connect_timeout),
                                         self.rpc.key)
                except DeviceError:
                    servers = []  # tracker gone: running sessions may still finish their ops
                for _ in range(len(servers) - len(live)):
                    self._spawn()
                if servers or live:
                    no_server_since = None
                else:
                    no_server_since = no_server_since or time.monotonic()
                    if time.monotonic() - no_server_since > self.rpc.connect_timeout:
                        raise DeviceError(
                            f"no '{self.rpc.key}' server left at tracker {self.rpc.address} with {pending} op(s) "
                            f"to go (finished rows are saved); restart the device servers and rerun to resume")
                self._wake.wait(POLL_S)
                self._wake.clear()
                time.sleep(0.05)  # bounds the respawn rate when servers fail at once
        except BaseException:
            self._stop.set()  # Ctrl-C or no server left: workers end after their visit in flight
            raise
        if errors:
            self._stop.set()
            raise errors[0]

    def _spawn(self) -> None:
        wid = self._next_id
        self._next_id += 1
        t = threading.Thread(target=self._worker, args=(wid,), name=f"pool-worker-{wid}", daemon=True)
        self._workers[wid] = t
        t.start()

    # -- one worker: one session with one server --------------------------------------------------
    def _connect(self) -> Prober:
        import tvm.rpc  # deferred: importing TVM costs seconds

        r = self.rpc
        host, port, matchkey = request_server(r.host, r.port, r.key, r.connect_timeout)
        sess = call_with_timeout(
            lambda: tvm.rpc.connect(host, port, key=matchkey, session_timeout=int(r.session_timeout)),
            r.connect_timeout, f"connecting to {host}:{port}")
        with self._lock:
            self.stats["sessions"] += 1
        return Prober(RPCSession(sess, f"{host}:{port}", self.device.is_cuda, self.device.timing.op_timeout,
                                 on_this_machine=host in ("127.0.0.1", "localhost", "::1")),
                      self.device.timing, self.visit_repeat, self.reference)

    def _worker(self, wid: int) -> None:
        try:
            self._work(wid)
        finally:
            self._wake.set()  # a retiring worker: let the supervisor look for servers at once

    def _work(self, wid: int) -> None:
        runner: Prober | None = None
        try:
            while not self._stop.is_set():
                if runner is None:  # a session first, so that no op waits on a busy tracker
                    try:
                        runner = self._connect()
                    except Exception as exc:  # no free server / server gone: retire
                        log.info("pool worker %d: no session (%s)", wid, first_line(exc))
                        return
                    log.info("pool worker %d: session with %s", wid, runner.session.address)
                try:
                    item = self._queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                if self._stop.is_set():
                    self._queue.put(item)
                    return
                if not self._time(item, runner):
                    return  # its server is gone or hung: retire; the supervisor adds workers as needed
        finally:
            if runner is not None:
                runner.session.close()

    def _time(self, item: _Item, prober: Prober) -> bool:
        """Take one visit on the worker's server. False if the worker must drop its session."""
        t = self.device.timing
        address = prober.session.address
        try:
            res = prober.visit(item.visit)
        except RPCTimeout:
            item.timeouts += 1
            self._retry_or_fail(item, item.timeouts >= MAX_TIMEOUTS, address,
                                f"timed out after {t.op_timeout:g} s on {address}",
                                f"timed out after {t.op_timeout:g} s on {item.timeouts} servers")
            return False
        except Exception as exc:
            if not is_link_error(exc):
                raise
            item.losses += 1
            last = f"lost {address}: {first_line(exc)}"
            self._retry_or_fail(item, item.losses >= MAX_LINK_LOSSES, address, last,
                                f"lost the server {item.losses} times while timing it (last: {last})")
            return False
        with self._lock:
            self.servers_used.add(address)
        self._done(item, res)
        return not prober.session.broken  # a failed call: drop the session, the supervisor opens another

    def _retry_or_fail(self, item: _Item, give_up: bool, address: str, what: str, error: str) -> None:
        """The visit in flight was lost: another server takes it, or it is an error row after too many tries."""
        item.last_error = what
        log.warning("%s: %s", item.visit.key, what)
        if give_up:
            self._done(item, {"status": "error", "error": error, "stage": "run", "server": address})
        else:
            self._requeue(item)

    def _requeue(self, item: _Item) -> None:
        with self._lock:
            self.stats["requeued"] += 1
        self._queue.put(item)
