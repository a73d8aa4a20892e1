"""A board's TVM RPC server, written once against :class:`~latbench.boards.hosts.Host`: its facts,
start (upload the runtime bundle, run ``board_server.py`` in its own process group) and stop.

The host is qemu on this machine for an emulated device (:mod:`latbench.boards.emulated`), else SSH
(:mod:`latbench.boards.ssh`). The facts come from :mod:`latbench.board.facts`, run with the board's
Python.
"""
from __future__ import annotations

import json
import logging
import shlex
import time
from pathlib import Path
from typing import Any

from latbench.boards.emulated import emulator_of
from latbench.boards.hosts import Host
from latbench.devices import Device
from latbench.errors import ConfigError, DeviceError
from latbench.runners.process import is_loopback, warn_exposed

log = logging.getLogger(__name__)

#: Facts script run with the board's Python (stdlib only; reads /proc and /sys, never fails).
FACTS_SCRIPT = Path(__file__).resolve().parent.parent / "board" / "facts.py"


def open_host(device: Device) -> Host:
    """The host of the device's board: qemu on this machine for emulated devices, else SSH."""
    emu = emulator_of(device)
    if emu is not None:
        return emu.host()
    if device.ssh is None:
        raise ConfigError(f"{device.source}: device {device.name!r} has no 'ssh' section (host, user, key_file) "
                          "to manage its board")
    from latbench.boards.ssh import SSHHost  # paramiko: only for real boards

    return SSHHost(device.ssh, device.name, device.source)


def workdir(device: Device, host: Host) -> str:
    emu = emulator_of(device)
    if emu is not None:
        return str(emu.workdir)
    return host.expand(device.ssh.workdir if device.ssh else "~/.latbench")


def board_info(device: Device, host: Host) -> dict[str, Any]:
    """Facts of the board: uname, CPU, cores, memory, governors, temperature, Python, TVM runtime."""
    wd = workdir(device, host)
    rc, out, err = host.run(f"{host.python} - {shlex.quote(wd + '/bundle')}", 60, stdin=FACTS_SCRIPT.read_text())
    if rc != 0:
        raise DeviceError(f"{host.name}: cannot run {host.python} on the board (exit {rc}): "
                          f"{(err or out).strip()[-200:]}; set ssh.python to the board's Python 3")
    try:
        facts = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise DeviceError(f"{host.name}: unexpected facts output: {out[-200:]!r}") from None
    facts["emulated"] = device.emulated
    facts["server"] = server_status(device, host)
    return facts


def governor_warning(facts: dict[str, Any]) -> str | None:
    """A warning when the CPU frequency governor is not ``performance`` (timings then drift)."""
    govs = facts.get("governors") or []
    bad = [g for g in govs if g != "performance"]
    if bad:
        return (f"CPU frequency governor is {', '.join(govs)}, not 'performance': timings will vary; on the board: "
                "echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor")
    return None


def _pid_file(wd: str) -> str:
    return f"{wd}/server.pid"


def server_status(device: Device, host: Host) -> dict[str, Any]:
    """Whether the board server latbench started is running (its PID file and process)."""
    wd = workdir(device, host)
    pf = shlex.quote(_pid_file(wd))
    rc, out, _ = host.run(f"test -f {pf} && pid=$(cat {pf}) && kill -0 $pid 2>/dev/null && "
                          f"! grep -q '^State:.*Z' /proc/$pid/status 2>/dev/null && echo $pid", 15)
    pid = out.strip()
    return {"running": bool(rc == 0 and pid.isdigit()), "pid": int(pid) if pid.isdigit() else None}


def bind_address(device: Device, tracker: str | None = None, bind: str | None = None) -> str:
    """Where the board's server listens: ``bind`` (``device start --bind``), else ``rpc.bind``, else 127.0.0.1.

    A loopback server latbench could not reach (no tunnel, the server or the tracker elsewhere) is refused
    in one line; a server on another address gets the warning that TVM RPC is unauthenticated."""
    rpc = device.rpc
    addr = bind or rpc.bind or "127.0.0.1"
    peer = tracker.rsplit(":", 1)[0] if tracker else rpc.host
    if is_loopback(addr) and not rpc.tunnel and not is_loopback(peer):
        what = "the tracker" if rpc.mode == "tracker" else "latbench"
        raise ConfigError(f"{device.source}: the board's server listens on 127.0.0.1 by default, where {what} at "
                          f"{peer} cannot reach it; set 'rpc.tunnel: true' (SSH port forwards, nothing exposed) or "
                          f"'rpc.bind: 0.0.0.0' (exposes unauthenticated TVM RPC to the network)")
    if not is_loopback(addr):
        warn_exposed(f"{device.name}'s board server", addr)
    return addr


