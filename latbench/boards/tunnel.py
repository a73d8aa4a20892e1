"""SSH port forwards, so a pool of boards runs with nothing listening on the network.

TVM RPC has no authentication: whoever reaches a server's port can upload and run code, and whoever
reaches a tracker can register a fake server under a device key. With ``rpc.tunnel: true`` (or
``rpc: {mode: ssh}``) a board's server listens on the board's 127.0.0.1 only, and latbench reaches it
through the SSH connection it already manages (host keys verified as in :mod:`latbench.boards.ssh`):

- direct mode: :class:`LocalForward` — a listener on this machine's 127.0.0.1 whose connections are
  ``direct-tcpip`` channels to the board's 127.0.0.1:port (what ``ssh -L`` does); the campaign opens
  it around its timing (:func:`tunnel`).
- tracker mode: :class:`ReverseForward` — the board's 127.0.0.1:R leads to the tracker on this
  machine (``ssh -R``), and the board's server registers there with the address of a
  :class:`LocalForward` to it, so clients of the loopback tracker reach it through SSH too
  (``latbench device start`` holds both while it runs).

Every forwarded connection is a pair of threads pumping bytes; closing a forward closes them all.
"""
from __future__ import annotations

import logging
import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from latbench.devices import Device
from latbench.errors import DeviceError

log = logging.getLogger(__name__)


def _pump(a: Any, b: Any, stop: threading.Event) -> None:
    """Copy bytes both ways between two sockets/channels until either side closes."""
    try:
        while not stop.is_set():
            ready, _, _ = select.select([a, b], [], [], 0.5)
            for src in ready:
                data = src.recv(65536)
                if not data:
                    return
                (b if src is a else a).sendall(data)
    except (OSError, EOFError):
        pass
    finally:
        for s in (a, b):
            try:
                s.close()
            except Exception:
                pass


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
                log.warning("SSH tunnel to %s:%s: %s", self.remote_host, self.remote_port, exc)
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
    """The device as the runners should reach it: with ``rpc.tunnel`` in direct mode, an SSH connection to the
    board and a :class:`LocalForward` to its loopback server, and the device's ``rpc`` pointing at that
    forward; any other device unchanged."""
    rpc = device.rpc
    if not (rpc.tunnel and rpc.mode == "direct"):
        yield device
        return
    from latbench.boards.server import open_host  # SSH (paramiko): only for tunnelled boards
    from latbench.boards.ssh import SSHHost

    host = open_host(device)
    try:
        assert isinstance(host, SSHHost)
        transport = host.client.get_transport()
        transport.set_keepalive(15)  # the link idles through the build phase
        try:  # fail now, in one line, when nothing listens on the board
            transport.open_channel("direct-tcpip", ("127.0.0.1", rpc.port), ("127.0.0.1", 0),
                                   timeout=rpc.connect_timeout).close()
        except Exception:
            raise DeviceError(f"no TVM RPC server on {host.name}'s 127.0.0.1:{rpc.port} (through the SSH tunnel) "
                              f"for device {device.name!r}; start it with `latbench device start {device.name}`"
                              ) from None
        fwd = LocalForward(transport, rpc.port, timeout=rpc.connect_timeout)
        log.info("SSH tunnel 127.0.0.1:%d → %s:127.0.0.1:%d", fwd.port, host.name, rpc.port)
        try:
            yield device.replace(rpc=rpc.replace(host="127.0.0.1", port=fwd.port))
        finally:
            fwd.close()
    finally:
        host.close()
