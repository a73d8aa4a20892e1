"""Real CUDA builds on a machine without a GPU (sm_90 fatbins for an H100 built here).

Without ``libcuda.so.1`` TVM cannot load ``libtvm_runtime_cuda.so``, and its CUDA codegen then
silently produces a *source-only* module (CUDA C, no cubin) that no GPU host can run. The way
through (``../shared/notes/tvm-0.27.md``):

1. a stub ``libcuda.so.1`` defining the ``cu*`` driver symbols TVM's CUDA runtime imports, built
   once with ``gcc`` into ``$LATBENCH_CACHE/cuda-stub/`` (never used to run anything);
2. nvcc compile mode (``TVM_CUDA_COMPILE_MODE=nvcc``, nvcc on ``PATH``);
3. ``tvm.compile`` inside ``with target:`` (else "No CUDA architecture was specified").

The dynamic loader reads ``LD_LIBRARY_PATH`` only at process start, so the compile runs in a child
process (``python -m latbench.backends.cuda``) that gets the lowered Relax module as JSON. The
parent then refuses a library without a GPU binary (:func:`check_gpu_binary`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from latbench.devices import Device
from latbench.errors import LatbenchError
from latbench.files import temp_sibling
from latbench.settings import cache_root

log = logging.getLogger(__name__)

#: Driver symbols of TVM 0.27's libtvm_runtime_cuda.so (used when ``nm`` is not available).
DRIVER_SYMBOLS = ("cuDeviceGetName", "cuFuncSetAttribute", "cuGetErrorName", "cuGetErrorString",
                  "cuLaunchKernelEx", "cuModuleGetFunction", "cuModuleLoadData", "cuModuleUnload",
                  "cuTensorMapEncodeTiled")
FATBIN_MAGIC = b"\x50\xed\x55\xba"  # 0xBA55ED50, little-endian, starts every fatbin
NVCC_CANDIDATES = ("/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc")
BUILD_TIMEOUT_S = 900


def find_nvcc() -> str:
    """Path of nvcc (``$PATH``, ``$CUDA_HOME/bin``, ``/usr/local/cuda/bin``, ``/usr/local/bin``)."""
    cands = [shutil.which("nvcc")]
    if os.environ.get("CUDA_HOME"):
        cands.append(str(Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"))
    cands += list(NVCC_CANDIDATES)
    for c in cands:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    raise LatbenchError("nvcc not found (needed to build CUDA binaries): install the CUDA toolkit "
                        "or put nvcc on PATH / set CUDA_HOME")


def _tvm_lib_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.origin:
        raise LatbenchError("apache-tvm is not installed (pip install apache-tvm)")
    return Path(spec.origin).parent / "lib"


def driver_symbols() -> list[str]:
    """The ``cu*`` symbols TVM's CUDA runtime imports from libcuda (read with ``nm``)."""
    lib = _tvm_lib_dir() / "libtvm_runtime_cuda.so"
    nm = shutil.which("nm")
    if nm and lib.exists():
        out = subprocess.run([nm, "-D", "--undefined-only", str(lib)], capture_output=True, text=True).stdout
        syms = sorted({m.group(1) for m in re.finditer(r"\bU (cu[A-Z]\w*)", out)})
        if syms:
            return syms
    return list(DRIVER_SYMBOLS)


