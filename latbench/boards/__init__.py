"""Boards, apart from the transport that talks to them: where a board's commands run
(:mod:`~latbench.boards.hosts`: this machine; :mod:`~latbench.boards.ssh`: a real board over SSH;
:mod:`~latbench.boards.emulated`: a board under qemu here) and its TVM RPC server's lifecycle
(:mod:`~latbench.boards.server`: facts, start, stop).

The runners (:mod:`latbench.runners`) only connect to a server that is up; a campaign calls
:func:`prepare` once before it connects, which starts an emulated board on demand.
"""
from __future__ import annotations

from latbench.boards.emulated import emulator_of
from latbench.boards.server import start_server
from latbench.boards.tunnel import tunnel
from latbench.devices import Device
from latbench.runners.bundle import cached_bundle
from latbench.runners.process import port_is_open


__all__ = ["prepare", "tunnel"]


def prepare(device: Device) -> bool:
    """Make the device's board ready to be connected to: an emulated device's board server (direct RPC
    mode) is started if it is not listening yet, so `latbench measure --target rasp4-qemu` works without
    `latbench device start`. Real boards are left as they are (their server is started by the user).

    Returns True when it started one (it keeps running; `latbench device stop NAME` stops it)."""
    if device.rpc.mode != "direct":
        return False
    emu = emulator_of(device)
    if emu is None:
        return False
    if port_is_open(device.rpc.host, device.rpc.port, 1.0):
        return False
    with emu.host() as host:
        start_server(device, host, cached_bundle(device))
    return True
