"""Runners: where and how visits are timed — on one session at a time (a local, direct or tracker RPC
server, a host backend's worker process, this process on TVM's runtime alone) or over a tracker pool.

:func:`make_runner` picks one from the device's RPC mode and what the job source says it needs
(``rpc`` | ``host`` | ``runtime-only``); every runner implements :class:`latbench.runners.base.Runner`.
"""
from __future__ import annotations

from typing import Any, Literal

from latbench.artifacts import Artifact
from latbench.devices import Device
from latbench.runners.base import Runner
from latbench.runners.pool import PoolRunner
from latbench.runners.session import RPCConnector, SerialRunner

RunnerKind = Literal["rpc", "host", "runtime-only"]


def make_runner(device: Device, kind: RunnerKind | str, reference: Artifact | None, visit_repeat: int,
                backend: Any = None) -> Runner:
    """The runner for a device and a kind of artifacts."""
    if kind == "host":
        from latbench.runners.host import HostSession  # imports the backends registry lazily in its worker

        return SerialRunner(device, lambda: HostSession(device, backend), visit_repeat, reference)
    if kind == "runtime-only":
        from latbench.runners.runtime_only import RuntimeOnlySession  # loads TVM's runtime libraries

        return SerialRunner(device, lambda: RuntimeOnlySession(cuda=device.is_cuda), visit_repeat, reference)
    if device.rpc.mode == "tracker":
        return PoolRunner(device, visit_repeat, reference)
    connector = RPCConnector(device)
    return SerialRunner(device, connector, visit_repeat, reference, close_hook=connector.close)
