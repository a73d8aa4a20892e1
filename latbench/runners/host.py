"""Time host backends (torch, onnxruntime) in a worker process of their own.

The parent (:class:`HostRunner`) sends one JSON job per line to ``python -m latbench.runners.host``
and reads one JSON result per line, with the device's per-op timeout; a worker that hangs or dies
is killed and restarted for the remaining ops.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latbench.artifacts import Artifact
from latbench.devices import Device, Timing
from latbench.errors import LatbenchError
from latbench.runners.rpc import kill_group, summarize

Record = Callable[[str, dict[str, Any]], None]


def time_callable(fn: Callable[[], Any], timing: Timing) -> dict[str, Any]:
    """TVM time-evaluator semantics: warm-up, then ``repeat`` repeats of ``number`` runs, ``number``
    raised until one repeat lasts ``min_repeat_ms``; statistics over per-run times."""
    for _ in range(timing.warmup):
        fn()
    number = max(1, timing.number)
    while True:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        dt = time.perf_counter() - t0
        if dt * 1e3 >= timing.min_repeat_ms or number >= 1 << 20:
            break
        number = max(number * 2, int(number * timing.min_repeat_ms / max(dt * 1e3, 1e-3) * 1.1))
    samples = []
    for _ in range(timing.repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t0) / number)
        if timing.cooldown_ms:
            time.sleep(timing.cooldown_ms / 1e3)
    return {**summarize(np.array(samples)), "number": number}


def _worker() -> None:
    """Worker loop (runs in its own process): read jobs from stdin, write results to stdout."""
    import warnings

    warnings.filterwarnings("ignore")
    from latbench.backends.base import get_backend
    from latbench.campaign import Job
    from latbench.runners.rpc import first_line
    from latbench.runners.session import check_output

    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but results on the protocol stream
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            backend = get_backend(msg["backend"])
            job = Job(msg["key"], msg["what"], msg.get("arch"))
            module, x = job.module_and_input()
            art = Artifact(Path(msg["root"]))
            fn = backend.make_callable(module, x, art.root, msg["threads"])
            expected = np.load(art.expected)
            y = fn()
            err = float(np.max(np.abs(np.asarray(y, dtype=np.float64) - expected)))
            res = time_callable(fn, Timing(**msg["timing"]))
            ok, tol = check_output(expected, err)
            res.update(max_abs_err=err, tolerance=tol, server=f"local process {os.getpid()}")
            if not ok:
                res.update(status="error", stage="check",
                           error=f"output differs from PyTorch: max abs err {err:.3g} > {tol:.3g}")
        except Exception as exc:
            res = {"status": "error", "stage": "run", "error": f"{exc.__class__.__name__}: {first_line(exc)}"}
        out.write(json.dumps({"key": msg["key"], "result": res}) + "\n")
        out.flush()


class HostRunner:
    """Runs host backends for a local device, one op at a time, in a worker process."""

    def __init__(self, device: Device, backend: Any) -> None:
        if device.rpc.mode != "local":
            raise LatbenchError(f"backend {backend.name!r} times on this machine only; use --target local-cpu "
                                f"(device {device.name!r} is remote)")
        self.device, self.backend = device, backend
        self.proc: subprocess.Popen | None = None
        self.lines: queue.Queue = queue.Queue()

    def _start(self) -> None:
        env = dict(os.environ)
        t = str(self.device.threads)
        env.update(OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, TVM_NUM_THREADS=t)
        self.proc = subprocess.Popen([sys.executable, "-m", "latbench.runners.host"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                     start_new_session=True)
        self.lines = queue.Queue()
        proc, q = self.proc, self.lines
        threading.Thread(target=lambda: [q.put(ln) for ln in proc.stdout] + [q.put(None)], daemon=True).start()

    def _stop(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            kill_group(self.proc, grace=2.0)
            self.proc = None

    def __enter__(self) -> HostRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop()

    def run(self, items: Sequence[tuple[str, Artifact]], record: Record, progress: bool = True) -> None:
        from latbench.progress import bar

        timing = self.device.timing
        tdict = timing.model_dump()
        with bar(total=len(items), desc=f"measure {self.backend.name}", enabled=progress) as pbar:
            for key, art in items:
                meta = art.meta()
                if self.proc is None or self.proc.poll() is not None:
                    self._start()
                msg = {"key": key, "what": meta["what"], "arch": meta.get("arch"), "root": str(art.root),
                       "backend": self.backend.name, "threads": self.device.threads, "timing": tdict}
                self.proc.stdin.write(json.dumps(msg) + "\n")
                self.proc.stdin.flush()
                try:
                    line = self.lines.get(timeout=timing.op_timeout)
                except queue.Empty:
                    line = None
                    self._stop()
                    record(key, {"status": "error", "stage": "run",
                                 "error": f"timed out after {timing.op_timeout:g} s"})
                    pbar.update(1)
                    continue
                if line is None:
                    self._stop()
                    record(key, {"status": "error", "stage": "run", "error": "the timing process died"})
                else:
                    record(key, json.loads(line)["result"])
                pbar.update(1)


if __name__ == "__main__":
    _worker()
