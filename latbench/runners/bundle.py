"""A runtime-only bundle for a board: TVM's runtime + ``tvm_ffi`` + latbench's board server and timer.

A board needs no TVM install (259 MB of compiler): ``libtvm_runtime.so`` + ``libtvm_runtime_extra.so``
and the ``tvm_ffi`` package (about 8 MB) run compiled artifacts, and :mod:`latbench.board.board_server`
serves TVM's RPC protocol on top of them. The scripts are the files of :mod:`latbench.board`, copied to
the bundle's root. Layout of a bundle directory::

    bundle.json          arch, versions, files, how to run
    lib/                 libtvm_runtime.so, libtvm_runtime_extra.so (+ libtvm_runtime_cuda.so for CUDA)
    site/                tvm_ffi/ (+ typing_extensions.py), put first on sys.path by the scripts
    board_server.py      TVM RPC server (tracker or direct), no `import tvm`
    runtime_timer.py     times an artifact set locally, no `import tvm`
    timing.py            the timing core both use (calibration, runs, statistics, output check)
    conditions.py        the board's load, clock, governor, temperature, throttling (`latbench.conditions`)
    runtime.py           finds and loads TVM's runtime libraries (both scripts use it)
    tracker_protocol.py  TVM's tracker wire protocol (the server registers with a tracker through it)

For the machine's own architecture the files come from the local install; for aarch64 they come
from the aarch64 wheels of the same versions, downloaded once with pip into
``<cache>/wheels/aarch64`` (``--platform manylinux..._aarch64 --only-binary=:all: --no-deps``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

from latbench.artifacts import default_cache_dir
from latbench.devices import Device
from latbench.errors import ConfigError, LatbenchError
from latbench.files import temp_sibling

log = logging.getLogger(__name__)

RUNTIME_LIBS = ("libtvm_runtime.so", "libtvm_runtime_extra.so")
CUDA_LIB = "libtvm_runtime_cuda.so"
#: Parts of the tvm_ffi package a board does not need (headers, sources, Cython, build files).
FFI_SKIP = ("include", "src", "3rdparty", "cython", "share", "cmake", "__pycache__")
#: Where the files shipped to a board live (:mod:`latbench.board`), and those a bundle holds at its root.
BOARD_DIR = Path(__file__).resolve().parent.parent / "board"
SCRIPTS = ("board_server.py", "runtime_timer.py", "timing.py", "conditions.py", "runtime.py", "tracker_protocol.py")
#: pip platform tags tried for aarch64 wheels (tvm: manylinux_2_27/2_28, tvm-ffi: manylinux_2_24/2_28).
AARCH64_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_24_aarch64",
                     "manylinux2014_aarch64")


def versions() -> dict[str, str]:
    """The TVM and tvm-ffi versions installed here (the bundle matches them: same ABI, same artifacts)."""
    try:
        return {"apache-tvm": metadata.version("apache-tvm"), "apache-tvm-ffi": metadata.version("apache-tvm-ffi")}
    except metadata.PackageNotFoundError as exc:
        raise LatbenchError(f"{exc.name} is not installed here; a bundle copies its version") from None


def device_arch(device: Device) -> str:
    """The CPU architecture of the device's host: from the target's ``mtriple``, else this machine's."""
    t = device.target
    triple = t.get("mtriple", "") if isinstance(t, dict) else ""
    host = device.host_target
    if not triple and isinstance(host, dict):
        triple = host.get("mtriple", "")
    if not triple:
        return platform.machine()
    arch = triple.split("-")[0]
    if arch in ("aarch64", "arm64"):
        return "aarch64"
    if arch in ("x86_64", "amd64"):
        return "x86_64"
    raise ConfigError(f"{device.source}: field 'target.mtriple': latbench bundles exist for aarch64 and x86_64, "
                      f"got {triple!r}")


def wheel_dir(arch: str) -> Path:
    return default_cache_dir() / "wheels" / arch


def fetch_wheels(arch: str, python_version: str = "3.11", timeout: float = 900) -> dict[str, Path]:
    """The apache-tvm and apache-tvm-ffi wheels for ``arch`` (downloaded once with pip, then cached)."""
    vers = versions()
    dest = wheel_dir(arch)
    dest.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    for pkg, ver in vers.items():
        stem = pkg.replace("-", "_")
        hits = sorted(dest.glob(f"{stem}-{ver}-*{arch}*.whl"))
        if not hits:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--no-deps",
                   "--python-version", python_version, "-d", str(dest), f"{pkg}=={ver}"]
            for plat in AARCH64_PLATFORMS if arch == "aarch64" else (f"manylinux2014_{arch}",):
                cmd += ["--platform", plat]
            log.info("downloading the %s wheel of %s==%s (once; cached in %s)", arch, pkg, ver, dest)
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise LatbenchError(f"pip download of {pkg}=={ver} for {arch} took more than {timeout:g} s") from None
            hits = sorted(dest.glob(f"{stem}-{ver}-*{arch}*.whl"))
            if res.returncode != 0 or not hits:
                last = (res.stderr.strip().splitlines() or ["no output"])[-1]
                raise LatbenchError(f"cannot download the {arch} wheel of {pkg}=={ver} with pip: {last} "
                                    f"(put it in {dest} by hand on an offline machine)")
        found[pkg] = hits[-1]
    return found