def stub_libcuda(cache: Path | None = None) -> Path:
    """Directory holding a stub ``libcuda.so.1`` (built with gcc once, then reused)."""
    syms = driver_symbols()
    tag = hashlib.sha256(" ".join(syms).encode()).hexdigest()[:12]  # a new TVM may import other symbols
    d = (cache or cache_root()) / "cuda-stub" / tag
    so = d / "libcuda.so.1"
    if so.exists():
        return d
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise LatbenchError("gcc not found: it builds the libcuda stub that CUDA compilation needs here "
                            "(apt-get install gcc)")
    d.mkdir(parents=True, exist_ok=True)
    src = d / "stub.c"
    # Every driver call fails (999 = CUDA_ERROR_UNKNOWN): the stub only satisfies the loader.
    src.write_text("".join(f"int {s}(void) {{ return 999; }}\n" for s in syms))
    tmp = d / f"libcuda.so.1.{os.getpid()}"
    r = subprocess.run([gcc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(src)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise LatbenchError(f"building the libcuda stub failed: {r.stderr.strip().splitlines()[-1:]}")
    tmp.replace(so)
    return d


def cuda_build_env(cache: Path | None = None) -> dict[str, str]:
    """Environment of the compile child: stub driver on LD_LIBRARY_PATH, nvcc mode, nvcc on PATH."""
    env = dict(os.environ)
    nvcc = Path(find_nvcc())
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [str(stub_libcuda(cache)), str(nvcc.parent.parent / "lib64")] +
        [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    env["PATH"] = os.pathsep.join([str(nvcc.parent), env.get("PATH", "")])
    env.setdefault("CUDA_HOME", str(nvcc.parent.parent))
    env["TVM_CUDA_COMPILE_MODE"] = "nvcc"
    return env


def gpu_arch(target: Any) -> str:
    """``sm_XX`` of a CUDA target dict / tag / Target."""
    import tvm

    t = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    arch = str(t.attrs.get("arch", "") or "")
    if not arch:
        raise LatbenchError(f"CUDA target {target!r} has no arch; use a tag such as 'nvidia/nvidia-h100' "
                            "or {kind: cuda, arch: sm_90}")
    return arch


def check_gpu_binary(path: str | Path, arch: str | None = None) -> dict[str, Any]:
    """Check that the library ``path`` embeds a fatbin with device code (for ``arch``, e.g. ``sm_90a``).

    Raises :class:`LatbenchError` for a source-only library (CUDA C, no cubin) or a wrong arch.
    Returns the facts found: fatbin count, cubin ELF sections, the arches.
    """
    data = Path(path).read_bytes()
    n_fatbin = data.count(FATBIN_MAGIC)
    arches = sorted({m.decode() for m in re.findall(rb"sm_\d+a?", data)})
    has_cubin = n_fatbin > 0 and (b".nv.info" in data or b".text." in data)  # an uncompressed cubin ELF
    if n_fatbin == 0 or not has_cubin:
        hint = " (it embeds CUDA source only)" if b"__global__" in data or b"extern \"C\"" in data else ""
        raise LatbenchError(f"{path}: no GPU binary (fatbin/cubin) in the library{hint}; refusing a source-only "
                            "CUDA library; build with latbench's CUDA path (nvcc + libcuda stub)")
    if arch:
        base = arch.rstrip("a")
        if not any(a.rstrip("a") == base for a in arches):
            raise LatbenchError(f"{path}: GPU binary is for {', '.join(arches) or 'an unknown arch'}, not {arch}")
    return {"fatbins": n_fatbin, "gpu_arches": arches, "lib_bytes": len(data)}


def compile_cuda_library(mod: Any, device: Device, path: Path, timeout: float = BUILD_TIMEOUT_S) -> dict[str, Any]:
    """Compile a (lowered) Relax module for the CUDA ``device`` into ``path`` in a child process.

    The library is written atomically and only if it contains a GPU binary.
    """
    import tvm

    arch = gpu_arch(device.resolved_target())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    env = cuda_build_env()
    with tempfile.TemporaryDirectory(prefix="latbench-cuda-") as tmpd:
        mod_json = Path(tmpd) / "mod.json"
        mod_json.write_text(tvm.ir.save_json(mod))
        spec = {"target": device.resolved_target(), "host": device.host_target}
        out = Path(tmpd) / "lib.so"
        cmd = [sys.executable, "-m", "latbench.backends.cuda", str(mod_json), json.dumps(spec), str(out)]
        t0 = time.perf_counter()
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LatbenchError(f"CUDA build for {device.name} took longer than {timeout:.0f} s") from None
        if r.returncode != 0:
            lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
            why = lines[-1] if lines else f"rc {r.returncode}"
            raise LatbenchError(f"CUDA build for {device.name} failed: {why}")
        facts = check_gpu_binary(out, arch)
        tmp = temp_sibling(path, ".tmp.so")
        shutil.copyfile(out, tmp)
        tmp.replace(path)
    facts.update(cuda_compile_s=round(time.perf_counter() - t0, 3), cuda_arch=arch)
    return facts


def _child(mod_json: str, spec_json: str, out: str) -> None:
    """Child side: load the module, compile under the target with nvcc, export the library."""
    import tvm
    import tvm.support.nvcc  # noqa: F401  registers the nvcc compile callback

    spec = json.loads(spec_json)
    target = (tvm.target.Target(spec["target"], host=spec["host"]) if spec.get("host")
              else tvm.target.Target(spec["target"]))
    mod = tvm.ir.load_json(Path(mod_json).read_text())
    with target:
        try:
            ex = tvm.compile(mod, target=target)
        except AssertionError:
            # A default dlight rule asserts on some shapes (MBConvs on a 1x1 feature map): retry with the
            # same pipeline but fewer rules, ending with Fallback only (slower, still a GPU binary).
            ex = None
            for rules in (("Matmul", "Reduction", "GeneralReduction", "Fallback"), ("Fallback",)):
                try:
                    ex = tvm.compile(mod, target=target, relax_pipeline=_cuda_pipeline(target, rules))
                    break
                except AssertionError:
                    continue
            if ex is None:
                raise
    ex.export_library(out)


def _cuda_pipeline(target: Any, rules: tuple[str, ...]) -> Any:
    """TVM's default CUDA Relax pipeline with only the given dlight rules."""
    import tvm
    from tvm.relax.backend.cuda import pipeline as cp
    from tvm.s_tir import dlight as dl

    legalize = [p for p in cp.legalize_passes(target)[:-1]]
    legalize.append(dl.ApplyDefaultSchedule(*(getattr(dl.gpu, r)() for r in rules)))
    seq = tvm.transform.Sequential([*cp.library_dispatch_passes(target), *legalize,
                                    *cp.dataflow_lower_passes(target), *cp.finalize_passes(target)])

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod: Any, _ctx: Any) -> Any:
        return seq(mod)

    return _pipeline


if __name__ == "__main__":
    _child(*sys.argv[1:4])
