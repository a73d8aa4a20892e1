"""Where a board's commands run: :class:`Host`, the interface the board server's lifecycle
(:mod:`latbench.boards.server`) is written against, and :class:`LocalHost` (this machine, e.g. an
emulated board under qemu). :class:`latbench.boards.ssh.SSHHost` is a real board over SSH."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from latbench.errors import DeviceError


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
