"""Host backends (torch, onnxruntime) timed in a worker process of their own.

:class:`HostSession` (a :class:`latbench.runners.base.Session`) sends one JSON request per line to
``python -m latbench.runners.host`` and reads one JSON reply per line, each with the device's
per-op timeout: ``load`` builds the backend's callable for an artifact and checks its output,
``time`` times a loaded one, ``conditions`` reads this machine's. A worker that hangs or dies is
killed; the runner then opens a new session (a new worker) for the visits left.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np

from latbench.artifacts import Artifact
from latbench.board import conditions, timing
from latbench.devices import Device
from latbench.errors import LatbenchError
from latbench.jobs import Job
from latbench.runners.process import kill_group
from latbench.runners.rpc import RPCLinkError, RPCTimeout, first_line


def _worker() -> None:
    """Worker loop (its own process): read requests from stdin, write replies to stdout."""
    warnings.filterwarnings("ignore")
    from latbench.backends.base import get_backend  # registers the backends: imports torch

    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies on the protocol stream
    fns: dict[str, Callable[[], Any]] = {}
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["op"] == "load":
                backend = get_backend(msg["backend"])
                job = Job(msg["key"], msg["what"], msg.get("arch"))
                module, x = job.module_and_input()
                art = Artifact(Path(msg["root"]))
                fn = backend.make_callable(module, x, art.root, msg["threads"])
                expected = np.load(art.expected)
                res = timing.check_fields(expected, timing.output_error(np.asarray(fn()), expected))
                fns[msg["key"]] = fn
                res["number"] = timing.calibrate(fn, timing.no_sync, msg["min_repeat_ms"])
            elif msg["op"] == "time":
                res = {"samples": timing.time_runs(fns[msg["key"]], timing.no_sync, msg["warmup"], msg["number"],
                                                   msg["repeat"], msg["cooldown_ms"])}
            else:
                res = {"conditions": conditions.read()}
        except Exception as exc:
            res = {"status": "error", "stage": "run", "error": f"{exc.__class__.__name__}: {first_line(exc)}"}
        out.write(json.dumps(res) + "\n")
        out.flush()


class HostSession:
    """One worker process timing one host backend's callables on this machine."""

    broken = False  # the worker reports a failed item and goes on; a dead worker is a link error

    def __init__(self, device: Device, backend: Any) -> None:
        if device.rpc.mode != "local":
            raise LatbenchError(f"backend {backend.name!r} times on this machine only; use --target local-cpu "
                                f"(device {device.name!r} is remote)")
        self.device, self.backend = device, backend
        self.lines: queue.Queue = queue.Queue()
        env = dict(os.environ)
        t = str(device.threads)
        env.update(OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, TVM_NUM_THREADS=t)
        self.proc: subprocess.Popen | None = subprocess.Popen(
            [sys.executable, "-m", "latbench.runners.host"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True)
        self.address = f"local process {self.proc.pid}"
        proc, q = self.proc, self.lines
        threading.Thread(target=lambda: [q.put(ln) for ln in proc.stdout] + [q.put(None)], daemon=True).start()

    def _ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            raise RPCLinkError("the timing process died")
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        try:
            line = self.lines.get(timeout=self.device.timing.op_timeout)
        except queue.Empty:
            raise RPCTimeout(f"{msg['op']} did not finish within {self.device.timing.op_timeout:g} s") from None
        if line is None:
            raise RPCLinkError("the timing process died")
        return json.loads(line)

    def load(self, key: str, art: Artifact, min_repeat_ms: float) -> dict[str, Any]:
        meta = art.meta()
        return self._ask({"op": "load", "key": key, "what": meta["what"], "arch": meta.get("arch"),
                          "root": str(art.root), "backend": self.backend.name, "threads": self.device.threads,
                          "min_repeat_ms": min_repeat_ms})

    def time(self, key: str, warmup: int, number: int, repeat: int, cooldown_ms: float) -> list[float]:
        res = self._ask({"op": "time", "key": key, "warmup": warmup, "number": number, "repeat": repeat,
                         "cooldown_ms": cooldown_ms})
        if "samples" not in res:
            raise RuntimeError(res.get("error", "timing failed"))
        return res["samples"]

    def conditions(self) -> dict[str, Any]:
        return self._ask({"op": "conditions"}).get("conditions", {})

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            kill_group(self.proc, grace=2.0)
            self.proc = None


if __name__ == "__main__":
    _worker()
