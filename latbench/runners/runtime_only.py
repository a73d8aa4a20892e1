"""A :class:`latbench.runners.base.Session` in this process on TVM's runtime alone (no ``tvm`` import):
for a host that has only the runtime bundle, timing a prebuilt artifact set (``measure --artifacts``)."""
from __future__ import annotations

import platform
from typing import Any

from latbench.artifacts import Artifact
from latbench.board import conditions, timing
from latbench.board.runtime_timer import ArtifactTimer


class RuntimeOnlySession:
    """Loads artifacts into Relax VMs through ``tvm_ffi`` and times them with the shared timing core."""

    broken = False  # a failed item leaves this process's runtime as it was

    def __init__(self, cuda: bool = False) -> None:
        self.timer = ArtifactTimer(cuda=cuda)
        self.address = f"{platform.node()}:runtime-only"
        self.items: dict[str, Any] = {}

    def load(self, key: str, art: Artifact, min_repeat_ms: float) -> dict[str, Any]:
        main, xt, out = self.timer.prepare(art.root)
        fn = lambda: main(xt)  # noqa: E731
        self.items[key] = fn
        if out.get("status") != "error":
            out["number"] = timing.calibrate(fn, self.timer.sync, min_repeat_ms)
        return out

    def time(self, key: str, warmup: int, number: int, repeat: int, cooldown_ms: float) -> list[float]:
        return timing.time_runs(self.items[key], self.timer.sync, warmup, number, repeat, cooldown_ms)

    def conditions(self) -> dict[str, Any]:
        return conditions.read()

    def close(self) -> None:
        self.items.clear()
