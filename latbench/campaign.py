"""A measurement campaign: artifacts (built here or prebuilt) timed on a device in interleaved rounds.

This is the Python API behind ``latbench measure`` / ``compile`` / ``evaluate``::

    from latbench.campaign import measure_ops, measure_archs
    df = measure_ops(Space(resolution=224).distinct_ops(), "local-cpu", "data")

Flow: jobs (ops and/or whole networks) → a :class:`~latbench.build.JobSource` (build phase in worker
processes, cached; or a prebuilt artifact set) → measure phase: every unfinished item is visited
once per round in a fresh random order, a reference op timed between visits (see
:mod:`latbench.rounds` for the method and its statistic) → each visit appended to the table's visit
journal the moment it is taken → when no item needs another visit, one row per item is written
and the tables consolidated to Parquet. Interrupted campaigns resume at visit granularity: keys
already ``ok`` in the table are skipped, and the visits an unfinished item already had count.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Sequence

import pandas as pd

from latbench import boards, rounds
from latbench.artifacts import ArtifactCache
from latbench.backends.base import Backend, get_backend
from latbench.build import BuildSource, JobSource, ManifestSource, Prepared, build_all, build_job, compile_jobs
from latbench.devices import Device, get_device
from latbench.errors import LatbenchError
from latbench.facts import host_facts, versions
from latbench.files import temp_sibling
from latbench.jobs import RTOL, Job
from latbench.netconfig import Net
from latbench.ops import OpSpec
from latbench.progress import bar
from latbench.runners import make_runner
from latbench.runners.base import Visit
from latbench.runners.lock import device_lock
from latbench.runners.rpc import check_reachable
from latbench.space import Arch
from latbench.tables import TableStore, code_id, table_path

__all__ = ["Campaign", "Job", "RTOL", "build_all", "build_job", "compile_jobs", "measure_ops", "measure_archs",
           "measure_jobs", "measure_networks", "network_jobs", "plan_of"]

log = logging.getLogger(__name__)


def plan_of(device: Device, **overrides: Any) -> rounds.Plan:
    """The rounds plan from the device's ``timing`` section, with CLI overrides (``None`` = keep)."""
    t = device.timing
    fields = {"rounds": t.rounds, "repeat": t.repeat, "ci_target": t.ci_target, "max_visits": t.max_visits,
              "burst_threshold": t.burst_threshold, "reference": t.reference, "seed": t.seed,
              "normalize": t.normalize}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if fields["rounds"] < 1:
        raise LatbenchError(f"--rounds must be >= 1, got {fields['rounds']}")
    if not 0 < fields["ci_target"] < 1:
        raise LatbenchError(f"--ci-target must be a fraction in (0, 1) such as 0.02, got {fields['ci_target']}")
    if fields["max_visits"] and fields["max_visits"] < fields["rounds"]:
        raise LatbenchError(f"--max-visits ({fields['max_visits']}) must be >= --rounds ({fields['rounds']})")
    return rounds.Plan(**fields)


