"""SSH board management against a real OpenSSH server on 127.0.0.1 (paramiko, known_hosts, SFTP, start/stop)."""
from __future__ import annotations

import getpass
import os
import time
from pathlib import Path

import pytest

from latbench.devices import load_device_file
from latbench.errors import DeviceError
from latbench.runners.process import free_port, port_is_open
from remote_fixtures import sshd, write_yaml  # noqa: F401  (fixture)

BOARD_PYTHON = "/usr/bin/python3"  # Debian's python3: no tvm, no numpy — a board without a TVM install


def ssh_device(tmp_path: Path, sshd: dict, name: str = "loopboard", rpc_port: int | None = None, **ssh) -> Path:
    """A device whose board is this machine through the test sshd (direct RPC on a free port)."""
    cfg = {"host": "127.0.0.1", "port": sshd["port"], "user": getpass.getuser(), "key_file": str(sshd["client_key"]),
           "known_hosts": str(sshd["known_hosts"]), "python": BOARD_PYTHON, "workdir": str(tmp_path / "board"),
           "connect_timeout": 5}
    cfg.update(ssh)
    return write_yaml(tmp_path / f"{name}.yaml", {
        "name": name, "target": {"kind": "llvm", "mcpu": "native"}, "num_threads": 1,
        "rpc": {"mode": "direct", "host": "127.0.0.1", "port": rpc_port or free_port(), "connect_timeout": 10},
        "timing": {"number": 1, "repeat": 3, "min_repeat_ms": 1, "warmup": 1, "op_timeout": 60},
        "ssh": cfg})


def test_device_info_over_ssh(tmp_path, sshd, cli):
    path = ssh_device(tmp_path, sshd)
    code, out, err = cli("device", "info", path, "--json")
    assert code == 0, err
    import json

    facts = json.loads(out)
    assert facts["machine"] == os.uname().machine
    assert facts["cores"] == os.cpu_count()
    assert facts["python"].startswith("3.")
    assert facts["emulated"] is False and facts["server"]["running"] is False
    assert facts["mem_gb"] > 0
    # Governor: unreadable in this VM (no warning) or not 'performance' (warning on stderr).
    if facts["governors"] and facts["governors"] != ["performance"]:
        assert "governor" in err


def test_host_key_policies(tmp_path, sshd):
    from latbench.boards.ssh import SSHHost

    kh = tmp_path / "empty_known_hosts"
    kh.write_text("")
    dev = load_device_file(ssh_device(tmp_path, sshd, known_hosts=str(kh)))
    with pytest.raises(DeviceError, match="unknown SSH host key"):
        SSHHost(dev.ssh)  # reject (default): an unknown key is refused
    dev = load_device_file(ssh_device(tmp_path, sshd, known_hosts=str(kh), host_key_policy="accept-new"))
    with SSHHost(dev.ssh) as h:  # accept-new: trusted and saved like OpenSSH
        assert h.check("echo hi").strip() == "hi"
    assert sshd["host_key"].split()[1] in kh.read_text()
    dev = load_device_file(ssh_device(tmp_path, sshd, known_hosts=str(kh)))
    SSHHost(dev.ssh).close()  # now known: reject policy passes
    # A changed key (another key recorded for this host) is always refused.
    other = (sshd["dir"] / "clientkey.pub").read_text().split()[:2]
    kh.write_text(f"[127.0.0.1]:{sshd['port']} {other[0]} {other[1]}\n")
    dev = load_device_file(ssh_device(tmp_path, sshd, known_hosts=str(kh), host_key_policy="accept-new"))
    with pytest.raises(DeviceError, match="does not match"):
        SSHHost(dev.ssh)


def test_ssh_errors_are_one_line(tmp_path, sshd, cli):
    import subprocess

    wrong = tmp_path / "wrongkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    code, _, err = cli("device", "info", ssh_device(tmp_path, sshd, key_file=str(wrong)))
    assert code != 0 and "authentication failed" in err and len(err.strip().splitlines()) == 1
    dead = free_port()
    t0 = time.monotonic()
    code, _, err = cli("device", "info", ssh_device(tmp_path, sshd, port=dead))
    assert code != 0 and "cannot reach" in err and f"127.0.0.1:{dead}" in err
    assert time.monotonic() - t0 < 10
    code, _, err = cli("device", "info", ssh_device(tmp_path, sshd, password_env="LATBENCH_NO_SUCH_VAR"))
    assert code != 0 and "LATBENCH_NO_SUCH_VAR" in err


def test_clear_text_password_needs_opt_in(tmp_path, sshd):
    from latbench.errors import ConfigError

    with pytest.raises(ConfigError, match="ssh.password"):
        load_device_file(ssh_device(tmp_path, sshd, password="hunter2"))
    with pytest.raises(ConfigError, match="host_key_policy"):
        load_device_file(ssh_device(tmp_path, sshd, host_key_policy="yes"))


