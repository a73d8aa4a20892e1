"""The ``tvm-tuned`` backend: MetaSchedule tuning with a tuning-record database shared per target.

Each op is legalized and fused exactly as for the ``tvm`` backend (BN decomposed, ``zero``
pipeline); its PrimFuncs become MetaSchedule tasks. Tasks already in the database (same
PrimFunc, same target) are not tuned again, so a second campaign, or another device with the same
target, tunes nothing. The database is a MetaSchedule JSON database in
``$LATBENCH_CACHE/tuning/<target hash>/`` (override with ``db_dir``).

Candidates are built with ``LocalBuilder(timeout_sec=240)`` (TVM 0.27's popen workers spend
30-40 s importing tensor intrinsics; the default 30 s timeout never finishes a build) and timed
on *this* machine with ``TVM_NUM_THREADS`` set to the device's thread count. Tuning therefore
needs a target this machine can run: a CPU target of this architecture. Functions that no tuning
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
from latbench.backends.tvm_schedules import apply_rules, prepare
from latbench.devices import Device
from latbench.errors import LatbenchError
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


def _time_pairs(pairs: list[tuple[Any, Any]], target: Any, device: Device, builder_timeout: float,
                runner_timeout: float) -> list[tuple[float | None, float | None]]:
    """Median ms of each (tuned, rules) pair of PrimFuncs, timed interleaved (A B B A) by MetaSchedule's local
    builder and runner with the device's thread count; None for a side that failed to build or run."""
    import statistics

    import tvm
    from tvm.s_tir import meta_schedule as ms

    funcs = [f for pair in pairs for f in pair]
    mods = [tvm.IRModule({"main": f.with_attr("global_symbol", "main")}) for f in funcs]
    builder = ms.builder.LocalBuilder(timeout_sec=int(builder_timeout), f_build=cpu_build)
    built = builder.build([ms.builder.BuilderInput(m, target) for m in mods])
    for b in built:
        if b.error_msg is not None:
            log.warning("tvm-tuned: building a schedule to compare failed: %s",
                        str(b.error_msg).strip().splitlines()[-1][:200])
    with _env("TVM_NUM_THREADS", str(device.threads)):
        runner = ms.runner.LocalRunner(timeout_sec=int(runner_timeout), evaluator_config=ms.runner.EvaluatorConfig(
            number=3, repeat=3, min_repeat_ms=20, enable_cpu_cache_flush=False))
        order = [i for k in range(len(pairs)) for i in (2 * k, 2 * k + 1, 2 * k + 1, 2 * k)]
        inputs = [ms.runner.RunnerInput(built[i].artifact_path, "cpu", ms.arg_info.ArgInfo.from_prim_func(funcs[i]))
                  for i in order if built[i].error_msg is None]
        done = [f.result() for f in runner.run(inputs)]
    secs: dict[int, list[float]] = {}
    it = iter(done)
    for i in order:
        if built[i].error_msg is not None:
            continue
        res = next(it)
        if res.error_msg is None:
            secs.setdefault(i, []).extend(float(v) for v in res.run_secs)
        else:
            log.warning("tvm-tuned: timing %s failed: %s", "the rules' schedule" if i % 2 else "the tuned schedule",
                        str(res.error_msg).strip().splitlines()[-1][:200])
    for b in built:
        if b.artifact_path:
            with contextlib.suppress(OSError):
                Path(b.artifact_path).unlink()
    med = {i: round(statistics.median(v) * 1e3, 5) for i, v in secs.items()}
    return [(med.get(2 * k), med.get(2 * k + 1)) for k in range(len(pairs))]


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
                 trials_per_iter: int = 32, builder_timeout: float = 240.0, runner_timeout: float = 60.0) -> None:
        if int(trials_per_op) < 1:
            raise LatbenchError(f"tvm-tuned: trials_per_op must be >= 1, got {trials_per_op!r}")
        self.trials_per_op = int(trials_per_op)
        self.db_dir = db_dir
        self.trials_per_iter = int(trials_per_iter)
        self.builder_timeout = float(builder_timeout)
        self.runner_timeout = float(runner_timeout)

    def check_available(self) -> None:
        try:
            import xgboost  # noqa: F401  MetaSchedule's cost model
        except ImportError:
            raise LatbenchError("tvm-tuned needs xgboost (pip install xgboost)") from None

    def settings(self) -> dict[str, Any]:
        return {"trials_per_op": self.trials_per_op}

    def database(self, target: Any) -> Any:
        """The JSON tuning database of ``target`` (created on first use)."""
        from tvm.s_tir import meta_schedule as ms

        d = tuning_db_dir(target, self.db_dir)
        d.mkdir(parents=True, exist_ok=True)
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
        if todo:
            t0 = time.perf_counter()
            import_cpu_tensor_intrin()
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
        with target, db, tvm.transform.PassContext(opt_level=3):
            tuned = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(fused)
        # Functions without a record (untunable, or every candidate failed) get latbench's rules.
        tuned, rule_notes = apply_rules(tuned, target)
        notes["untuned_funcs"] = sorted(rule_notes["rules"])
        if rule_notes["fallbacks"]:
            notes["fallbacks"] = rule_notes["fallbacks"]
        tuned, notes["vs_rules"] = self.keep_the_faster(fused, tuned, set(rule_notes["rules"]), target, device)
        return tuned, notes

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
            path.write_text(json.dumps(choices, indent=1, sort_keys=True))
        timed_now = {key for _, key, _ in todo}
        out = []
        for gv, key, rule_func in pending:
            choice = choices.get(key, {"tuned_ms": None, "rules_ms": None, "kept": "tuned"})
            if choice["kept"] == "rules":
                tuned[gv] = rule_func
            out.append({"func": gv.name_hint, **choice, "timed_now": key in timed_now})
        return tuned, out
