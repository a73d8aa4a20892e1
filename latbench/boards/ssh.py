"""A board over SSH (paramiko), following OpenSSH's conventions.

Host keys are checked against ``known_hosts`` (``~/.ssh/known_hosts`` or ``ssh.known_hosts``); an
unknown key is rejected unless ``ssh.host_key_policy`` is ``accept-new`` (saved to known_hosts, like
``StrictHostKeyChecking=accept-new``) or ``warn``. Credentials are the SSH agent and key files
(``ssh.key_file`` or ``~/.ssh/id_*``); a password only from the environment variable named by
``ssh.password_env``. Every call has a timeout.
"""
from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path

from latbench.boards.hosts import Host
from latbench.devices import SSHConfig
from latbench.errors import ConfigError, DeviceError

log = logging.getLogger(__name__)


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