def test_start_time_stop_server_over_ssh(tmp_path, sshd, cli, x86_set):
    """`device start` uploads the runtime bundle over SFTP and runs the tvm-free server with a python that
    has no tvm; an op is timed through it; `device stop` kills its process group."""
    import numpy as np
    import tvm.rpc

    from latbench.artifacts import load_manifest
    from latbench.devices import Timing
    from latbench.runners.rpc import time_library

    path = ssh_device(tmp_path, sshd)
    dev = load_device_file(path)
    code, out, err = cli("device", "start", path)
    assert code == 0, err
    try:
        pid = int(out.split("(pid ")[1].split(")")[0])
        assert (tmp_path / "board" / "bundle" / "lib" / "libtvm_runtime.so").exists()  # uploaded over SFTP
        assert port_is_open("127.0.0.1", dev.rpc.port)
        _, entries = load_manifest(x86_set)
        art = entries[0][1]
        sess = tvm.rpc.connect("127.0.0.1", dev.rpc.port, session_timeout=60)
        res = time_library(sess, art.lib, np.load(art.input), Timing(repeat=3, min_repeat_ms=1),
                           expected=np.load(art.expected))
        del sess
        assert res["median_ms"] > 0 and res["max_abs_err"] < 1e-4
        code, out, err = cli("device", "start", path)
        assert code != 0 and "already running" in err
    finally:
        code, out, err = cli("device", "stop", path)
    assert code == 0 and "stopped" in out
    assert not port_is_open("127.0.0.1", dev.rpc.port)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # gone (or a zombie waiting for PID 1 to reap it)
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            break
        if "State:\tZ" in state:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"board server pid {pid} still running after `device stop`")
    code, out, _ = cli("device", "stop", path)
    assert code == 0 and "was not running" in out


from remote_fixtures import x86_set  # noqa: E402,F401  (fixture)


def test_board_server_in_tracker_pool_over_ssh(tmp_path, sshd, cli, x86_set):
    """The real-Pi flow on loopback: `device start` over SSH registers the tvm-free board server with a
    tracker; the pool times ops on it; `device stop` takes it out of the tracker."""
    from latbench.artifacts import load_manifest
    from latbench.runners.base import Visit
    from latbench.runners.pool import PoolRunner
    from latbench.runners.tracker import LocalTracker, servers_of

    with LocalTracker() as tracker:
        path = ssh_device(tmp_path, sshd, name="sshpool")
        dev_dict = __import__("yaml").safe_load(path.read_text())
        dev_dict["rpc"] = {"mode": "tracker", "host": "127.0.0.1", "port": tracker.port, "key": "sshpool",
                           "connect_timeout": 10}
        write_yaml(path, dev_dict)
        code, out, err = cli("device", "start", path)
        assert code == 0, err
        try:
            assert "registered with tracker" in out
            (addr,) = tracker.wait_for_servers("sshpool", 1, timeout=20)
            _, entries = load_manifest(x86_set)
            rows = []
            with PoolRunner(load_device_file(path)) as pool:
                pool.run([Visit(e["key"], a) for e, a in entries], lambda v, r: rows.append((v.key, r)))
            assert sorted(k for k, _ in rows) == sorted(e["key"] for e, _ in entries)
            assert all(r.get("status", "ok") == "ok" and r["server"] == addr for _, r in rows), rows
        finally:
            code, _, err = cli("device", "stop", path)
            assert code == 0, err
        deadline = time.monotonic() + 10
        while servers_of(tracker.summary(), "sshpool") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not servers_of(tracker.summary(), "sshpool")


