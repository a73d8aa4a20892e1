"""SSH port forwards, so a pool of boards runs with nothing listening on the network.

TVM RPC has no authentication: whoever reaches a server's port can upload and run code, and whoever
reaches a tracker can register a fake server under a device key. With ``rpc.tunnel: true`` (or
``rpc: {mode: ssh}``) a board's server listens on the board's 127.0.0.1 only, and latbench reaches it
through the SSH connection it already manages (host keys verified as in :mod:`latbench.boards.ssh`):

- direct mode: :class:`LocalForward` — a listener on this machine's 127.0.0.1 whose connections are
  ``direct-tcpip`` channels to the board's 127.0.0.1:port (what ``ssh -L`` does); the campaign opens
  it around its timing (:func:`tunnel`), in a helper process.
- tracker mode: :class:`ReverseForward` — the board's 127.0.0.1:R leads to the tracker on this
  machine (``ssh -R``), and the board's server registers there with the address of a
  :class:`LocalForward` to it, so clients of the loopback tracker reach it through SSH too
  (``latbench device start`` holds both while it runs).

Every forwarded connection is a pair of threads pumping bytes; closing a forward closes them all.
"""
from __future__ import annotations

import json
import logging
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from latbench.devices import Device
from latbench.errors import DeviceError, LatbenchError
from latbench.runners.process import die_with_parent

log = logging.getLogger(__name__)


class _NoChannelErrors(logging.Filter):
    """paramiko logs a refused forward ("Secsh channel N open FAILED") as an ERROR of its own; latbench reports
    it once, in its own words."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Secsh channel" not in record.getMessage()


logging.getLogger("paramiko.transport").addFilter(_NoChannelErrors())


def _copy(src: Any, dst: Any, done: threading.Event) -> None:
    """One direction of a forwarded connection: blocking reads from ``src`` written to ``dst`` until EOF."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except (OSError, EOFError):
        pass
    finally:
        done.set()
        for s in (src, dst):  # the other direction's blocking recv returns
            _close(s)


def _close(s: Any) -> None:
    """Shut down, then close, a socket or a channel. ``close`` alone does not wake a thread blocked in ``recv`` on
    the same socket, and the kernel keeps the connection open (no FIN) while that call holds it: the TVM client at
    the other end would wait for bytes that never come instead of seeing the link drop."""
    try:
        s.shutdown(socket.SHUT_RDWR)
    except Exception:  # already closed, or never connected
        pass
    try:
        s.close()
    except Exception:
        pass


def _pump(a: Any, b: Any, stop: threading.Event) -> None:
    """Copy bytes both ways between a socket and a channel (one thread per direction) until either side closes
    or the forward is closed."""
    done = threading.Event()
    for src, dst in ((a, b), (b, a)):
        threading.Thread(target=_copy, args=(src, dst, done), daemon=True).start()
    while not done.wait(0.5):
        if stop.is_set():
            for s in (a, b):
                _close(s)
            return


