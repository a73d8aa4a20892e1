"""The project's error types.

Every error a user can cause (bad YAML, unreachable device, bad arch file, ...) is a
:class:`LatbenchError`; the CLI prints its message as one line and exits non-zero, with the
traceback only under ``-v``. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class LatbenchError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""

    exit_code = 2


class DeviceError(LatbenchError):
    """A device cannot be reached or used (RPC server down, tracker without servers, SSH failure)."""

    exit_code = 3


class ConfigError(LatbenchError):
    """A malformed or incomplete configuration file (device YAML, arch JSON)."""


class AdaptError(LatbenchError):
    """Adaptation cannot run (too few samples, missing column, bad file, a malformed NAS-Bench-201 cell)."""


def read_config_text(path: Path, what: str) -> str:
    """The text of configuration file ``path``; one that cannot be read is a :class:`ConfigError` naming
    it as ``what`` ("device config", "arch file")."""
    try:
        return path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None


def read_json_config(path: Path, what: str) -> Any:
    """The parsed JSON of configuration file ``path`` (:func:`read_config_text`); invalid JSON is a
    :class:`ConfigError` naming the file and the place."""
    try:
        return json.loads(read_config_text(path, what))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
