"""The build phase: jobs become artifacts (parallel worker processes, content-addressed cache), or come
from a prebuilt artifact set. Both are a :class:`JobSource` for the campaign, so a campaign built
here and one timing an offline set (``measure --artifacts``) are the same loop.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from collections.abc import Sequence

import numpy as np

from latbench.artifacts import Artifact, ArtifactCache, artifact_id, load_manifest
from latbench.backends.base import Backend, get_backend
from latbench.devices import Device, get_device
from latbench.errors import LatbenchError
from latbench.facts import versions
from latbench.jobs import REFERENCE_KEY, Job
from latbench.progress import bar
from latbench.runners.process import WorkerContext, die_with_parent
from latbench.runners.rpc import first_line

log = logging.getLogger(__name__)


def _artifact_for(job: Job, backend: Backend, device: Device, cache: ArtifactCache) -> Artifact:
    import tvm  # deferred: importing TVM costs seconds

    ident = artifact_id(job.key, backend.name, backend.settings(), device.target_json(),
                        device.cross_compiler, tvm.__version__)
    return cache.get(backend.name, ident)


def build_job(job: Job, backend: Backend, device: Device, artifact: Artifact) -> dict[str, Any]:
    """Build one artifact (input, PyTorch's expected output, library, meta). Runs in a worker."""
    import torch  # deferred: heavy, and only build workers need it

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
        return job.key, None, f"build failed: {exc.__class__.__name__}: {first_line(exc)}"


def _init_worker(parent: int) -> None:
    """Build worker initializer (run before the worker imports torch and TVM with its first job): it dies with its
    parent, even one killed by SIGKILL, so no compile outlives `latbench measure` (and the multiprocessing
    resource tracker, whose pipe the workers hold, exits with them); Ctrl-C and SIGTERM are the parent's."""
    die_with_parent(parent, ignore_terminal_signals=True)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """On an interrupt: kill the running compiles now (shutdown alone waits for them at exit)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(5)


#: After an interrupt kills the workers, multiprocessing's resource tracker cleans up their semaphores and says so
#: in a 2-line warning per run; the cleanup is what we want, the warning breaks "one line per failure".
_QUIET_TRACKER = "ignore::UserWarning:multiprocessing.resource_tracker"


def build_all(jobs: Sequence[Job], backend: Backend, device: Device, cache: ArtifactCache,
              workers: int | None = None, progress: bool = True
              ) -> tuple[dict[str, Artifact], dict[str, str]]:
    """Build every job's artifact (cached ones are reused). Returns (key → artifact, key → error)."""
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
                ctx = WorkerContext()
                if _QUIET_TRACKER not in sys.warnoptions:  # the tracker, started next, takes -W from these
                    sys.warnoptions.append(_QUIET_TRACKER)
                with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_init_worker,
                                         initargs=(os.getpid(),)) as pool:
                    try:
                        futs = [pool.submit(_build_worker, j, backend, device, str(arts[j.key].root)) for j in todo]
                        for fut in as_completed(futs):
                            key, _, err = fut.result()
                            if err:
                                errors[key] = err
                            pbar.update(1)
                    except BaseException:
                        _stop_workers(pool)
                        raise
    for key, err in errors.items():
        log.warning("%s: %s", key, err)
    return {k: a for k, a in arts.items() if k not in errors}, errors



REFERENCE_JOB = Job(REFERENCE_KEY, "ops")


@dataclass
class Prepared:
    """Artifacts ready to time: key → artifact, key → why it could not be built, the reference (or None)."""

    artifacts: dict[str, Artifact]
    errors: dict[str, str]
    reference: Artifact | None
    backend: str
    target: str
    runner: str  # "rpc" | "host" | "runtime-only"
    extra: dict[str, Any] = field(default_factory=dict)  # row fields the source adds (artifacts dir, versions)


class JobSource(Protocol):
    """Where a campaign's artifacts come from."""

    def prepare(self, jobs: Sequence[Job], reference: bool) -> Prepared: ...

    def code(self) -> dict[str, Any]:
        """Which code the artifacts are (``backend``, ``target``, ``backend_settings`` as in a table row; a
        field left out is not known): rows of other code are timed again (:data:`latbench.tables.CODE_FIELDS`)."""
        ...