@dataclass
class Campaign:
    """Measure jobs on a device, appending visits and rows to ``out_dir``'s tables as they come."""

    device: Device
    backend: Backend | None
    out_dir: Path
    cache: ArtifactCache = field(default_factory=ArtifactCache)
    workers: int | None = None
    progress: bool = True
    plan: rounds.Plan | None = None
    source: JobSource | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.plan = self.plan or plan_of(self.device)
        if self.source is None:
            if self.backend is None:
                raise LatbenchError("a campaign needs a backend or a prebuilt artifact set")
            self.source = BuildSource(self.backend, self.device, self.cache, self.workers, self.progress)

    @property
    def backend_name(self) -> str:
        if self.backend is not None:
            return self.backend.name
        return str(getattr(self.source, "backend_name", "tvm"))

    def store(self, what: str, backend: str | None = None) -> TableStore:
        return TableStore(table_path(self.out_dir, self.device.name, backend or self.backend_name, what))

    def code(self) -> dict[str, Any]:
        """The code this campaign times (:data:`latbench.tables.CODE_FIELDS`): the source's, and the thread count."""
        assert self.source is not None
        return {**self.source.code(), "num_threads": self.device.threads}

    def base_row(self, prep: Prepared, code: str) -> dict[str, Any]:
        d, t, plan = self.device, self.device.timing, self.plan
        assert plan is not None
        row = {"device": d.name, "backend": prep.backend, "target": prep.target, "number": t.number,
               "repeat": t.repeat, "min_repeat_ms": t.min_repeat_ms, "warmup": t.warmup,
               "cooldown_ms": t.cooldown_ms, "num_threads": d.threads, "emulated": d.emulated,
               "ci_target": plan.ci_target, "burst_threshold": plan.burst_threshold, "normalize": plan.normalize,
               "reference": prep.reference is not None, "runner": prep.runner,
               "versions": json.dumps(prep.extra.get("versions") or versions(), sort_keys=True),
               "host_facts": json.dumps(host_facts(), sort_keys=True)}
        if "backend_settings" in prep.extra:
            row["backend_settings"] = json.dumps(prep.extra["backend_settings"], sort_keys=True)
        if "artifacts" in prep.extra:
            row["artifacts"] = prep.extra["artifacts"]
        row["code"] = code
        return row

    # -- the measure loop ---------------------------------------------------------------------------
    def run(self, jobs: Sequence[Job], limit: int | None = None) -> pd.DataFrame:
        """Measure what is missing among ``jobs`` (first ``limit`` of them); return the table of the first
        job's kind (all its rows, old and new). Ops and networks may be mixed: they are timed in the same
        interleaved rounds (so drift hits both alike) and go to their own tables."""
        if not jobs:
            raise LatbenchError("nothing to measure")
        if limit is not None and limit < 1:
            raise LatbenchError(f"--limit must be >= 1, got {limit}")
        jobs = list(dict((j.key, j) for j in jobs).values())[:limit]
        plan = self.plan
        assert plan is not None and self.source is not None
        kinds = list(dict.fromkeys(j.what for j in jobs))
        stores = {w: self.store(w) for w in kinds}
        done: set[str] = set()
        for st in stores.values():
            st.consolidate()  # fold what an interrupted run left in the journal
        code = self.code()
        with device_lock(self.device):  # decide what to measure only once the device is ours
            stale: dict[str, str] = {}
            for st in stores.values():
                done_here, stale_here = st.done_and_stale(code)
                done |= done_here
                stale.update(stale_here)
            todo = [j for j in jobs if j.key not in done]
            log.info("%s on %s/%s: %d to measure, %d already done", "+".join(kinds), self.device.name,
                     self.backend_name, len(todo), len(jobs) - len(todo))
            again = [j.key for j in todo if j.key in stale]
            if again:
                whys = sorted(set(stale[k] for k in again))
                log.warning("%d of them were timed with other code (%s%s): timing them again; the new rows replace "
                            "the old ones (their visits stay in the visits table)", len(again), whys[0],
                            f"; and {len(whys) - 1} other difference(s)" if len(whys) > 1 else "")
            if todo:
                device = self.device
                try:
                    with boards.tunnel(device) as self.device:  # rpc.tunnel: through an SSH port forward
                        self._measure(todo, stores, plan, code_id(code))
                finally:
                    self.device = device
        return stores[kinds[0]].consolidate()

    def _measure(self, todo: list[Job], stores: dict[str, TableStore], plan: rounds.Plan, code: str) -> None:
        assert self.source is not None
        by_key = {j.key: j for j in todo}
        tvm_build = isinstance(self.source, BuildSource) and self.source.backend.kind == "tvm"
        if tvm_build:
            boards.prepare(self.device)  # an emulated board (qemu) is started on demand
            check_reachable(self.device)  # an unreachable board fails now, not after the build
        prep = self.source.prepare(todo, plan.reference)
        if prep.runner == "rpc" and not tvm_build:
            boards.prepare(self.device)  # a prebuilt set timed over RPC: its board too, before connecting
        base = self.base_row(prep, code)
        finished: set[str] = set()

        def write(key: str, result: dict[str, Any]) -> None:
            row = {"key": key, **by_key[key].describe(), **base, **result,
                   "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            row.setdefault("status", "ok")
            stores[by_key[key].what].append(row)
            finished.add(key)

        try:
            for key, err in prep.errors.items():
                write(key, {"status": "error", "error": err, "stage": "build"})
            visits: dict[str, list[dict[str, Any]]] = {j.key: [] for j in todo if j.key in prep.artifacts}
            for st in stores.values():
                for k, vs in st.pending_visits(code).items():
                    if k in visits:
                        visits[k] = vs
            resumed = sum(len(v) for v in visits.values())
            if resumed:
                log.info("resuming: %d visits of %d items already taken", resumed, sum(1 for v in visits.values() if v))
            if visits:
                self._rounds(visits, prep, stores, by_key, plan, write, code)
        finally:
            for st in stores.values():
                st.consolidate()
                st.fold_visits(finished)

    def _rounds(self, visits: dict[str, list[dict[str, Any]]], prep: Prepared, stores: dict[str, TableStore],
                by_key: dict[str, Job], plan: rounds.Plan, write: Any, code: str) -> None:
        active = set(visits)
        errors: dict[str, dict[str, Any]] = {}
        pbar = bar(total=len(active) * plan.rounds, desc=f"measure {self.device.name}", enabled=self.progress)
        pbar.update(sum(len(v) for v in visits.values()))

        def on_result(v: Visit, res: dict[str, Any]) -> None:
            pbar.update(1)
            if res.get("status") == "error":
                errors[v.key] = res
                active.discard(v.key)
                write(v.key, res)
                return
            rec = {**res, "round": v.round, "code": code}
            stores[by_key[v.key].what].append_visit(v.key, rec)
            visits[v.key].append(rec)

        rng = random.Random(plan.seed)
        stored = ReferenceLevels(prep.reference, self.device.threads)
        try:
            with make_runner(self.device, prep.runner, prep.reference, plan.visit_repeat,
                             self.backend) as runner:
                while True:
                    floors = stored.merged(rounds.reference_floors(v for vs in visits.values() for v in vs))
                    need = sorted(k for k in active if rounds.needs_visit(visits[k], floors, plan))
                    if not need:
                        break
                    rng.shuffle(need)
                    extra = max(0, len(need) - (pbar.total - pbar.n))
                    if extra:
                        pbar.total += extra
                    runner.run([Visit(k, prep.artifacts[k], len(visits[k]) + 1) for k in need], on_result)
        finally:
            pbar.close()
        campaign_levels = rounds.reference_floors(v for vs in visits.values() for v in vs)
        floors = stored.merged(campaign_levels)
        stored.remember(campaign_levels, visits)
        good = {k: vs for k, vs in visits.items() if k not in errors and vs}
        n_unstable = 0
        for k, vs in good.items():
            row = rounds.summarize_item(vs, floors, plan)
            row["max_abs_err"] = vs[-1].get("max_abs_err")
            row["tolerance"] = vs[-1].get("tolerance")
            n_unstable += bool(row["unstable"])
            write(k, row)
        self.summary = rounds.campaign_summary(good, floors, plan)
        self.summary.update(unstable=n_unstable, errors=len(errors))
        self._warn(good)
        log.info(self.summary_line())

    def _warn(self, visits: dict[str, list[dict[str, Any]]]) -> None:
        allv = [v for vs in visits.values() for v in vs]
        govs = {str(v.get("governor")) for v in allv if v.get("governor")}
        bad = sorted(g for g in govs if g != "performance")
        if bad:
            log.warning("CPU frequency governor %s during the campaign (not 'performance'): timings drift with the "
                        "clock; set it with `cpupower frequency-set -g performance` on the device", ",".join(bad))
        if any(v.get("throttled") for v in allv):
            log.warning("the device throttled (temperature or under-voltage) during the campaign: its rows "
                        "describe a throttled device; cool it or power it better and re-measure")
        if self.summary.get("unstable"):
            log.warning("%d of %d items are flagged unstable (CI above %g %% after %d visits); they are marked in "
                        "the table (`latbench table show`); rerun on a quieter machine for better numbers",
                        self.summary["unstable"], len(visits), 100 * self.plan.ci_target, self.plan.visit_cap)

    def summary_line(self) -> str:
        """One line on the campaign: visits, rejections, the reference's drift, unstable items."""
        s = self.summary
        if not s:
            return "nothing was timed"
        line = (f"{s['items']} items, {s['visits']} visits ({self.plan.rounds} rounds), "
                f"{s['rejected']} rejected as slow moments ({100 * s['rejected'] / max(1, s['visits']):.1f} %)")
        if "ref_min_ms" in s:
            line += (f", reference {s['ref_min_ms']:.3f}–{s['ref_max_ms']:.3f} ms (drift {s['ref_drift']:.2f}×, "
                     f"median {s['ref_median_ms']:.3f})")
        return line + f", {s.get('unstable', 0)} unstable, {s.get('errors', 0)} errors"


class ReferenceLevels:
    """The quiet level of the reference op per board, kept beside the reference artifact (``levels.json``).

    Every campaign on a board with enough reference timings offers its own level (a low quantile of its
    references); the kept level is the lowest offered, so it converges on the machine's quiet speed and a
    campaign that runs entirely in a slow phase still normalises to it (each row records the
    ``ref_level_ms`` it used, so tables taken before a lower level was found can be rescaled). Delete the
    file to start afresh (e.g. after moving the device to another host).
    """

    MIN_REFS = 8

    def __init__(self, reference: Any, threads: int) -> None:
        self.path = Path(reference.root) / "levels.json" if reference is not None else None
        self.threads = threads
        self.levels: dict[str, float] = {}
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                self.levels = {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float)) and v > 0}
            except (OSError, ValueError, AttributeError):
                log.warning("%s is unreadable; the reference level is taken from this campaign", self.path)

    def _key(self, board: str) -> str:
        return f"{board}|threads={self.threads}"

    def merged(self, campaign: dict[str, float]) -> dict[str, float]:
        return {b: min(self.levels.get(self._key(b), lv), lv) for b, lv in campaign.items()}

    def remember(self, campaign: dict[str, float], visits: dict[str, list[dict[str, Any]]]) -> None:
        if self.path is None:
            return
        n_refs: dict[str, int] = {}
        for vs in visits.values():
            for v in vs:
                b = rounds.board_of(v)
                n_refs[b] = n_refs.get(b, 0) + 1
        new = {self._key(b): lv for b, lv in campaign.items()
               if n_refs.get(b, 0) >= self.MIN_REFS and lv < self.levels.get(self._key(b), float("inf"))}
        if not new:
            return
        self.levels.update(new)
        tmp = temp_sibling(self.path)
        try:
            tmp.write_text(json.dumps(self.levels, indent=1, sort_keys=True))
            tmp.replace(self.path)
        except OSError as exc:  # a read-only artifact set: the level stays this campaign's
            log.warning("cannot keep the reference level in %s (%s)", self.path, exc.strerror or exc)


