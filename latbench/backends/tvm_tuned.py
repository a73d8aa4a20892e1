"""The ``tvm-tuned`` backend: MetaSchedule tuning with a tuning-record database shared per target.

Each op is legalized and fused exactly as for the ``tvm`` backend (BN decomposed, ``zero``
pipeline); its PrimFuncs become MetaSchedule tasks. Tasks already in the database (same
PrimFunc, same target) are not tuned again, so a second campaign, or another device with the same
target, tunes nothing. The database is a MetaSchedule JSON database in
``$LATBENCH_CACHE/tuning/<target hash>/`` (override with ``db_dir``).

Candidates are built with ``LocalBuilder(timeout_sec=240)`` (TVM 0.27's popen workers spend
30-40 s importing tensor intrinsics; the default 30 s timeout never finishes a build) and timed
on *this* machine with ``TVM_NUM_THREADS`` set to the device's thread count. Tuning therefore
needs a target this machine can run: a CPU target of this architecture. Tuning is seeded with latbench's
rules (``seed=True``, the default): before a task is tuned, its rules' schedule is timed like a candidate
and committed to the database (:meth:`TunedTVM.seed`), so the evolutionary search starts from it and the
database's best record of a task is never slower than the rules' when both were timed here; the build
notes' ``seeds`` say, per task, whether the rules or a tuned candidate came out best. Functions that no tuning
record covers fall back to latbench's schedule rules, and a tuned function that is slower than the
rules' schedule of it is replaced by that (:meth:`TunedTVM.keep_the_faster`; the build notes'
``vs_rules`` say which was kept, with both times).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from latbench.backends.base import register_backend
from latbench.backends.tvm import TVMBackend
from latbench.backends.tvm_schedules import apply_rules, deinterleave_intrin, prepare, rule_schedule, vector_lanes
from latbench.devices import Device
from latbench.errors import LatbenchError
from latbench.files import temp_sibling
from latbench.settings import cache_root

log = logging.getLogger(__name__)


def target_key(target: Any) -> str:
    """A stable key of a target for the database directory (its canonical JSON, hashed)."""
    text = json.dumps(target.export(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tuning_db_dir(target: Any, root: str | Path | None = None) -> Path:
    """Where the tuning records of ``target`` live (one directory per target)."""
    base = Path(root) if root else cache_root() / "tuning"
    return base / target_key(target)


def cpu_build(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's ``default_build`` without importing ``tvm.s_tir.tensor_intrin``.

    That import (all GPU tensor intrinsics) takes 30-40 s, and every builder batch starts fresh
    worker processes; fp32 CPU schedules never tensorize, so CPU builds do not need it.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def import_cpu_tensor_intrin() -> None:
    """Register only the CPU tensor intrinsics (x86, arm) before MetaSchedule imports them all.

    ``TuneContext`` runs ``import tvm.s_tir.tensor_intrin``, whose package ``__init__`` also builds
    every CUDA/ROCm/Hexagon intrinsic (30-70 s on this machine). Installing the package module
    without running its ``__init__`` and importing the CPU submodules makes that import a no-op;
    other submodules can still be imported explicitly later.
    """
    import importlib
    import importlib.util
    import sys
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        return
    pkg = types.ModuleType(name)
    pkg.__spec__, pkg.__file__, pkg.__package__ = spec, spec.origin, name
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = pkg
    for sub in ("x86", "arm_cpu"):
        importlib.import_module(f"{name}.{sub}")


@contextlib.contextmanager
def _env(var: str, value: str) -> Iterator[None]:
    old = os.environ.get(var)
    os.environ[var] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = old


def _run_secs(funcs: list[Any], order: list[int], target: Any, device: Device, builder_timeout: float,
              runner_timeout: float, evaluator: Any | None = None) -> dict[int, list[float]]:
    """Build each PrimFunc of ``funcs`` once and run them in ``order`` (indices, repeats allowed) in one batch of
    MetaSchedule's local runner with the device's thread count (``evaluator`` = its ``EvaluatorConfig``; the
    default is the one tuning measures candidates with). Returns the seconds of each index that built and ran;
    a failure is logged and leaves its index out."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    mods = [tvm.IRModule({"main": f.with_attr("global_symbol", "main")}) for f in funcs]
    builder = ms.builder.LocalBuilder(timeout_sec=int(builder_timeout), f_build=cpu_build)
    built = builder.build([ms.builder.BuilderInput(m, target) for m in mods])
    for b in built:
        if b.error_msg is not None:
            log.warning("tvm-tuned: building a schedule to time failed: %s",
                        str(b.error_msg).strip().splitlines()[-1][:200])
    ran = [i for i in order if built[i].error_msg is None]
    with _env("TVM_NUM_THREADS", str(device.threads)):
        runner = ms.runner.LocalRunner(timeout_sec=int(runner_timeout),
                                       evaluator_config=evaluator or ms.runner.EvaluatorConfig())
        inputs = [ms.runner.RunnerInput(built[i].artifact_path, "cpu", ms.arg_info.ArgInfo.from_prim_func(funcs[i]))
                  for i in ran]
        done = [f.result() for f in runner.run(inputs)]
    secs: dict[int, list[float]] = {}
    for i, res in zip(ran, done):
        if res.error_msg is None:
            secs.setdefault(i, []).extend(float(v) for v in res.run_secs)
        else:
            log.warning("tvm-tuned: timing a schedule failed: %s", str(res.error_msg).strip().splitlines()[-1][:200])
    for b in built:
        if b.artifact_path:
            with contextlib.suppress(OSError):
                Path(b.artifact_path).unlink()
    return secs


