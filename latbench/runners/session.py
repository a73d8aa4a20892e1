"""Visits one after another on one session: an RPC server (local, direct, or one from a tracker), a
host worker process, or this process (runtime-only). The session is opened by a factory, so a lost
link is reopened (and a hung op recorded) the same way whatever the transport."""
from __future__ import annotations

import logging
from typing import Any
from collections.abc import Callable, Sequence

from latbench.artifacts import Artifact
from latbench.devices import Device
from latbench.errors import DeviceError
from latbench.runners.base import OnResult, Prober, Session, Visit
from latbench.runners.process import LOOPBACK
from latbench.runners.rpc import (LocalRPCServer, RPCSession, RPCTimeout, connect_direct, connect_tracker_session,
                                  first_line, is_link_error)

log = logging.getLogger(__name__)

#: Session lifetime with a server latbench started itself (TVM ends sessions older than their timeout).
LOCAL_SESSION_S = 24 * 3600


class SerialRunner:
    """Takes the visits of a round in order on one session (reopened when its link is lost)."""

    def __init__(self, device: Device, open_session: Callable[[], Session], visit_repeat: int,
                 reference: Artifact | None, close_hook: Callable[[], None] | None = None) -> None:
        self.device = device
        self.open_session = open_session
        self.visit_repeat = visit_repeat
        self.reference = reference
        self.close_hook = close_hook
        self.prober: Prober | None = None

    def __enter__(self) -> SerialRunner:
        self._connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.reset()
        if self.close_hook:
            self.close_hook()

    def _connect(self) -> Prober:
        if self.prober is None:
            self.prober = Prober(self.open_session(), self.device.timing, self.visit_repeat, self.reference,
                                 board=self.device.name)
        return self.prober

    def reset(self) -> None:
        if self.prober is not None:
            try:
                self.prober.session.close()
            except Exception:  # the session is being dropped because it is broken
                pass
            self.prober = None

    @property
    def address(self) -> str:
        return self.prober.session.address if self.prober else self.device.name

    def run(self, visits: Sequence[Visit], on_result: OnResult) -> None:
        for v in visits:
            on_result(v, self._visit(v))

    def _visit(self, v: Visit) -> dict[str, Any]:
        for attempt in (1, 2):
            try:
                prober = self._connect()
                res = prober.visit(v)
                if prober.session.broken:  # the next visit gets a fresh session (a local server: a new one)
                    log.info("%s: reopening the session to %s after a failed call", v.key, self.address)
                    self.reset()
                return res
            except RPCTimeout as exc:
                # The op hung: drop the session (a local server is restarted), record it, go on.
                log.warning("%s: %s", v.key, exc)
                address = self.address
                self.reset()
                return {"status": "error", "error": f"timed out after {self.device.timing.op_timeout:g} s",
                        "stage": "run", "server": address}
            except Exception as exc:
                if not is_link_error(exc):
                    raise
                log.warning("link to %s lost while timing %s: %s", self.address, v.key, first_line(exc))
                self.reset()
                if attempt == 2:
                    break
        raise DeviceError(
            f"lost the link to {self.device.name} ({self.address}) twice while timing {v.key}; "
            "check the device's server and rerun the same command to resume")


class RPCConnector:
    """Opens RPC sessions for a device; in ``local`` mode it starts (and restarts) the server itself."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.server: LocalRPCServer | None = None

    def __call__(self) -> RPCSession:
        d, rpc = self.device, self.device.rpc
        if rpc.mode == "local":
            if self.server is not None:  # a new session after a timeout: the old server's state is unknown
                self.server.stop()
            self.server = LocalRPCServer(host=rpc.host, port=rpc.port, threads=d.threads,
                                         start_timeout=max(60.0, rpc.connect_timeout)).start()
            # Our own server: a long campaign must not hit TVM's session expiry (hung ops have op_timeout).
            remote = connect_direct(rpc.host, self.server.port, max(rpc.session_timeout, LOCAL_SESSION_S),
                                    rpc.connect_timeout)
            address = self.server.address
        elif rpc.mode == "direct":  # a board's server (an emulated one is started by boards.prepare)
            remote = connect_direct(rpc.host, rpc.port, rpc.session_timeout, rpc.connect_timeout)
            address = rpc.address
        else:
            remote = connect_tracker_session(rpc.host, rpc.port, rpc.key or "", rpc.session_timeout,
                                             rpc.connect_timeout)
            address = f"tracker {rpc.address} key {rpc.key}"
        return RPCSession(remote, address, d.is_cuda, d.timing.op_timeout,
                          on_this_machine=rpc.mode == "local" or rpc.host in LOOPBACK)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
