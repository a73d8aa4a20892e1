"""Writing files that other processes may write at the same time.

Every file latbench writes whole (a Parquet table, an artifact's meta.json, a compiled library) is
written to a temporary name beside it and renamed over it (``os.replace``: readers see the old file or
the new one, never half of one). Two processes doing so at once — two campaigns on one table or one
artifact cache — must not share that temporary name: one would rename or delete the other's file.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path


def temp_sibling(path: str | Path, tail: str = ".tmp") -> Path:
    """A temporary name beside ``path`` used by no other process or call: ``<stem>.<pid>-<random><tail>``
    (``tail`` keeps a suffix a tool needs, e.g. ``.tmp.so`` for a linker)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{os.getpid()}-{secrets.token_hex(3)}{tail}")