def _time_pairs(pairs: list[tuple[Any, Any]], target: Any, device: Device, builder_timeout: float,
                runner_timeout: float) -> list[tuple[float | None, float | None]]:
    """Median ms of each (tuned, rules) pair of PrimFuncs, timed interleaved (A B B A) by MetaSchedule's local
    builder and runner with the device's thread count; None for a side that failed to build or run."""
    import statistics

    from tvm.s_tir import meta_schedule as ms

    funcs = [f for pair in pairs for f in pair]
    order = [i for k in range(len(pairs)) for i in (2 * k, 2 * k + 1, 2 * k + 1, 2 * k)]
    secs = _run_secs(funcs, order, target, device, builder_timeout, runner_timeout, ms.runner.EvaluatorConfig(
        number=3, repeat=3, min_repeat_ms=20, enable_cpu_cache_flush=False))
    med = {i: round(statistics.median(v) * 1e3, 5) for i, v in secs.items()}
    return [(med.get(2 * k), med.get(2 * k + 1)) for k in range(len(pairs))]


def _same_code(a: Any, b: Any) -> bool:
    """Whether two PrimFuncs have the same parameters and body, whatever their attributes (a seeded record that
    won is the rules' schedule again)."""
    import tvm
    import tvm_ffi

    def bare(f: Any) -> Any:
        return tvm.tirx.PrimFunc(f.params, f.body, f.ret_type)

    return bool(tvm_ffi.structural_equal(bare(a), bare(b), map_free_vars=True))


def _mean_ms(run_secs: Any) -> float:
    values = [float(v) for v in run_secs]
    return round(sum(values) / len(values) * 1e3, 5)


def _check_runnable_here(target: Any, device: Device) -> None:
    if target.kind.name != "llvm":
        raise LatbenchError(f"tvm-tuned times candidates on this machine, which has no {target.kind.name} device; "
                            f"use backend 'tvm' for {device.name}")
    triple = str(target.attrs.get("mtriple", "") or "")
    here = platform.machine().lower()
    arch = triple.split("-")[0] if triple else here
    same = arch == here or {arch, here} <= {"x86_64", "amd64"} or {arch, here} <= {"aarch64", "arm64"}
    if not same:
        raise LatbenchError(f"tvm-tuned times candidates on this machine ({here}), but {device.name} is {arch}; "
                            "tune on a machine of that architecture or use backend 'tvm'")


