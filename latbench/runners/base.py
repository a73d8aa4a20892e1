"""The seams of the measure phase: a :class:`Session` times loaded items on one device server, a
:class:`Runner` spreads a round of :class:`Visit` s over its sessions, and :class:`Prober` is the one
place where a visit is taken (the item between two reference timings, conditions once per round).

    campaign ── round of visits ──► Runner (serial | pool) ──► Prober per session ──► Session
                                                                  (RPC | host process | runtime-only)
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol
from collections.abc import Callable, Sequence

import numpy as np

from latbench.artifacts import Artifact
from latbench.devices import Timing
from latbench.jobs import REFERENCE_KEY
from latbench.runners.rpc import first_line, is_link_error

log = logging.getLogger(__name__)

#: Repeats and window of one reference timing (about 3 x 10 ms: cheap next to a visit).
REF_REPEAT = 3
REF_MIN_REPEAT_MS = 10.0
CONDITION_FIELDS = ("load_1m", "freq_mhz_min", "freq_mhz_max", "governor", "temp_c", "throttled")


@dataclass(frozen=True)
class Visit:
    """One timing window of one item in one round."""

    key: str
    art: Artifact
    round: int = 1


OnResult = Callable[[Visit, dict[str, Any]], None]


class Session(Protocol):
    """A timing context on one device server (an RPC session, a host worker process, this process)."""

    address: str
    #: A call raised on the device side and the session's state is unknown: the runner reopens it
    #: before the next visit (an RPC session's protocol can be left out of step by a failed run).
    broken: bool

    def load(self, key: str, art: Artifact, min_repeat_ms: float) -> dict[str, Any]:
        """Load and check the item once; returns ``max_abs_err``, ``tolerance``, calibrated ``number``
        (and ``status: error`` with ``error`` when its output is wrong). Raises on link errors."""

    def time(self, key: str, warmup: int, number: int, repeat: int, cooldown_ms: float) -> list[float]:
        """Per-run seconds of ``repeat`` samples of a loaded item."""

    def conditions(self) -> dict[str, Any]:
        """The timing machine's load, frequency, governor, temperature, throttling (``{}`` if unknown)."""

    def close(self) -> None: ...


class Runner(Protocol):
    """Times a round of visits (in any order it likes, never two at once per server)."""

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc: Any) -> None: ...

    def run(self, visits: Sequence[Visit], on_result: OnResult) -> None: ...


class Prober:
    """Takes visits on one session: loads each item once, times it between two reference timings
    (the timing after one visit is the one before the next) and reads conditions once per round."""

    def __init__(self, session: Session, timing: Timing, visit_repeat: int, reference: Artifact | None,
                 board: str | None = None) -> None:
        self.session = session
        self.board = board  # which machine (None: the session's address, as in a pool of boards)
        self.timing = timing
        self.visit_repeat = visit_repeat
        self.reference = reference
        self.loaded: dict[str, dict[str, Any]] = {}
        self.last_ref: float | None = None
        self.round = -1
        self.conds: dict[str, Any] = {}

    def _load(self, key: str, art: Artifact, min_repeat_ms: float) -> dict[str, Any]:
        if key not in self.loaded:
            self.loaded[key] = self.session.load(key, art, min_repeat_ms)
        return self.loaded[key]

    def _ref(self) -> float | None:
        if self.reference is None:
            return None
        info = self._load(REFERENCE_KEY, self.reference, REF_MIN_REPEAT_MS)
        if info.get("status") == "error":
            log.warning("the reference op failed (%s); visits are not checked for slow moments", info.get("error"))
            self.reference = None
            return None
        samples = self.session.time(REFERENCE_KEY, 1, int(info["number"]), REF_REPEAT, 0.0)
        return float(np.median(samples)) * 1e3

    def visit(self, v: Visit) -> dict[str, Any]:
        """One visit's record (median and samples in ms, references, conditions), or an error row.
        Link errors (and timeouts) propagate: the runner drops the session."""
        try:
            return self._visit(v)
        except Exception as exc:
            if is_link_error(exc):
                raise
            return {"status": "error", "stage": "run", "error": f"run failed: {first_line(exc)}",
                    "server": self.session.address}

    def _visit(self, v: Visit) -> dict[str, Any]:
        t = self.timing
        info = self._load(v.key, v.art, t.min_repeat_ms)
        if info.get("status") == "error":
            return {k: info[k] for k in ("status", "stage", "error", "max_abs_err", "tolerance") if k in info}
        if v.round != self.round:
            self.round = v.round
            self.conds = self.session.conditions()
        before = self.last_ref if self.last_ref is not None else self._ref()
        t0 = time.time()
        warmup = t.warmup if v.round <= 1 else min(1, t.warmup)  # later visits: caches were evicted, one run
        samples = self.session.time(v.key, warmup, int(info["number"]), self.visit_repeat, t.cooldown_ms)
        after = self._ref()
        self.last_ref = after
        ms = [s * 1e3 for s in samples]
        if not ms or not all(math.isfinite(x) and x > 0 for x in ms):
            return {"status": "error", "stage": "run", "error": f"non-positive or non-finite timings {ms}",
                    "server": self.session.address}
        rec: dict[str, Any] = {"median_ms": float(np.median(ms)), "samples_ms": ms, "number": int(info["number"]),
                               "ref_before_ms": before, "ref_after_ms": after, "t": t0,
                               "server": self.session.address, "board": self.board or self.session.address,
                               "max_abs_err": info.get("max_abs_err"),
                               "tolerance": info.get("tolerance")}
        rec.update({k: self.conds.get(k) for k in CONDITION_FIELDS})
        return rec

    def forget(self) -> None:
        """The session was dropped: nothing stays loaded."""
        self.loaded.clear()
        self.last_ref = None
        self.round = -1
