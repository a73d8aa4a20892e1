"""Time a prebuilt artifact set (``latbench compile --out DIR``) on a device: build here, time there.

Where ``tvm`` cannot be imported (a board with only the runtime bundle) or ``LATBENCH_RUNTIME_ONLY=1``,
the set is timed in this process by :mod:`latbench.runtime_timer` (``tvm_ffi`` + libtvm_runtime).
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from latbench.artifacts import load_manifest
from latbench.campaign import Job
from latbench.devices import Device
from latbench.errors import LatbenchError
from latbench.facts import host_facts, versions
from latbench.settings import runtime_only
from latbench.tables import TableStore, table_path

log = logging.getLogger(__name__)


def tvm_importable() -> bool:
    """Whether the full ``tvm`` package imports here (False on runtime-only hosts or when forced)."""
    if runtime_only():
        return False
    try:
        import tvm  # noqa: F401
    except ImportError:
        return False
    return True


def measure_artifacts(root: str | Path, device: Device, out_dir: str | Path, progress: bool = True) -> pd.DataFrame:
    """Time every built entry of the artifact set ``root`` on ``device``; rows go to the usual table."""
    from latbench.runners import make_runner
    from latbench.runners.lock import device_lock

    manifest, entries = load_manifest(root)
    full_tvm = tvm_importable()
    if not full_tvm:
        return _measure_runtime_only(root, manifest, entries, device, out_dir)
    if manifest.get("target") != device.target_json():
        raise LatbenchError(
            f"artifacts in {root} were built for target {manifest.get('target')} but device {device.name!r} "
            f"has target {device.target_json()}; rebuild with `latbench compile --target {device.name}`"
        )
    backend_name = manifest.get("backend", "tvm")
    what = entries[0][0].get("what", "ops") if entries else "ops"
    store = TableStore(table_path(out_dir, device.name, backend_name, what))
    store.consolidate()
    done = store.done_keys()
    jobs = {e["key"]: Job(e["key"], e.get("what", "ops"), e.get("arch")) for e, _ in entries}
    t = device.timing
    base = {"device": device.name, "backend": backend_name, "target": device.target_json(),
            "number": t.number, "repeat": t.repeat, "min_repeat_ms": t.min_repeat_ms, "warmup": t.warmup,
            "cooldown_ms": t.cooldown_ms, "num_threads": device.threads, "emulated": device.emulated,
            "versions": json.dumps(manifest.get("versions", versions()), sort_keys=True),
            "host_facts": json.dumps(host_facts(), sort_keys=True), "artifacts": str(root)}

    def record(key: str, result: dict[str, Any]) -> None:
        store.append({"key": key, **jobs[key].describe(), **base, **result,
                      "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "status": result.get("status", "ok")})

    items = [(e["key"], a) for e, a in entries if e.get("status") == "ok" and e["key"] not in done]

    class _Backend:  # runners only look at the backend's kind
        kind = "tvm"

    try:
        if items:
            with device_lock(device), make_runner(device, _Backend()) as runner:
                runner.run(items, record, progress=progress)
    finally:
        df = store.consolidate()
    return df


def _measure_runtime_only(root: str | Path, manifest: dict[str, Any], entries: list, device: Device,
                          out_dir: str | Path) -> pd.DataFrame:
    """Time the set in this process with the runtime-only timer (no tvm, no RPC)."""
    from latbench.runtime_timer import ArtifactTimer

    try:
        target = device.target_json()
    except ImportError:  # `mcpu: native` needs tvm to resolve; trust the set's own target
        target = manifest.get("target")
    if manifest.get("target") != target:
        raise LatbenchError(
            f"artifacts in {root} were built for target {manifest.get('target')} but device {device.name!r} "
            f"has target {target}; rebuild with `latbench compile --target {device.name}`")
    backend_name = manifest.get("backend", "tvm")
    what = entries[0][0].get("what", "ops") if entries else "ops"
    store = TableStore(table_path(out_dir, device.name, backend_name, what))
    store.consolidate()
    done = store.done_keys()
    t = device.timing
    base = {"device": device.name, "backend": backend_name, "target": target,
            "number": t.number, "repeat": t.repeat, "min_repeat_ms": t.min_repeat_ms, "warmup": t.warmup,
            "cooldown_ms": t.cooldown_ms, "num_threads": device.threads, "emulated": device.emulated,
            "versions": json.dumps(manifest.get("versions", versions()), sort_keys=True),
            "host_facts": json.dumps(host_facts(), sort_keys=True), "artifacts": str(root),
            "runner": "runtime-only"}
    todo = [(e, a) for e, a in entries if e.get("status") == "ok" and e["key"] not in done]
    log.info("runtime-only timing of %d artifacts from %s (tvm not importable)", len(todo), root)
    try:
        if todo:
            cuda = '"cuda"' in str(manifest.get("target")) or "nvidia" in str(manifest.get("target"))
            timer = ArtifactTimer(cuda=cuda)
            for e, art in todo:
                job = Job(e["key"], e.get("what", "ops"), e.get("arch"))
                try:
                    res = timer.time(art.root, t.warmup, t.number, t.repeat, t.min_repeat_ms)
                except Exception as exc:  # one op failing to load/run is recorded; the set goes on
                    from latbench.runners.rpc import first_line

                    res = {"status": "error", "stage": "run", "error": f"run failed: {first_line(exc)}"}
                store.append({"key": e["key"], **job.describe(), **base, **res, "server": "local:runtime-only",
                              "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    finally:
        df = store.consolidate()
    return df
