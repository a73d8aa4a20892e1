"""A measurement campaign: build artifacts (parallel, cached), time them on a device, keep every row.

This is the Python API behind ``latbench measure`` / ``compile``::

    from latbench.campaign import measure_ops, measure_archs
    df = measure_ops(Space(resolution=224).distinct_ops(), "local-cpu", "data")

Flow: jobs (ops or archs) → build phase (worker processes; each result cached on disk) →
measure phase (a runner: one timing at a time per device server) → rows appended to the table
journal as they come → table consolidated to Parquet. Interrupted campaigns resume: keys already
``ok`` in the table are skipped.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latbench.artifacts import Artifact, ArtifactCache, artifact_id
from latbench.backends.base import Backend, get_backend
from latbench.devices import Device, get_device
from latbench.errors import LatbenchError
from latbench.facts import host_facts, versions
from latbench.features import op_features
from latbench.ops import OpSpec
from latbench.space import Arch
from latbench.tables import TableStore, table_path

log = logging.getLogger(__name__)

#: Relative tolerance of the numerical check against PyTorch (fp32; scaled by the output's magnitude).
RTOL = 1e-3


@dataclass(frozen=True)
class Job:
    """One thing to measure: an op (key = op key) or a whole network (key = arch key)."""

    key: str
    what: str  # "ops" | "archs"
    arch: dict | None = None

    @staticmethod
    def op(op: OpSpec) -> Job:
        return Job(op.key, "ops")

    @staticmethod
    def network(arch: Arch) -> Job:
        return Job(arch.key, "archs", arch.to_dict())

    def describe(self) -> dict[str, Any]:
        """The row fields that identify this job (shape fields and features, or the arch)."""
        if self.what == "ops":
            op = OpSpec.parse(self.key)
            row = {"kind": op.kind, "in_h": op.in_h, "in_w": op.in_w, "in_ch": op.in_ch,
                   "out_h": op.out_h, "out_w": op.out_w, "out_ch": op.out_ch, "expand": op.expand,
                   "kernel": op.kernel, "stride": op.stride, "idskip": op.idskip}
            row.update(op_features(op))  # shape fields repeat with the same values
            return row
        arch = Arch.from_dict(self.arch or {})
        return {"kind": "arch", "arch": arch.to_json(), "resolution": arch.resolution,
                "width_mult": arch.width_mult}

    def module_and_input(self) -> tuple[Any, Any]:
        """The eval-mode PyTorch module and its seeded example input."""
        from latbench.modules import build_network, build_op_module, example_input

        if self.what == "ops":
            op = OpSpec.parse(self.key)
            return build_op_module(op), example_input(op.input_shape, self.key)
        arch = Arch.from_dict(self.arch or {})
        return build_network(arch), example_input((1, 3, arch.resolution, arch.resolution), self.key)


# -- build phase -------------------------------------------------------------------------------
def _artifact_for(job: Job, backend: Backend, device: Device, cache: ArtifactCache) -> Artifact:
    import tvm

    ident = artifact_id(job.key, backend.name, backend.settings(), device.target_json(),
                        device.cross_compiler, tvm.__version__)
    return cache.get(backend.name, ident)


def build_job(job: Job, backend: Backend, device: Device, artifact: Artifact) -> dict[str, Any]:
    """Build one artifact (input, PyTorch's expected output, library, meta). Runs in a worker."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.export's deprecation chatter
    torch.set_num_threads(1)  # build workers run side by side; one core each
    t0 = time.perf_counter()
    module, x = job.module_and_input()
    with torch.no_grad():
        y = module(x)
    artifact.root.mkdir(parents=True, exist_ok=True)
    np.save(artifact.input, x.numpy())
    np.save(artifact.expected, y.numpy())
    notes = backend.build(module, x, device, artifact.lib) if backend.kind == "tvm" else {}
    notes["build_s"] = round(time.perf_counter() - t0, 3)
    artifact.write_meta({"key": job.key, "what": job.what, "arch": job.arch, "backend": backend.name,
                         "settings": backend.settings(), "target": device.target_json(),
                         "device": device.name, "cross_compiler": device.cross_compiler,
                         "build": notes, "versions": versions()})
    return notes


def _build_worker(job: Job, backend: Backend, device: Device, root: str) -> tuple[str, dict | None, str | None]:
    artifact = Artifact(Path(root))
    try:
        return job.key, build_job(job, backend, device, artifact), None
    except LatbenchError as exc:
        return job.key, None, str(exc)
    except Exception as exc:  # a compile error is recorded for that op; the campaign goes on
        from latbench.runners.rpc import first_line

        return job.key, None, f"build failed: {exc.__class__.__name__}: {first_line(exc)}"


def build_all(jobs: Sequence[Job], backend: Backend, device: Device, cache: ArtifactCache,
              workers: int | None = None, progress: bool = True
              ) -> tuple[dict[str, Artifact], dict[str, str]]:
    """Build every job's artifact (cached ones are reused). Returns (key → artifact, key → error)."""
    from latbench.progress import bar

    arts = {j.key: _artifact_for(j, backend, device, cache) for j in jobs}
    todo = [j for j in jobs if not arts[j.key].is_complete()]
    errors: dict[str, str] = {}
    if todo:
        n_workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        log.info("building %d artifacts (%d cached) with %d workers", len(todo), len(jobs) - len(todo), n_workers)
        with bar(total=len(todo), desc=f"compile {backend.name}", enabled=progress) as pbar:
            if n_workers == 1:
                for j in todo:
                    _, _, err = _build_worker(j, backend, device, str(arts[j.key].root))
                    if err:
                        errors[j.key] = err
                    pbar.update(1)
            else:
                ctx = mp.get_context("spawn")  # fork after importing torch/TVM is unsafe
                with ProcessPoolExecutor(n_workers, mp_context=ctx) as pool:
                    futs = [pool.submit(_build_worker, j, backend, device, str(arts[j.key].root)) for j in todo]
                    try:
                        for fut in as_completed(futs):
                            key, _, err = fut.result()
                            if err:
                                errors[key] = err
                            pbar.update(1)
                    except BaseException:
                        pool.shutdown(wait=False, cancel_futures=True)
                        raise
    for key, err in errors.items():
        log.warning("%s: %s", key, err)
    return {k: a for k, a in arts.items() if k not in errors}, errors


# -- measure phase -----------------------------------------------------------------------------
@dataclass
class Campaign:
    """Measure jobs on a device with a backend, appending rows to ``out_dir``'s table as they come."""

    device: Device
    backend: Backend
    out_dir: Path
    cache: ArtifactCache = field(default_factory=ArtifactCache)
    workers: int | None = None
    progress: bool = True

    def store(self, what: str) -> TableStore:
        return TableStore(table_path(self.out_dir, self.device.name, self.backend.name, what))

    def base_row(self) -> dict[str, Any]:
        d, t = self.device, self.device.timing
        return {"device": d.name, "backend": self.backend.name, "target": d.target_json(),
                "number": t.number, "repeat": t.repeat, "min_repeat_ms": t.min_repeat_ms,
                "warmup": t.warmup, "cooldown_ms": t.cooldown_ms, "num_threads": d.threads,
                "emulated": d.emulated, "backend_settings": json.dumps(self.backend.settings(), sort_keys=True),
                "versions": json.dumps(versions(), sort_keys=True),
                "host_facts": json.dumps(host_facts(), sort_keys=True)}

    def run(self, jobs: Sequence[Job], limit: int | None = None) -> pd.DataFrame:
        """Measure what is missing among ``jobs`` (first ``limit`` of them); return the whole table."""
        if not jobs:
            raise LatbenchError("nothing to measure")
        what = jobs[0].what
        store = self.store(what)
        store.consolidate()  # fold what an interrupted run left in the journal
        jobs = list(jobs)[:limit] if limit else list(jobs)
        done = store.done_keys()
        todo = [j for j in jobs if j.key not in done]
        log.info("%s on %s/%s: %d to measure, %d already in %s", what, self.device.name, self.backend.name,
                 len(todo), len(jobs) - len(todo), store.path)
        if not todo:
            return store.consolidate()
        base = self.base_row()
        by_key = {j.key: j for j in todo}

        def record(key: str, result: dict[str, Any]) -> None:
            row = {"key": key, **by_key[key].describe(), **base, **result,
                   "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            row.setdefault("status", "ok")
            store.append(row)

        from latbench.runners.rpc import check_reachable

        if self.backend.kind == "tvm":
            check_reachable(self.device)  # an unreachable board fails now, not after the build
        try:
            arts, errors = build_all(todo, self.backend, self.device, self.cache, self.workers, self.progress)
            for key, err in errors.items():
                record(key, {"status": "error", "error": err, "stage": "build"})
            from latbench.runners import make_runner
            from latbench.runners.lock import device_lock

            items = [(j.key, arts[j.key]) for j in todo if j.key in arts]
            if items:
                with device_lock(self.device), make_runner(self.device, self.backend) as runner:
                    runner.run(items, record, progress=self.progress)
        finally:
            df = store.consolidate()
        return df


def _resolve(device: Device | str, backend: Backend | str | None) -> tuple[Device, Backend]:
    dev = device if isinstance(device, Device) else get_device(device)
    be = backend if isinstance(backend, Backend) else get_backend(backend)
    return dev, be


def measure_ops(ops: Iterable[OpSpec], device: Device | str = "local-cpu", out_dir: str | Path = "data",
                backend: Backend | str | None = None, limit: int | None = None,
                cache: str | Path | None = None, progress: bool = False) -> pd.DataFrame:
    """Measure ops on a device; returns the device/backend op table (all rows, old and new)."""
    dev, be = _resolve(device, backend)
    jobs = [Job.op(o) for o in dict.fromkeys(ops)]
    return Campaign(dev, be, Path(out_dir), ArtifactCache(cache), progress=progress).run(jobs, limit)


def measure_archs(archs: Iterable[Arch], device: Device | str = "local-cpu", out_dir: str | Path = "data",
                  backend: Backend | str | None = None, cache: str | Path | None = None,
                  progress: bool = False) -> pd.DataFrame:
    """Measure whole networks; returns the rows of the archs table for the given archs."""
    dev, be = _resolve(device, backend)
    archs = list(archs)
    jobs = list({a.key: Job.network(a) for a in archs}.values())
    df = Campaign(dev, be, Path(out_dir), ArtifactCache(cache), progress=progress).run(jobs)
    keys = [a.key for a in archs]
    return df.set_index("key").loc[[k for k in keys if k in set(df["key"])]].reset_index()


def compile_jobs(jobs: Sequence[Job], device: Device | str, out_dir: str | Path,
                 backend: Backend | str | None = None, progress: bool = False) -> Path:
    """Build artifacts into ``out_dir`` (an artifact set with a manifest) without measuring."""
    dev, be = _resolve(device, backend)
    cache = ArtifactCache(out_dir)
    arts, errors = build_all(jobs, be, dev, cache, progress=progress)
    entries = []
    for j in jobs:
        e = {"key": j.key, "what": j.what, "arch": j.arch}
        if j.key in arts:
            e.update(status="ok", path=str(arts[j.key].root.relative_to(cache.root)))
        else:
            e.update(status="error", error=errors.get(j.key, "not built"), path=None)
        entries.append(e)
    return cache.write_manifest(entries, {"device": dev.name, "backend": be.name, "target": dev.target_json(),
                                          "emulated": dev.emulated, "versions": versions()})
