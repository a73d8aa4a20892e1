"""One timing at a time per device: an advisory lock file per device on this machine.

Two campaigns timing on the same device at once would disturb each other's numbers, so the
measure phase holds ``<cache>/locks/<device>.lock`` (``fcntl.flock``; released by the kernel even
if the process is killed). A second campaign fails at once with a clear message instead of waiting.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from latbench.artifacts import default_cache_dir
from latbench.devices import Device
from latbench.errors import DeviceError


@contextmanager
def device_lock(device: Device, lock_dir: str | Path | None = None) -> Iterator[Path | None]:
    """Hold the device's lock for the duration of the block (a tracker arbitrates its own servers)."""
    if device.rpc.mode == "tracker":
        yield None
        return
    name = device.name
    d = Path(lock_dir) if lock_dir else default_cache_dir() / "locks"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise DeviceError(f"device {name!r} is busy: another latbench campaign (pid {holder}) is timing on it; "
                              "wait for it to finish (one timing at a time per device)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing releases the lock