def _skip_ffi(rel: str) -> bool:
    parts = rel.split("/")
    return len(parts) > 1 and parts[1] in FFI_SKIP or rel.endswith((".pyx", ".pxi", ".pxd", ".h", ".cc"))


def _from_wheels(wheels: dict[str, Path], out: Path, cuda: bool) -> None:
    libs = RUNTIME_LIBS + ((CUDA_LIB,) if cuda else ())
    with zipfile.ZipFile(wheels["apache-tvm"]) as z:
        names = set(z.namelist())
        for lib in libs:
            member = f"tvm/lib/{lib}"
            if member not in names:
                raise LatbenchError(f"{wheels['apache-tvm'].name} has no {member}")
            (out / "lib" / lib).write_bytes(z.read(member))
    with zipfile.ZipFile(wheels["apache-tvm-ffi"]) as z:
        for info in z.infolist():
            if info.filename.startswith("tvm_ffi/") and not info.is_dir() and not _skip_ffi(info.filename):
                dst = out / "site" / info.filename
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(z.read(info))


def _from_local(out: Path, cuda: bool) -> None:
    import importlib.util

    tvm_spec = importlib.util.find_spec("tvm")  # locate, do not import (importing tvm takes seconds)
    ffi_spec = importlib.util.find_spec("tvm_ffi")
    if tvm_spec is None or ffi_spec is None:
        raise LatbenchError("apache-tvm / apache-tvm-ffi are not installed here; cannot bundle the local runtime")
    libdir = Path(tvm_spec.origin).parent / "lib"
    for lib in RUNTIME_LIBS + ((CUDA_LIB,) if cuda else ()):
        shutil.copy2(libdir / lib, out / "lib" / lib)
    ffi_root = Path(ffi_spec.origin).parent
    for src in ffi_root.rglob("*"):
        rel = "tvm_ffi/" + src.relative_to(ffi_root).as_posix()
        if src.is_file() and not _skip_ffi(rel):
            dst = out / "site" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def build_bundle(device: Device, out: str | Path, python_version: str = "3.11") -> Path:
    """Assemble the runtime-only bundle for ``device`` into ``out`` (replaced if it exists)."""
    arch = device_arch(device)
    out = Path(out)
    if out.exists():
        if not (out / "bundle.json").exists() and any(out.iterdir()):
            raise LatbenchError(f"{out} exists and is not a latbench bundle; choose an empty or new directory")
        shutil.rmtree(out)
    (out / "lib").mkdir(parents=True)
    (out / "site").mkdir()
    cuda = device.is_cuda
    if arch == platform.machine():
        _from_local(out, cuda)
    else:
        _from_wheels(fetch_wheels(arch, python_version), out, cuda)
    try:  # tvm_ffi imports typing_extensions on some paths; it is pure Python, any copy works
        import typing_extensions

        shutil.copy2(typing_extensions.__file__, out / "site" / "typing_extensions.py")
    except ImportError:
        pass
    for script in SCRIPTS:
        shutil.copy2(BOARD_DIR / script, out / script)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    size = sum((out / f).stat().st_size for f in files)
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.encode())
        digest.update((out / f).read_bytes())
    meta: dict[str, Any] = {
        "format": 1, "arch": arch, "device": device.name, "cuda": cuda, **versions(),
        "python": python_version if arch != platform.machine() else platform.python_version(),
        "size_mb": round(size / 2**20, 2), "sha256": digest.hexdigest(), "files": files,
        "usage": {"server": "python3 board_server.py --port 9090 [--host 127.0.0.1] [--tracker HOST:PORT --key KEY]",
                  "timer": "python3 runtime_timer.py ARTIFACT_DIR --out results.jsonl"},
    }
    (out / "bundle.json").write_text(json.dumps(meta, indent=1))
    _precompile(out, meta["python"])
    log.info("bundle for %s (%s): %.1f MB in %s", device.name, arch, meta["size_mb"], out)
    return out


def _precompile(out: Path, py: str) -> None:
    """Write .pyc files when this interpreter matches the board's (an emulated Python cannot write them)."""
    if ".".join(py.split(".")[:2]) != f"{sys.version_info[0]}.{sys.version_info[1]}":
        return
    import compileall

    compileall.compile_dir(str(out / "site"), quiet=1, workers=1)


def bundle_info(path: str | Path) -> dict[str, Any]:
    """The ``bundle.json`` of a bundle directory (clear error when it is not one)."""
    p = Path(path) / "bundle.json"
    if not p.exists():
        raise LatbenchError(f"{path} is not a latbench bundle (no bundle.json); make one with `latbench bundle`")
    return json.loads(p.read_text())


def cached_bundle(device: Device) -> Path:
    """A bundle for the device's architecture in the cache (built on first use, reused while versions match)."""
    arch = device_arch(device)
    v = versions()
    tag = f"{arch}-tvm{v['apache-tvm']}-ffi{v['apache-tvm-ffi']}" + ("-cuda" if device.is_cuda else "")
    path = default_cache_dir() / "bundles" / tag
    fresh = (path / "bundle.json").exists() and all(
        (path / s).exists() and (path / s).read_bytes() == (BOARD_DIR / s).read_bytes() for s in SCRIPTS)
    if not fresh:
        tmp = temp_sibling(path)  # its own: two campaigns may build the same bundle at once
        build_bundle(device, tmp)
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        try:
            tmp.rename(path)
        except OSError:  # another process put its (identical) bundle there first
            shutil.rmtree(tmp, ignore_errors=True)
    return path