def _listening(port: int) -> set[str]:
    """Local addresses listening on TCP ``port`` (from /proc/net/tcp: hex address, state 0A = LISTEN)."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if state == "0A" and int(p, 16) == port:
            out.add(".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return out


def _alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def test_measure_through_ssh_tunnel(tmp_path, sshd, cli, x86_set):
    """rpc mode ssh: the board's server listens on its 127.0.0.1 only and the campaign reaches it through a
    port forward on the SSH connection (rows name the forward's port, not the board's)."""
    import pandas as pd
    import yaml

    path = ssh_device(tmp_path, sshd, name="tunboard")
    d = yaml.safe_load(path.read_text())
    d["target"] = {"kind": "llvm", "mcpu": "native", "num-cores": os.cpu_count()}  # x86_set's (local-cpu's) target
    board_port = free_port()
    d["rpc"] = {"mode": "ssh", "port": board_port, "connect_timeout": 10}
    write_yaml(path, d)
    code, out, err = cli("measure", "--artifacts", x86_set, "--target", path, "--out", tmp_path / "data")
    assert code == 3 and "device start tunboard" in err and len(err.strip().splitlines()) == 1  # not started yet
    code, out, err = cli("device", "start", path)
    assert code == 0, err
    try:
        assert _listening(board_port) == {"127.0.0.1"} and "unauthenticated" not in err
        code, out, err = cli("measure", "--artifacts", x86_set, "--target", path, "--out", tmp_path / "data",
                             "--rounds", "1", "--no-reference")
        assert code == 0, err
        table = tmp_path / "data" / "tunboard" / "ops-tvm.parquet"
        df = pd.read_parquet(table)
        assert (df["status"] == "ok").all() and len(df) == 3
        ports = {int(s.rsplit(":", 1)[1]) for s in df["server"]}
        assert board_port not in ports and all(s.startswith("127.0.0.1:") for s in df["server"])
    finally:
        cli("device", "stop", path)
    assert not _listening(board_port)


def _start_tunnelled(tmp_path: Path, sshd: dict, tracker_port: int, name: str):
    """A tracker-mode device with ``rpc.tunnel`` and its `latbench device start` (foreground) process."""
    import subprocess

    import yaml

    from conftest import latbench_cmd

    path = ssh_device(tmp_path, sshd, name=name)
    d = yaml.safe_load(path.read_text())
    d["rpc"] = {"mode": "tracker", "host": "127.0.0.1", "port": tracker_port, "key": name, "tunnel": True,
                "connect_timeout": 10}
    write_yaml(path, d)
    proc = subprocess.Popen(latbench_cmd("device", "start", path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    return path, proc


def _board_port(tmp_path: Path) -> int:
    """The port the board server bound (its log's ``PORT`` line)."""
    board_log = (tmp_path / "board" / "server.log").read_text()
    return int(next(ln.split()[1] for ln in board_log.splitlines() if ln.startswith("PORT ")))


def test_tracker_pool_through_ssh_tunnels(tmp_path, sshd, x86_set):
    """rpc tracker with tunnel: `device start` holds a reverse forward (board → loopback tracker) and a local one
    (clients → board); the pool times ops through them; SIGTERM stops the board server and the forwards."""
    import signal

    from latbench.artifacts import load_manifest
    from latbench.runners.base import Visit
    from latbench.runners.pool import PoolRunner
    from latbench.runners.tracker import LocalTracker, servers_of

    with LocalTracker() as tracker:
        assert _listening(tracker.port) == {"127.0.0.1"}
        path, proc = _start_tunnelled(tmp_path, sshd, tracker.port, "tunpool")
        try:
            (addr,) = tracker.wait_for_servers("tunpool", 1, timeout=60)
            fwd_port = int(addr.rsplit(":", 1)[1])
            assert addr.startswith("127.0.0.1:") and _listening(fwd_port) == {"127.0.0.1"}
            bound = _board_port(tmp_path)
            assert bound != fwd_port and _listening(bound) == {"127.0.0.1"}
            _, entries = load_manifest(x86_set)
            rows = []
            with PoolRunner(load_device_file(path)) as pool:
                pool.run([Visit(e["key"], a) for e, a in entries], lambda v, r: rows.append((v.key, r)))
            assert sorted(k for k, _ in rows) == sorted(e["key"] for e, _ in entries)
            assert all(r.get("status", "ok") == "ok" and r["server"] == addr for _, r in rows), rows
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "through SSH" in out
        assert not _listening(bound) and not _listening(fwd_port)
        deadline = time.monotonic() + 10
        while servers_of(tracker.summary(), "tunpool") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not servers_of(tracker.summary(), "tunpool")


def test_board_server_dies_with_a_killed_device_start(tmp_path, sshd):
    """`device start` SIGKILLed (no cleanup runs): its SSH connection and both forwards go with it, and the board
    server, which nobody can reach any more, exits on its own (``--exit-on-tracker-loss``) instead of staying on
    the board's loopback port retrying the tracker forever."""
    import signal

    from latbench.runners.tracker import LocalTracker

    board_log = tmp_path / "board" / "server.log"
    with LocalTracker() as tracker:
        _, proc = _start_tunnelled(tmp_path, sshd, tracker.port, "killstart")
        try:
            tracker.wait_for_servers("killstart", 1, timeout=60)
            bound = _board_port(tmp_path)
            pid = int((tmp_path / "board" / "server.pid").read_text())
            assert _listening(bound) == {"127.0.0.1"}
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive := _alive(pid):
            os.killpg(pid, signal.SIGKILL)
        assert not alive, board_log.read_text()[-600:]
        assert not _listening(bound)
        assert "exiting (--exit-on-tracker-loss)" in board_log.read_text()