def _resolve(device: Device | str, backend: Backend | str | None) -> tuple[Device, Backend]:
    dev = device if isinstance(device, Device) else get_device(device)
    be = backend if isinstance(backend, Backend) else get_backend(backend)
    return dev, be


def measure_jobs(jobs: Sequence[Job], device: Device | str = "local-cpu", out_dir: str | Path = "data",
                 backend: Backend | str | None = None, cache: str | Path | None = None, progress: bool = False,
                 limit: int | None = None, **plan: Any) -> pd.DataFrame:
    """Measure ops and/or networks in one interleaved campaign; returns the first job kind's table.
    ``plan`` overrides the device's rounds settings (``rounds=``, ``ci_target=``, ``max_visits=``…)."""
    dev, be = _resolve(device, backend)
    return Campaign(dev, be, Path(out_dir), ArtifactCache(cache), progress=progress,
                    plan=plan_of(dev, **plan)).run(jobs, limit)


def measure_ops(ops: Iterable[OpSpec], device: Device | str = "local-cpu", out_dir: str | Path = "data",
                backend: Backend | str | None = None, limit: int | None = None,
                cache: str | Path | None = None, progress: bool = False, **plan: Any) -> pd.DataFrame:
    """Measure ops on a device; returns the device/backend op table (all rows, old and new)."""
    jobs = [Job.op(o) for o in dict.fromkeys(ops)]
    return measure_jobs(jobs, device, out_dir, backend, cache, progress, limit, **plan)


