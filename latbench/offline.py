"""Time a prebuilt artifact set (``latbench compile --out DIR``) on a device: build here, time there."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from latbench.artifacts import load_manifest
from latbench.campaign import Job
from latbench.devices import Device
from latbench.errors import LatbenchError
from latbench.facts import host_facts, versions
from latbench.tables import TableStore, table_path


def measure_artifacts(root: str | Path, device: Device, out_dir: str | Path, progress: bool = True) -> pd.DataFrame:
    """Time every built entry of the artifact set ``root`` on ``device``; rows go to the usual table."""
    from latbench.runners import make_runner

    manifest, entries = load_manifest(root)
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
            with make_runner(device, _Backend()) as runner:
                runner.run(items, record, progress=progress)
    finally:
        df = store.consolidate()
    return df
