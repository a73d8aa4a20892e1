"""Runners: where and how artifacts are timed (a local RPC server, a remote one, a tracker pool,
or a host process for backends that time themselves).

Every runner is a context manager with ``run(items, record, progress)``: ``items`` are
``(key, Artifact)`` pairs, ``record(key, result)`` is called once per item as soon as its result
(statistics or an error) is known. Runners never time two things at once on one device server.
"""
from __future__ import annotations

from typing import Any

from latbench.devices import Device


def make_runner(device: Device, backend: Any) -> Any:
    """The runner for a device (by its RPC mode) and backend (by its kind)."""
    if backend.kind == "host":
        from latbench.runners.host import HostRunner

        return HostRunner(device, backend)
    if device.rpc.mode == "tracker":
        from latbench.runners.pool import PoolRunner

        return PoolRunner(device)
    from latbench.runners.session import SessionRunner

    return SessionRunner(device)