def network_jobs(nets: Iterable[Arch | Net], with_ops: bool = True, ops: Iterable[OpSpec] = ()) -> list[Job]:
    """The jobs of whole networks (archs of the space or net configs at a resolution), first, then every
    distinct op of them (``with_ops``) and ``ops``: one campaign times them all in the same rounds, the
    networks into the archs table and the ops into the op table."""
    nets = list(nets)
    jobs = list({n.key: Job.network(n) for n in nets}.values())
    own = [o for n in nets for o in n.op_specs] if with_ops else []
    return jobs + [Job.op(o) for o in dict.fromkeys([*own, *ops])]


def network_rows(df: pd.DataFrame, nets: Sequence[Arch | Net]) -> pd.DataFrame:
    """The rows of an archs table for ``nets``, in their order (those not in it left out)."""
    keys = list(dict.fromkeys(n.key for n in nets))
    if df.empty:
        return df
    return df.drop_duplicates("key", keep="last").set_index("key").loc[
        [k for k in keys if k in set(df["key"])]].reset_index()


def measure_networks(nets: Iterable[Arch | Net], device: Device | str = "local-cpu", out_dir: str | Path = "data",
                     backend: Backend | str | None = None, cache: str | Path | None = None,
                     progress: bool = False, with_ops: bool = True, ops: Iterable[OpSpec] = (),
                     **plan: Any) -> pd.DataFrame:
    """Measure whole networks and (``with_ops``) their ops in one interleaved campaign (what
    ``latbench measure --arch/--net-config/--archs`` does); returns the archs-table rows of ``nets``."""
    nets = list(nets)
    if not nets:
        raise LatbenchError("no networks to measure")
    df = measure_jobs(network_jobs(nets, with_ops, ops), device, out_dir, backend, cache, progress, **plan)
    return network_rows(df, nets)


def measure_archs(archs: Iterable[Arch], device: Device | str = "local-cpu", out_dir: str | Path = "data",
                  backend: Backend | str | None = None, cache: str | Path | None = None,
                  progress: bool = False, ops: Iterable[OpSpec] = (), **plan: Any) -> pd.DataFrame:
    """Measure whole networks (with ``ops`` timed in the same rounds, into the op table); returns the
    rows of the archs table for the given archs."""
    return measure_networks(archs, device, out_dir, backend, cache, progress, with_ops=False, ops=ops, **plan)


def measure_artifacts(root: str | Path, device: Device, out_dir: str | Path, progress: bool = True,
                      runtime_only: bool = False, **plan: Any) -> pd.DataFrame:
    """Time every built entry of the artifact set ``root`` on ``device`` (same loop, same tables)."""
    source = ManifestSource(Path(root), device, runtime_only)
    jobs = source.jobs()
    if not jobs:
        raise LatbenchError(f"artifact set {root} has no entries")
    camp = Campaign(device, None, Path(out_dir), progress=progress, plan=plan_of(device, **plan), source=source)
    return camp.run(jobs)
