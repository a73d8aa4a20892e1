"""Board management over SSH (paramiko): facts, start and stop the board's TVM RPC server.

A *host* is where a board's commands run: :class:`SSHHost` (a real board, OpenSSH conventions)
or :class:`LocalHost` (this machine, e.g. an emulated board under qemu, see
:mod:`latbench.runners.emulated`). :func:`board_info`, :func:`start_server` and
:func:`stop_server` are written once against that interface.

SSH follows OpenSSH: host keys are checked against ``known_hosts`` (``~/.ssh/known_hosts`` or
``ssh.known_hosts``); an unknown key is rejected unless ``ssh.host_key_policy`` is ``accept-new``
(saved to known_hosts, like ``StrictHostKeyChecking=accept-new``) or ``warn``. Credentials are the
SSH agent and key files (``ssh.key_file`` or ``~/.ssh/id_*``); a password only from the
environment variable named by ``ssh.password_env``. Every call has a timeout.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from latbench.devices import Device, SSHConfig
from latbench.errors import ConfigError, DeviceError

log = logging.getLogger(__name__)

#: Facts script run with the board's Python (stdlib only; reads /proc and /sys, never fails).
FACTS_SCRIPT = Path(__file__).resolve().parent.parent / "board" / "facts.py"


class Host:
    """Where a board's commands run. Subclasses implement :meth:`run` and :meth:`put_dir`."""

    name = "host"
    python = "python3"
    env: dict[str, str] = {}

    def run(self, cmd: str, timeout: float = 30.0, stdin: str | None = None) -> tuple[int, str, str]:
        raise NotImplementedError

    def put_dir(self, local: Path, remote: str) -> None:
        raise NotImplementedError

    def home(self) -> str:
        rc, out, err = self.run("cd && pwd", 15)
        if rc != 0:
            raise DeviceError(f"{self.name}: cannot find the home directory: {err.strip() or out.strip()}")
        return out.strip()

    def expand(self, path: str) -> str:
        """``~`` in a board path → the board's home (SFTP does not expand it)."""
        if path == "~" or path.startswith("~/"):
            return self.home() + path[1:]
        return path

    def check(self, cmd: str, timeout: float = 30.0, what: str = "") -> str:
        rc, out, err = self.run(cmd, timeout)
        if rc != 0:
            raise DeviceError(f"{self.name}: {what or cmd} failed (exit {rc}): {(err or out).strip()[-300:]}")
        return out

    def close(self) -> None:
        pass

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalHost(Host):
    """This machine as a board's host (shell commands with subprocess)."""

    def __init__(self, name: str = "localhost", python: str = "python3", env: dict[str, str] | None = None) -> None:
        self.name = name
        self.python = python
        self.env = dict(env or {})

    def run(self, cmd: str, timeout: float = 30.0, stdin: str | None = None) -> tuple[int, str, str]:
        try:
            res = subprocess.run(["bash", "-c", cmd], input=stdin, capture_output=True, text=True, timeout=timeout,
                                 env={**os.environ, **self.env})
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.name}: `{cmd[:80]}` did not finish within {timeout:g} s") from None
        return res.returncode, res.stdout, res.stderr

    def put_dir(self, local: Path, remote: str) -> None:
        import shutil

        dst = Path(self.expand(remote))
        if dst.resolve() == Path(local).resolve():
            return
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(local, dst)