class LocalForward:
    """``ssh -L 127.0.0.1:PORT:remote_host:remote_port`` on an open paramiko transport.

    ``remote_port`` may be set after construction (the board's server picks its port when it starts).
    """

    def __init__(self, transport: Any, remote_port: int | None, remote_host: str = "127.0.0.1",
                 port: int = 0, timeout: float = 10.0) -> None:
        self.transport, self.remote_host, self.remote_port = transport, remote_host, remote_port
        self.timeout = timeout
        self.stop = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(16)
        self.listener.settimeout(0.5)
        self.port: int = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, name=f"ssh-L:{self.port}", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, peer = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                if self.remote_port is None or not self.transport.is_active():
                    raise OSError("the SSH link is down")
                chan = self.transport.open_channel("direct-tcpip", (self.remote_host, self.remote_port), peer,
                                                   timeout=self.timeout)
            except Exception as exc:  # the link dropped, or nothing listens on the board's side
                log.debug("SSH tunnel to %s:%s: %s", self.remote_host, self.remote_port, exc)
                conn.close()
                continue
            threading.Thread(target=_pump, args=(conn, chan, self.stop), daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(2)


class ReverseForward:
    """``ssh -R 127.0.0.1:R:local_host:local_port``: the board's loopback port R leads to ``local_host:local_port``
    on this machine (a tracker). :attr:`port` is R (chosen by the board's sshd)."""

    def __init__(self, transport: Any, local_host: str, local_port: int, timeout: float = 10.0) -> None:
        self.transport, self.local = transport, (local_host, local_port)
        self.timeout = timeout
        self.stop = threading.Event()
        try:
            self.port: int = transport.request_port_forward("127.0.0.1", 0, handler=self._handle)
        except Exception as exc:  # sshd with AllowTcpForwarding no / local
            raise DeviceError(f"the board's sshd refused a reverse port forward ({exc}); allow it with "
                              "AllowTcpForwarding yes in its sshd_config") from None

    def _handle(self, chan: Any, origin: Any, server: Any) -> None:
        try:
            sock = socket.create_connection(self.local, timeout=self.timeout)
        except OSError as exc:
            log.warning("SSH reverse tunnel: cannot reach %s:%d (%s)", *self.local, exc)
            chan.close()
            return
        sock.settimeout(None)
        threading.Thread(target=_pump, args=(sock, chan, self.stop), daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        try:
            if self.transport.is_active():
                self.transport.cancel_port_forward("127.0.0.1", self.port)
        except Exception:
            pass


@contextmanager
def tunnel(device: Device) -> Iterator[Device]:
    """The device as the runners should reach it: with ``rpc.tunnel`` in direct mode, a :class:`LocalForward` to
    the board's loopback server and the device's ``rpc`` pointing at it; any other device unchanged.

    The forward runs in a helper process (:func:`_serve`) with its own SSH connection:
    TVM's RPC client blocks holding the GIL, so a forward in the client's own process would starve. The helper
    dies with this process (its stdin is our pipe; ``PR_SET_PDEATHSIG`` too)."""
    rpc = device.rpc
    if not (rpc.tunnel and rpc.mode == "direct"):
        yield device
        return
    assert device.ssh is not None  # the Device validator makes tunnel need ssh
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from latbench.boards.tunnel import _serve; "
                             "sys.exit(_serve())"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"ssh": device.ssh.model_dump(), "name": device.name, "source": device.source,
                                     "port": rpc.port, "timeout": rpc.connect_timeout}) + "\n")
        proc.stdin.flush()
        wait = device.ssh.connect_timeout * 3 + rpc.connect_timeout + 30  # the helper imports paramiko, connects
        ready, _, _ = select.select([proc.stdout], [], [], wait)
        line = proc.stdout.readline().strip() if ready else ""
        if not line.startswith("PORT "):
            raise DeviceError(line[len("ERROR "):] if line.startswith("ERROR ") else
                              f"the SSH tunnel to {device.name!r} did not come up within {wait:g} s")
        port = int(line.split()[1])
        log.info("SSH tunnel 127.0.0.1:%d → %s:127.0.0.1:%d (pid %d)", port, device.ssh.host, rpc.port, proc.pid)
        yield device.replace(rpc=rpc.replace(host="127.0.0.1", port=port))
    finally:
        try:
            if proc.stdin is not None:
                proc.stdin.close()  # the helper's signal to stop
            proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(5)


def _serve() -> int:
    """The helper process: SSH to the board, forward a local port to its loopback server until stdin closes."""
    die_with_parent(ignore_terminal_signals=True)  # latbench closes our stdin to stop us
    logging.basicConfig(level=logging.ERROR, format="latbench tunnel: %(message)s")
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # a dropped link is reported by latbench, once
    from latbench.boards.ssh import SSHHost
    from latbench.devices import SSHConfig

    req = json.loads(sys.stdin.readline())
    name, port, timeout = req["name"], int(req["port"]), float(req["timeout"])
    try:
        host = SSHHost(SSHConfig(**req["ssh"]), name, req["source"])
    except LatbenchError as exc:
        print(f"ERROR {exc}", flush=True)
        return 1
    transport = host.client.get_transport()
    transport.set_keepalive(15)  # the link idles through the build phase
    try:  # fail now, in one line, when nothing listens on the board
        transport.open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=timeout).close()
    except Exception:
        print(f"ERROR no TVM RPC server on {host.name}'s 127.0.0.1:{port} (through the SSH tunnel) for device "
              f"{name!r}; start it with `latbench device start {name}`", flush=True)
        return 1
    fwd = LocalForward(transport, port, timeout=timeout)
    print(f"PORT {fwd.port}", flush=True)
    sys.stdin.read()  # until latbench closes the pipe (or dies)
    fwd.close()
    host.close()
    return 0