def server_command(device: Device, host: Host, bundle_dir: str, tracker: str | None = None,
                   bind: str | None = None, advertise_port: int | None = None) -> list[str]:
    """The board server command line for the device's RPC mode (``advertise_port``: the port the tracker
    hands to clients, a tunnel's, instead of the one the server binds)."""
    rpc = device.rpc
    wd = workdir(device, host)
    cmd = [host.python, f"{bundle_dir}/board_server.py", "--pid-file", _pid_file(wd), "--work-dir", f"{wd}/sessions"]
    if device.num_threads:
        cmd += ["--num-threads", str(device.num_threads)]
    if rpc.mode == "tracker":
        cmd += ["--host", bind_address(device, tracker, bind), "--port", "9090", "--tracker", tracker or rpc.address,
                "--key", rpc.key]
        if advertise_port:  # reached through `device start`'s SSH forwards: it must not outlive them
            cmd += ["--custom-addr", "127.0.0.1", "--custom-port", str(advertise_port), "--exit-on-tracker-loss"]
    elif rpc.mode == "direct":
        cmd += ["--host", bind_address(device, None, bind), "--port", str(rpc.port), "--port-end", str(rpc.port + 1)]
    else:
        raise ConfigError(f"{device.source}: field 'rpc.mode': `latbench device start` needs 'tracker' or 'direct' "
                          f"(mode 'local' servers are started by latbench measure itself), got {rpc.mode!r}")
    return cmd


def start_server(device: Device, host: Host, bundle: Path, tracker: str | None = None,
                 timeout: float = 90.0, bind: str | None = None, advertise_port: int | None = None) -> dict[str, Any]:
    """Upload the runtime bundle and start the board's RPC server in the background (own process group)."""
    wd = workdir(device, host)
    remote_bundle = f"{wd}/bundle"
    cmd = " ".join(shlex.quote(c) for c in server_command(device, host, remote_bundle, tracker, bind, advertise_port))
    status = server_status(device, host)
    if status["running"]:
        raise DeviceError(f"{host.name}: a latbench board server is already running (pid {status['pid']}); "
                          f"`latbench device stop {device.name}` first")
    host.check(f"mkdir -p {shlex.quote(wd)}/sessions", what="creating the work directory")
    t0 = time.monotonic()
    if _remote_bundle_sha(host, remote_bundle) != json.loads((bundle / "bundle.json").read_text())["sha256"]:
        host.put_dir(bundle, remote_bundle)
        log.info("uploaded the bundle to %s:%s in %.1f s", host.name, remote_bundle, time.monotonic() - t0)
    log_path = f"{wd}/server.log"
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in host.env.items())
    # The subshell returns at once; the server (setsid: its own session and process group) keeps no pipe open.
    host.check(f"rm -f {shlex.quote(_pid_file(wd))} && cd {shlex.quote(wd)} && ({env} setsid nohup {cmd} "
               f"> {shlex.quote(log_path)} 2>&1 < /dev/null &) && echo started", what="starting the server")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc, out, _ = host.run(f"cat {shlex.quote(log_path)} 2>/dev/null", 15)
        status = server_status(device, host)
        if "board server on" in out and status["running"]:
            port = next((ln.split()[1] for ln in out.splitlines() if ln.startswith("PORT ")), None)
            if device.rpc.mode == "tracker" and "registered with tracker" not in out:
                if "cannot reach tracker" in out:
                    stop_server(device, host)
                    raise DeviceError(f"{host.name}: the board cannot reach tracker {tracker or device.rpc.address}; "
                                      "pass --tracker with an address the board can reach")
                time.sleep(0.5)
                continue
            return {"pid": status["pid"], "port": int(port) if port else None, "log": log_path,
                    "bundle": remote_bundle}
        if "error" in out.lower() and not status["running"]:
            raise DeviceError(f"{host.name}: the board server failed to start: {out.strip().splitlines()[-1][:300]}")
        time.sleep(0.5)
    stop_server(device, host)
    raise DeviceError(f"{host.name}: the board server did not come up within {timeout:g} s (log: {log_path})")


def _remote_bundle_sha(host: Host, path: str) -> str | None:
    rc, out, _ = host.run(f"cat {shlex.quote(path)}/bundle.json 2>/dev/null", 15)
    try:
        return json.loads(out)["sha256"] if rc == 0 else None
    except (ValueError, KeyError):
        return None


def stop_server(device: Device, host: Host, grace: float = 5.0) -> bool:
    """Stop the board server latbench started: SIGTERM its process group, SIGKILL after ``grace``."""
    wd = workdir(device, host)
    pf = shlex.quote(_pid_file(wd))
    status = server_status(device, host)
    if not status["running"]:
        host.run(f"rm -f {pf}", 15)
        return False
    pid = status["pid"]
    # The server is a session leader (setsid): its group holds the session children too.
    host.run(f"kill -TERM -- -{pid} 2>/dev/null || kill -TERM {pid}", 15)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and server_status(device, host)["running"]:
        time.sleep(0.2)
    if server_status(device, host)["running"]:
        host.run(f"kill -KILL -- -{pid} 2>/dev/null || kill -KILL {pid}", 15)
    host.run(f"rm -f {pf}", 15)
    return True