class SSHHost(Host):
    """A board reached with paramiko (see the module docstring for the OpenSSH conventions)."""

    def __init__(self, cfg: SSHConfig, name: str = "", source: str = "<ssh config>") -> None:
        import paramiko

        self.cfg = cfg
        self.source = source
        self.name = name or cfg.host
        self.python = cfg.python
        self.client = paramiko.SSHClient()
        self._sftp = None
        self._connect()

    def _known_hosts(self) -> Path:
        return Path(os.path.expanduser(self.cfg.known_hosts or "~/.ssh/known_hosts"))

    def _connect(self) -> None:
        import paramiko

        cfg, c = self.cfg, self.client
        kh = self._known_hosts()
        if kh.exists():
            c.load_host_keys(str(kh))  # also where accept-new saves new keys
        elif cfg.known_hosts:
            if cfg.host_key_policy != "accept-new":
                raise ConfigError(f"{self.source}: field 'ssh.known_hosts': {kh} does not exist "
                                  f"(create it with `ssh-keyscan -p {cfg.port} "
                                  f"{cfg.host} > {kh}` or set ssh.host_key_policy: accept-new)")
        if not cfg.known_hosts:
            try:
                c.load_system_host_keys()
            except OSError:
                pass
        policy = {"reject": paramiko.RejectPolicy, "accept-new": _AcceptNewPolicy,
                  "warn": paramiko.WarningPolicy}[cfg.host_key_policy]()
        if isinstance(policy, _AcceptNewPolicy):
            policy.path = kh
        c.set_missing_host_key_policy(policy)
        password = None
        if cfg.password_env:
            password = os.environ.get(cfg.password_env)
            if password is None:
                raise ConfigError(f"{self.source}: field 'ssh.password_env' names ${cfg.password_env}, which is not "
                                  "set in the environment")
        elif cfg.password:
            password = cfg.password
        key_file = os.path.expanduser(cfg.key_file) if cfg.key_file else None
        if key_file and not os.path.exists(key_file):
            raise ConfigError(f"{self.source}: field 'ssh.key_file': {cfg.key_file} does not exist (leave it out to "
                              "use the SSH agent and ~/.ssh keys)")
        who = f"{cfg.user + '@' if cfg.user else ''}{cfg.host}:{cfg.port}"
        try:
            c.connect(cfg.host, port=cfg.port, username=cfg.user, key_filename=key_file, password=password,
                      timeout=cfg.connect_timeout, banner_timeout=cfg.connect_timeout,
                      auth_timeout=cfg.connect_timeout, allow_agent=True, look_for_keys=key_file is None)
        except paramiko.BadHostKeyException:
            raise DeviceError(f"the SSH host key of {cfg.host}:{cfg.port} does not match {kh} — it changed or someone "
                              f"is intercepting; if the board was reinstalled, remove the old key with "
                              f"`ssh-keygen -R '[{cfg.host}]:{cfg.port}'`") from None
        except paramiko.AuthenticationException:
            how = f"key file {cfg.key_file}" if key_file else "the SSH agent / ~/.ssh keys"
            if password:
                how += " and the password"
            raise DeviceError(f"SSH authentication failed for {who} with {how}; "
                              "check ssh.user and ssh.key_file") from None
        except paramiko.SSHException as exc:
            if "known_hosts" in str(exc) or "not found in" in str(exc):
                raise DeviceError(f"unknown SSH host key for {cfg.host}:{cfg.port} (not in {kh}); verify and add it "
                                  f"(`ssh-keyscan -p {cfg.port} {cfg.host} >> {kh}`) or set ssh.host_key_policy: "
                                  f"accept-new") from None
            raise DeviceError(f"SSH to {who} failed: {exc}") from None
        except TimeoutError:
            raise DeviceError(f"SSH to {who}: no answer within {cfg.connect_timeout:g} s (host down or "
                              f"firewalled?)") from None
        except (OSError, paramiko.ssh_exception.NoValidConnectionsError) as exc:
            raise DeviceError(f"cannot reach {who} over SSH: {getattr(exc, 'strerror', None) or exc}") from None

    def run(self, cmd: str, timeout: float = 30.0, stdin: str | None = None) -> tuple[int, str, str]:
        try:
            chan_in, chan_out, chan_err = self.client.exec_command(cmd, timeout=timeout)
            if stdin is not None:
                chan_in.write(stdin)
                chan_in.channel.shutdown_write()
            out = chan_out.read().decode(errors="replace")
            err = chan_err.read().decode(errors="replace")
            return chan_out.channel.recv_exit_status(), out, err
        except TimeoutError:
            raise DeviceError(f"{self.name}: `{cmd[:80]}` did not finish within {timeout:g} s") from None
        except Exception as exc:  # paramiko.SSHException, EOFError: the link dropped
            raise DeviceError(f"{self.name}: SSH command failed ({exc.__class__.__name__}: {exc})") from None

    @property
    def sftp(self):
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
            self._sftp.get_channel().settimeout(max(30.0, self.cfg.connect_timeout))
        return self._sftp

    def put_dir(self, local: Path, remote: str) -> None:
        remote = self.expand(remote)
        self.check(f"rm -rf {shlex.quote(remote)} && mkdir -p {shlex.quote(remote)}", what="preparing the upload")
        local = Path(local)
        dirs = sorted({p.relative_to(local).parent for p in local.rglob("*") if p.is_file()} - {Path(".")},
                      key=lambda p: len(p.parts))
        if dirs:
            self.check("mkdir -p " + " ".join(shlex.quote(f"{remote}/{d.as_posix()}") for d in dirs),
                       what="creating directories")
        for p in local.rglob("*"):
            if p.is_file():
                dst = f"{remote}/{p.relative_to(local).as_posix()}"
                try:
                    self.sftp.put(str(p), dst)
                    self.sftp.chmod(dst, p.stat().st_mode & 0o777)
                except (OSError, EOFError) as exc:
                    raise DeviceError(f"{self.name}: SFTP upload of {p.name} failed: {exc}") from None

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
        self.client.close()