@dataclass
class BuildSource:
    """Build artifacts here (cached), for the device's target with a backend."""

    backend: Backend
    device: Device
    cache: ArtifactCache
    workers: int | None = None
    progress: bool = True

    def prepare(self, jobs: Sequence[Job], reference: bool) -> Prepared:
        todo = list(jobs) + ([REFERENCE_JOB] if reference and REFERENCE_JOB.key not in {j.key for j in jobs} else [])
        arts, errors = build_all(todo, self.backend, self.device, self.cache, self.workers, self.progress)
        ref = arts.get(REFERENCE_KEY) if reference else None
        if reference and ref is None:
            raise LatbenchError(f"the reference op {REFERENCE_KEY} failed to build ({errors.get(REFERENCE_KEY)}); "
                                "fix the backend, or pass --no-reference to time without burst rejection")
        if REFERENCE_KEY not in {j.key for j in jobs}:
            arts.pop(REFERENCE_KEY, None)
            errors.pop(REFERENCE_KEY, None)
        return Prepared(arts, errors, ref, self.backend.name, self.device.target_json(),
                        "host" if self.backend.kind == "host" else "rpc",
                        {"backend_settings": self.backend.settings()})

    def code(self) -> dict[str, Any]:
        return {"backend": self.backend.name, "target": self.device.target_json(),
                "backend_settings": json.dumps(self.backend.settings(), sort_keys=True)}


@dataclass
class ManifestSource:
    """A prebuilt artifact set (``latbench compile --out DIR``); timed through RPC where ``tvm`` imports,
    else in this process with TVM's runtime alone."""

    root: Path
    device: Device
    runtime_only: bool = False

    def prepare(self, jobs: Sequence[Job], reference: bool) -> Prepared:
        manifest, entries = load_manifest(self.root)
        try:
            target = self.device.target_json()
        except ImportError:  # runtime-only host: `mcpu: native` needs tvm to resolve; trust the set's own target
            target = manifest.get("target")
        if manifest.get("target") != target:
            raise LatbenchError(
                f"artifacts in {self.root} were built for target {manifest.get('target')} but device "
                f"{self.device.name!r} has target {target}; rebuild with "
                f"`latbench compile --target {self.device.name}`")
        by_key = {e["key"]: (e, a) for e, a in entries}
        arts = {j.key: by_key[j.key][1] for j in jobs if j.key in by_key and by_key[j.key][0].get("status") == "ok"}
        errors = {j.key: str(by_key[j.key][0].get("error", "not built")) for j in jobs
                  if j.key in by_key and j.key not in arts}
        ref_entry = next(((e, a) for e, a in entries if e.get("role") == "reference" and e.get("status") == "ok"), None)
        ref = ref_entry[1] if (reference and ref_entry) else None
        if reference and ref is None:
            log.warning("artifact set %s has no reference op (built before latbench 0.2?): visits are not checked "
                        "for slow moments", self.root)
        extra = {"artifacts": str(self.root), "versions": manifest.get("versions")}
        if "backend_settings" in manifest:  # sets built before latbench recorded them have none
            extra["backend_settings"] = manifest["backend_settings"]
        return Prepared(arts, errors, ref, manifest.get("backend", "tvm"), target,
                        "runtime-only" if self.runtime_only else "rpc", extra)

    def code(self) -> dict[str, Any]:
        manifest, _ = load_manifest(self.root)
        settings = manifest.get("backend_settings")
        return {"backend": manifest.get("backend", "tvm"), "target": manifest.get("target"),
                "backend_settings": None if settings is None else json.dumps(settings, sort_keys=True)}

    @property
    def backend_name(self) -> str:
        return str(load_manifest(self.root)[0].get("backend", "tvm"))

    def jobs(self) -> list[Job]:
        """Every entry of the set as a job (the reference excluded)."""
        _, entries = load_manifest(self.root)
        return [Job(e["key"], e.get("what", "ops"), e.get("arch")) for e, _ in entries if e.get("role") != "reference"]


def compile_jobs(jobs: Sequence[Job], device: Device | str, out_dir: str | Path,
                 backend: Backend | str | None = None, progress: bool = False) -> Path:
    """Build artifacts into ``out_dir`` (an artifact set with a manifest) without measuring."""
    dev = device if isinstance(device, Device) else get_device(device)
    be = backend if isinstance(backend, Backend) else get_backend(backend)
    cache = ArtifactCache(out_dir)
    arts, errors = build_all(list(jobs) + [REFERENCE_JOB], be, dev, cache, progress=progress)
    entries = []
    for j in jobs:
        e = {"key": j.key, "what": j.what, "arch": j.arch}
        if j.key in arts:
            e.update(status="ok", path=str(arts[j.key].root.relative_to(cache.root)))
        else:
            e.update(status="error", error=errors.get(j.key, "not built"), path=None)
        entries.append(e)
    if REFERENCE_KEY in arts:  # timed between visits to detect slow moments (latbench.rounds)
        entries.append({"key": REFERENCE_KEY, "what": "ops", "arch": None, "role": "reference", "status": "ok",
                        "path": str(arts[REFERENCE_KEY].root.relative_to(cache.root))})
    return cache.write_manifest(entries, {"device": dev.name, "backend": be.name, "target": dev.target_json(),
                                          "backend_settings": be.settings(), "emulated": dev.emulated,
                                          "versions": versions()})