@register_backend
class TunedTVM(TVMBackend):
    """MetaSchedule-tuned TVM with a per-op trial budget and a per-target tuning database."""

    name = "tvm-tuned"
    description = "TVM + MetaSchedule tuning (per-op trial budget; records reused per target)"

    def __init__(self, trials_per_op: int = 64, db_dir: str | Path | None = None,
                 trials_per_iter: int = 32, builder_timeout: float = 240.0, runner_timeout: float = 60.0,
                 seed: bool = True) -> None:
        if int(trials_per_op) < 1:
            raise LatbenchError(f"tvm-tuned: trials_per_op must be >= 1, got {trials_per_op!r}")
        self.trials_per_op = int(trials_per_op)
        self.db_dir = db_dir
        self.trials_per_iter = int(trials_per_iter)
        self.builder_timeout = float(builder_timeout)
        self.runner_timeout = float(runner_timeout)
        self.seed_rules = bool(seed)

    def check_available(self) -> None:
        try:
            import xgboost  # noqa: F401  MetaSchedule's cost model
        except ImportError:
            raise LatbenchError("tvm-tuned needs xgboost (pip install xgboost)") from None

    def settings(self) -> dict[str, Any]:
        return {"trials_per_op": self.trials_per_op, "seed": self.seed_rules}

    def database(self, target: Any) -> Any:
        """The JSON tuning database of ``target`` (created on first use)."""
        from tvm.s_tir import meta_schedule as ms

        d = tuning_db_dir(target, self.db_dir)
        d.mkdir(parents=True, exist_ok=True)
        # Opening the database parses every record's trace, and a seeded one may tensorize with this intrinsic.
        deinterleave_intrin(vector_lanes(target))
        (d / "target.json").write_text(json.dumps(target.export(), sort_keys=True, default=str, indent=1))
        return ms.database.JSONDatabase(work_dir=str(d))

    def lower(self, mod: Any, target: Any, device: Device) -> tuple[Any, dict[str, Any]]:
        import tvm
        from tvm import relax
        from tvm.s_tir import meta_schedule as ms

        _check_runnable_here(target, device)
        if "num-cores" not in target.attrs:  # MetaSchedule requires it for CPU targets
            target = tvm.target.Target({**target.export(), "num-cores": device.threads})
        fused = prepare(mod, target)
        db = self.database(target)
        tasks = ms.relax_integration.extract_tasks(fused, target)
        # A task whose workload is in the database was tuned before (with this or another budget,
        # for this or another device of the target): it is not tuned again, even if no candidate won.
        todo = [t for t in tasks if not db.has_workload(t.dispatched[0])]
        notes: dict[str, Any] = {"tasks": len(tasks), "tuned_tasks": len(todo),
                                 "db": str(tuning_db_dir(target, self.db_dir)), "tune_s": 0.0}
        seeds: list[tuple[Any, Any]] = []
        if todo:
            t0 = time.perf_counter()
            import_cpu_tensor_intrin()
            if self.seed_rules:
                seeds, notes["seeds"] = self.seed(todo, db, target, device)
            work = tuning_db_dir(target, self.db_dir) / "logs"
            ctxs, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(todo, str(work), num_threads=1)
            per_iter = max(1, min(self.trials_per_iter, self.trials_per_op))
            with _env("TVM_NUM_THREADS", str(device.threads)):
                ms.tune.tune_tasks(
                    tasks=ctxs, task_weights=weights, work_dir=str(work),
                    max_trials_global=self.trials_per_op, max_trials_per_task=self.trials_per_op,
                    num_trials_per_iter=per_iter, database=db,
                    builder=ms.builder.LocalBuilder(timeout_sec=int(self.builder_timeout), f_build=cpu_build),
                    runner=ms.runner.LocalRunner(timeout_sec=int(self.runner_timeout)),
                )
            for t in todo:  # tasks the budget did not reach count as done too
                db.commit_workload(t.dispatched[0])
            notes["tune_s"] = round(time.perf_counter() - t0, 2)
        for (workload, trace), note in zip(seeds, notes.get("seeds", [])):
            (top,) = db.get_top_k(db.commit_workload(workload), 1)
            note["best"] = "rules" if str(top.trace) == str(trace) else "tuned"
            note["best_ms"] = _mean_ms(top.run_secs)
        with target, db, tvm.transform.PassContext(opt_level=3):
            tuned = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(fused)
        # Functions without a record (untunable, or every candidate failed) get latbench's rules below.
        untuned = {gv.name_hint for gv, f in tuned.functions.items()
                   if isinstance(f, tvm.tirx.PrimFunc) and not f.attrs.get("tirx.is_scheduled", False)}
        notes["untuned_funcs"] = sorted(untuned)
        tuned, notes["vs_rules"] = self.keep_the_faster(fused, tuned, untuned, target, device)
        # Every function whose rules' schedule won, and every one without a record, is scheduled by the rules in
        # the whole module: there the constant weights they read are packed (a function alone keeps its layouts).
        for gv in fused.functions:
            if any(n["func"] == gv.name_hint and n["kept"] == "rules" for n in notes["vs_rules"]):
                tuned[gv] = fused[gv]
        tuned, rule_notes = apply_rules(tuned, target)
        notes["packed_weights"] = rule_notes["packed_weights"]
        if rule_notes["fallbacks"]:
            notes["fallbacks"] = rule_notes["fallbacks"]
        return tuned, notes

    def seed(self, tasks: list[Any], db: Any, target: Any, device: Device) -> tuple[list[tuple[Any, Any]],
                                                                                   list[dict[str, Any]]]:
        """Seed the tuning of ``tasks`` with latbench's rules: each task's rules' schedule (:func:`rule_schedule`,
        without the weight packing and the prefetches, which are not schedule primitives) is timed as tuning times
        its candidates and committed to ``db`` as a tuning record before tuning starts. MetaSchedule's evolutionary
        search draws part of its first population from the database's best records, and the database's best record
        is what is applied, so a tuned function is never one slower than the rules' when both were timed here.
        Returns the seeds (workload, trace) and a note per seeded task (``rules_ms``; after tuning ``lower`` adds
        ``best`` = ``rules``/``tuned`` and ``best_ms``)."""
        from tvm.s_tir import meta_schedule as ms

        found: list[tuple[Any, Any, Any, str]] = []  # (task, workload, schedule, rule)
        for task in tasks:
            workload = task.dispatched[0]
            for use_pointwise in (True, False):
                try:
                    sch, rule, _ = rule_schedule(workload["main"], target, use_pointwise=use_pointwise)
                except Exception:  # noqa: BLE001 - a rule does not apply: the generic conv rule, then no seed
                    continue
                if rule != "none":
                    found.append((task, workload, sch, rule))
                break
        secs = _run_secs([sch.mod["main"] for _, _, sch, _ in found], list(range(len(found))), target, device,
                         self.builder_timeout, self.runner_timeout) if found else {}
        seeds, notes = [], []
        for i, (task, workload, sch, rule) in enumerate(found):
            if i not in secs:  # did not build or run: not a seed
                continue
            db.commit_tuning_record(ms.database.TuningRecord(
                sch.trace, db.commit_workload(workload), secs[i], target,
                ms.arg_info.ArgInfo.from_prim_func(workload["main"])))
            seeds.append((workload, sch.trace))
            notes.append({"task": task.task_name, "rule": rule, "rules_ms": _mean_ms(secs[i])})
        return seeds, notes

    def keep_the_faster(self, fused: Any, tuned: Any, ruled: set[str], target: Any,
                        device: Device) -> tuple[Any, list[dict[str, Any]]]:
        """``tvm-tuned`` is never slower than ``tvm`` on a function it tuned: each tuned PrimFunc is timed against
        the rules' schedule of the same function (MetaSchedule's own builder and runner, ``TVM_NUM_THREADS`` =
        the device's threads, tuned/rules/rules/tuned in one runner batch, medians) and the faster one is kept.
        The choice is recorded per (function, tuned schedule) in the database directory (``vs_rules.json``), so a
        rebuild from the database times nothing and picks the same; a tuning record that changes is compared
        again. Returns the module and one note per tuned function: times (ms), ``kept`` = ``tuned``/``rules``."""
        import tvm
        import tvm_ffi

        path = tuning_db_dir(target, self.db_dir) / "vs_rules.json"
        try:
            choices: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:  # a damaged record file: compare again
            choices = {}
        pending: list[tuple[Any, str, Any]] = []  # (function, record key, its rules' schedule or None)
        for gv, func in tuned.functions.items():
            if not isinstance(func, tvm.tirx.PrimFunc) or gv.name_hint in ruled or gv not in fused.functions:
                continue
            key = f"{device.threads}:{tvm_ffi.structural_hash(fused[gv])}:{tvm_ffi.structural_hash(func)}"
            rule_func = None
            if choices.get(key, {"kept": "rules"})["kept"] == "rules":  # scheduled only when it is to be timed or used
                try:
                    rule_mod, rule_notes = apply_rules(tvm.IRModule({gv: fused[gv]}), target)
                except Exception:  # noqa: BLE001 - no rule schedule to compare with: keep the tuned one
                    continue
                if gv.name_hint not in rule_notes["rules"]:
                    continue
                rule_func = rule_mod[gv]
                if key not in choices and _same_code(func, rule_func):  # a seed won: nothing to time
                    choices[key] = {"tuned_ms": None, "rules_ms": None, "kept": "rules", "same_code": True}
            pending.append((gv, key, rule_func))
        todo = [(gv, key, rule_func) for gv, key, rule_func in pending if key not in choices]
        if todo:
            timed = _time_pairs([(tuned[gv], r) for gv, _, r in todo], target, device, self.builder_timeout,
                                self.runner_timeout)
            for (_, key, _), (tuned_ms, rules_ms) in zip(todo, timed):
                if tuned_ms is None and rules_ms is None:  # nothing timed: keep the tuned one, compare next time
                    continue
                choices[key] = {"tuned_ms": tuned_ms, "rules_ms": rules_ms,
                                "kept": "rules" if rules_ms is not None and (tuned_ms is None or rules_ms < tuned_ms)
                                else "tuned"}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_sibling(path)  # two campaigns on one database never read a half-written file
            tmp.write_text(json.dumps(choices, indent=1, sort_keys=True))
            os.replace(tmp, path)
        timed_now = {key for _, key, _ in todo}
        out = []
        for gv, key, rule_func in pending:
            choice = choices.get(key, {"tuned_ms": None, "rules_ms": None, "kept": "tuned"})
            if choice["kept"] == "rules":
                tuned[gv] = rule_func
            out.append({"func": gv.name_hint, **choice, "timed_now": key in timed_now})
        return tuned, out