def _accept_new_policy_base():
    import paramiko

    return paramiko.MissingHostKeyPolicy


class _AcceptNewPolicy(_accept_new_policy_base()):
    """OpenSSH's StrictHostKeyChecking=accept-new: trust and save an unknown key, reject a changed one."""

    path: Path | None = None

    def missing_host_key(self, client, hostname, key) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            client.save_host_keys(str(self.path))
        log.warning("added the SSH host key of %s (%s) to %s", hostname, key.get_name(), self.path)


# -- boards ---------------------------------------------------------------------------------------
def open_host(device: Device) -> Host:
    """The host of the device's board: qemu on this machine for emulated devices, else SSH."""
    from latbench.runners.emulated import emulator_of

    emu = emulator_of(device)
    if emu is not None:
        return emu.host()
    if device.ssh is None:
        raise ConfigError(f"{device.source}: device {device.name!r} has no 'ssh' section (host, user, key_file) "
                          "to manage its board")
    return SSHHost(device.ssh, device.name, device.source)


def workdir(device: Device, host: Host) -> str:
    from latbench.runners.emulated import emulator_of

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


def server_command(device: Device, host: Host, bundle_dir: str, tracker: str | None = None) -> list[str]:
    """The board server command line for the device's RPC mode."""
    rpc = device.rpc
    wd = workdir(device, host)
    cmd = [host.python, f"{bundle_dir}/board_server.py", "--pid-file", _pid_file(wd), "--work-dir", f"{wd}/sessions"]
    if device.num_threads:
        cmd += ["--num-threads", str(device.num_threads)]
    if rpc.mode == "tracker":
        cmd += ["--host", "0.0.0.0", "--port", "9090", "--tracker", tracker or rpc.address, "--key", rpc.key]
    elif rpc.mode == "direct":
        bind = "127.0.0.1" if rpc.host in ("127.0.0.1", "localhost") else "0.0.0.0"
        cmd += ["--host", bind, "--port", str(rpc.port), "--port-end", str(rpc.port + 1)]
    else:
        raise ConfigError(f"{device.source}: field 'rpc.mode': `latbench device start` needs 'tracker' or 'direct' "
                          f"(mode 'local' servers are started by latbench measure itself), got {rpc.mode!r}")
    return cmd


def start_server(device: Device, host: Host, bundle: Path, tracker: str | None = None,
                 timeout: float = 90.0) -> dict[str, Any]:
    """Upload the runtime bundle and start the board's RPC server in the background (own process group)."""
    wd = workdir(device, host)
    status = server_status(device, host)
    if status["running"]:
        raise DeviceError(f"{host.name}: a latbench board server is already running (pid {status['pid']}); "
                          f"`latbench device stop {device.name}` first")
    host.check(f"mkdir -p {shlex.quote(wd)}/sessions", what="creating the work directory")
    remote_bundle = f"{wd}/bundle"
    t0 = time.monotonic()
    if _remote_bundle_sha(host, remote_bundle) != json.loads((bundle / "bundle.json").read_text())["sha256"]:
        host.put_dir(bundle, remote_bundle)
        log.info("uploaded the bundle to %s:%s in %.1f s", host.name, remote_bundle, time.monotonic() - t0)
    log_path = f"{wd}/server.log"
    cmd = " ".join(shlex.quote(c) for c in server_command(device, host, remote_bundle, tracker))
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
