"""TVM's RPC tracker wire protocol (``tvm/rpc/base.py``): magic words, codes, length-prefixed JSON.

A client sends the tracker magic, reads it back, then exchanges messages that are a little-endian
``int32`` length followed by that many bytes of JSON. Standard library only: this file is shipped in
the board bundle (``board_server.py`` registers with a tracker through it) and imported by the host
(``latbench.runners.tracker``, ``latbench.runners.pool``).
"""
from __future__ import annotations

import json
import socket
import struct
from typing import Any

#: First word of an RPC session handshake, and its reply codes.
RPC_MAGIC = 0xFF271
RPC_CODE_SUCCESS = RPC_MAGIC + 0
RPC_CODE_MISMATCH = RPC_MAGIC + 2
#: First word of a tracker connection.
RPC_TRACKER_MAGIC = 0x2F271

#: Tracker codes (TrackerCode in tvm/rpc/base.py).
CODE_FAIL = -1
CODE_SUCCESS = 0
CODE_PING = 1
CODE_STOP = 2
CODE_PUT = 3
CODE_REQUEST = 4
CODE_UPDATE_INFO = 5
CODE_SUMMARY = 6
CODE_GET_PENDING_MATCHKEYS = 7


def recvall(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes (``ConnectionError`` when the peer closes first)."""
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the peer")
        buf += chunk
    return buf


def sendjson(sock: socket.socket, data: Any) -> None:
    raw = json.dumps(data).encode()
    sock.sendall(struct.pack("<i", len(raw)) + raw)


def recvjson(sock: socket.socket) -> Any:
    size = struct.unpack("<i", recvall(sock, 4))[0]
    return json.loads(recvall(sock, size).decode())


def handshake(sock: socket.socket) -> bool:
    """Send the tracker magic; whether the peer answers with it (i.e. is a TVM RPC tracker)."""
    sock.sendall(struct.pack("<i", RPC_TRACKER_MAGIC))
    return struct.unpack("<i", recvall(sock, 4))[0] == RPC_TRACKER_MAGIC
