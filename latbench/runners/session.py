"""Time artifacts one after another through one RPC session (local server, direct, or via a tracker)."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from latbench.artifacts import Artifact
from latbench.devices import Device
from latbench.errors import DeviceError
from latbench.runners.rpc import (LocalRPCServer, RPCTimeout, call_with_timeout, connect_direct,
                                  connect_tracker_session, first_line, is_link_error, time_library)

log = logging.getLogger(__name__)

Record = Callable[[str, dict[str, Any]], None]


def check_output(expected: np.ndarray, max_abs_err: float) -> tuple[bool, float]:
    """Whether an output error is within tolerance (relative to the output's magnitude)."""
    from latbench.campaign import RTOL

    tol = RTOL * (1.0 + float(np.max(np.abs(expected))))
    return bool(max_abs_err <= tol), tol


class SessionRunner:
    """One session with one device server; ``local`` mode starts (and restarts) the server itself."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.server: LocalRPCServer | None = None
        self.session: Any = None
        self.address = ""

    # -- connection ---------------------------------------------------------------------------
    def connect(self) -> None:
        d, rpc = self.device, self.device.rpc
        if rpc.mode == "local":
            if self.server is None or not self.server.alive():
                if self.server is not None:
                    self.server.stop()
                self.server = LocalRPCServer(host=rpc.host, port=rpc.port, threads=d.threads,
                                             start_timeout=max(60.0, rpc.connect_timeout))
                self.server.start()
            self.address = self.server.address
            self.session = connect_direct(rpc.host, self.server.port, rpc.session_timeout, rpc.connect_timeout)
        elif rpc.mode == "direct":
            from latbench.runners.emulated import start_if_emulated

            start_if_emulated(d)  # an emulated board (qemu) is started on demand
            self.address = rpc.address
            self.session = connect_direct(rpc.host, rpc.port, rpc.session_timeout, rpc.connect_timeout)
        else:
            self.session = connect_tracker_session(rpc.host, rpc.port, rpc.key, rpc.session_timeout,
                                                   rpc.connect_timeout)
            self.address = f"tracker {rpc.address} key {rpc.key}"

    def reset(self) -> None:
        """Drop the session (and a local server, whose state is unknown after a timeout)."""
        self.session = None
        if self.server is not None:
            self.server.stop()
            self.server = None

    def close(self) -> None:
        self.reset()

    def __enter__(self) -> SessionRunner:
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- timing -------------------------------------------------------------------------------
    def time_one(self, art: Artifact) -> dict[str, Any]:
        """Time one artifact; raises on link errors, returns an error row for op errors."""
        x = np.load(art.input)
        expected = np.load(art.expected)
        t = self.device.timing
        try:
            res = call_with_timeout(
                lambda: time_library(self.session, art.lib, x, t, self.device.is_cuda, expected),
                t.op_timeout, f"timing on {self.address}")
        except Exception as exc:
            if is_link_error(exc):  # includes RPCTimeout: the caller drops the session
                raise
            return {"status": "error", "error": f"run failed: {first_line(exc)}", "stage": "run",
                    "server": self.address}
        ok, tol = check_output(expected, res.get("max_abs_err", 0.0))
        res.update(server=self.address, tolerance=tol)
        if not ok:
            res.update(status="error", stage="check",
                       error=f"output differs from PyTorch: max abs err {res['max_abs_err']:.3g} > {tol:.3g}")
        return res

    def run(self, items: Sequence[tuple[str, Artifact]], record: Record, progress: bool = True) -> None:
        from latbench.progress import bar

        with bar(total=len(items), desc=f"measure {self.device.name}", enabled=progress) as pbar:
            for key, art in items:
                record(key, self._time_with_retry(key, art))
                pbar.update(1)

    def _time_with_retry(self, key: str, art: Artifact) -> dict[str, Any]:
        for attempt in (1, 2):
            if self.session is None:
                self.connect()
            try:
                return self.time_one(art)
            except RPCTimeout as exc:
                # The op hung: drop the session, record it, go on with the next op.
                log.warning("%s: %s", key, exc)
                self.reset()
                return {"status": "error", "error": f"timed out after {self.device.timing.op_timeout:g} s",
                        "stage": "run", "server": self.address}
            except Exception as exc:
                if not is_link_error(exc):
                    raise
                log.warning("RPC link to %s lost while timing %s: %s", self.address, key, first_line(exc))
                self.reset()
                if attempt == 2:
                    break
        raise DeviceError(
            f"lost the RPC link to {self.device.name} ({self.address}) twice while timing {key}; "
            "check the device's RPC server and rerun the same command to resume"
        )
