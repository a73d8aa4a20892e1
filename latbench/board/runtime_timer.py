#!/usr/bin/env python3
"""Time a prebuilt artifact set with TVM's runtime alone: numpy + ctypes + ``tvm_ffi``, no ``tvm``.

For a host that has only the runtime (a ``latbench bundle`` or ``pip install apache-tvm-ffi`` plus
``libtvm_runtime.so``): it reads the set's ``manifest.json`` (``latbench compile --out DIR``), loads
each ``lib.so`` into a Relax VM, checks the output against PyTorch's (``expected.npy``) and times
it (warm-up, then ``repeat`` repeats of ``number`` runs, ``number`` raised until a repeat lasts
``min_repeat_ms``; CUDA artifacts are synchronised after each repeat). One JSON line per entry::

    python runtime_timer.py ARTIFACT_DIR --out results.jsonl [--repeat 15 --warmup 3 ...]

Keys already in ``--out`` are skipped (resume). The runtime is looked up in $LATBENCH_TVM_RUNTIME,
the bundle's ``lib/``, then an installed ``tvm/lib`` (``runtime.py``). This file imports nothing from
latbench, only its siblings ``runtime.py`` and ``timing.py``.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _sibling(name: str) -> Any:
    """A module beside this file: latbench's when imported from the package, else the file (in a bundle)."""
    if __package__:
        return importlib.import_module(f"{__package__}.{name}")
    spec = importlib.util.spec_from_file_location(f"_latbench_board_{name}", Path(__file__).with_name(f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


timing = _sibling("timing")  # the timing core: calibration, runs, statistics, output check
runtime = _sibling("runtime")  # finds and loads TVM's runtime libraries
KDL_CPU, KDL_CUDA = 1, 2
POOLED_ALLOCATOR = 2


class ArtifactTimer:
    """Loads and times artifacts through the runtime-only VM API."""

    def __init__(self, cuda: bool = False) -> None:
        self.ffi = runtime.load_runtime(cuda)
        self.cuda = cuda
        self.dev_type = KDL_CUDA if cuda else KDL_CPU
        self.device = self.ffi.device("cuda" if cuda else "cpu", 0)
        g = self.ffi.get_global_func
        self._alloc = g("runtime.TVMTensorAllocWithScope")
        self._copy = g("runtime.TVMTensorCopyFromTo")
        self._sync = g("runtime.Device_StreamSync")

    def to_device(self, x: np.ndarray) -> Any:
        # Copy into a runtime-allocated tensor: TVM kernels assume its (64-byte) alignment, numpy's
        # buffers are not aligned that way (the kernel crashes on them).
        src = np.ascontiguousarray(x)
        t = self.ffi.from_dlpack(src)
        dst = self._alloc(list(x.shape), str(x.dtype), self.device, None)
        self._copy(t, dst)
        self.sync()
        return dst

    def to_numpy(self, y: Any) -> np.ndarray:
        if self.cuda:
            host = self._alloc(list(y.shape), str(y.dtype), self.ffi.device("cpu", 0), None)
            self._copy(y, host)
            self.sync()
            y = host
        return np.from_dlpack(y).copy()

    def sync(self) -> None:
        if self.cuda:
            self._sync(self.device, 0)

    def load(self, lib: Path) -> Any:
        """A Relax VM for the library, initialised for the device (host memory for the CPU side)."""
        vm = self.ffi.load_module(str(lib))["vm_load_executable"]()
        vm["vm_initialization"](self.dev_type, 0, POOLED_ALLOCATOR, KDL_CPU, 0, POOLED_ALLOCATOR)
        return vm

    def prepare(self, art: Path) -> tuple[Any, Any, dict[str, Any]]:
        """Load an artifact: ``(main, input tensor, check fields)`` (``status: error`` if its output is wrong)."""
        x = np.load(art / "input.npy")
        expected = np.load(art / "expected.npy")
        main = self.load(art / "lib.so")["main"]
        xt = self.to_device(x)
        return main, xt, timing.check_fields(expected, timing.output_error(self.to_numpy(main(xt)), expected))

    def time(self, art: Path, warmup: int, number: int, repeat: int, min_repeat_ms: float) -> dict[str, Any]:
        """Load, check and time one artifact in one window; statistics in ms."""
        main, xt, out = self.prepare(art)
        fn = lambda: main(xt)  # noqa: E731
        for _ in range(warmup):
            fn()
        number = timing.calibrate(fn, self.sync, min_repeat_ms, number)
        out.update(timing.summarize(timing.time_runs(fn, self.sync, 0, number, repeat)), number=number)
        out.setdefault("status", "ok")
        return out


def time_artifact_set(root: str | Path, out: str | Path, warmup: int = 3, number: int = 1, repeat: int = 15,
                      min_repeat_ms: float = 40, keys: list[str] | None = None, log=print) -> list[dict[str, Any]]:
    """Time every built entry of the set ``root`` (skipping keys already in ``out``); returns the new rows."""
    root, out = Path(root), Path(out)
    manifest = json.loads((root / "manifest.json").read_text())
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            if line.strip():
                try:
                    done.add(json.loads(line)["key"])
                except (ValueError, KeyError):
                    pass  # a torn last line from an interrupted run
    entries = [e for e in manifest["entries"] if e.get("status") == "ok" and e["key"] not in done
               and e.get("role") != "reference"
               and (keys is None or e["key"] in keys)]
    target = manifest.get("target", "")
    cuda = '"cuda"' in target or "nvidia" in target
    timer = ArtifactTimer(cuda=cuda) if entries else None
    server = f"{platform.node()}:runtime-only"
    rows = []
    with open(out, "a") as f:
        for i, e in enumerate(entries):
            t0 = time.perf_counter()
            try:
                row = timer.time(root / e["path"], warmup, number, repeat, min_repeat_ms)
            except Exception as exc:  # an op that fails to load/run is recorded; the set goes on
                msg = str(exc).strip().splitlines()
                row = {"status": "error", "stage": "run",
                       "error": f"run failed: {msg[0] if msg else type(exc).__name__}"}
            row = {"key": e["key"], **row, "server": server}
            f.write(json.dumps(row) + "\n")
            f.flush()
            rows.append(row)
            log(f"[{i + 1}/{len(entries)}] {e['key']}: {row.get('median_ms', float('nan')):.4f} ms "
                f"({row['status']}, {time.perf_counter() - t0:.1f} s)")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Time a latbench artifact set with TVM's runtime only (no tvm import).")
    ap.add_argument("artifacts", help="artifact set directory (with manifest.json)")
    ap.add_argument("--out", "-o", required=True, help="JSON-lines results file (appended; resumable)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--number", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--min-repeat-ms", type=float, default=40)
    ap.add_argument("--quiet", "-q", action="store_true")
    args = ap.parse_args(argv)
    if not (Path(args.artifacts) / "manifest.json").is_file():
        print(f"runtime_timer: error: {args.artifacts} has no manifest.json "
              "(build it with `latbench compile --out DIR`)",
              file=sys.stderr)
        return 2
    try:
        rows = time_artifact_set(args.artifacts, args.out, args.warmup, args.number, args.repeat, args.min_repeat_ms,
                                 log=(lambda *_: None) if args.quiet else (lambda m: print(m, file=sys.stderr)))
    except RuntimeError as exc:
        print(f"runtime_timer: error: {exc}", file=sys.stderr)
        return 2
    bad = sum(r["status"] != "ok" for r in rows)
    print(f"{len(rows) - bad} timed, {bad} errors → {args.out}")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
