"""Find and load TVM's runtime alone: ``tvm_ffi`` (the bundle's ``site/`` first) + ``libtvm_runtime*.so``.

Shared by ``board_server.py`` and ``runtime_timer.py``; standard library only (shipped in the bundle).
The runtime is looked up in ``$LATBENCH_TVM_RUNTIME``, the bundle's ``lib/``, then an installed
``tvm/lib``. Errors are :class:`RuntimeError` with a message meant for the user.
"""
from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path
from typing import Any

RUNTIME_LIBS = ("libtvm_runtime.so", "libtvm_runtime_extra.so")
CUDA_LIB = "libtvm_runtime_cuda.so"


def find_runtime_dir() -> Path:
    """Where libtvm_runtime.so is: $LATBENCH_TVM_RUNTIME, the bundle's lib/, or an installed tvm/lib."""
    here = Path(__file__).resolve().parent
    cands = [os.environ.get("LATBENCH_TVM_RUNTIME"), here / "lib"]
    cands += [Path(p) / "tvm" / "lib" for p in sys.path if p]
    for c in cands:
        if c and (Path(c) / RUNTIME_LIBS[0]).is_file():
            return Path(c)
    raise RuntimeError("no TVM runtime found (libtvm_runtime.so); run from a latbench bundle (`latbench bundle`) "
                       "or set LATBENCH_TVM_RUNTIME to the directory holding it")


def load_runtime(cuda: bool = False) -> Any:
    """Import tvm_ffi (the bundle's site/ first) and load TVM's runtime libraries globally."""
    site = Path(__file__).resolve().parent / "site"
    if site.is_dir() and str(site) not in sys.path:
        meta = site.parent / "bundle.json"
        want = json.loads(meta.read_text()).get("python", "") if meta.is_file() else ""
        have = "%d.%d" % sys.version_info[:2]
        if want and ".".join(want.split(".")[:2]) != have:  # tvm_ffi's extension is built for one CPython
            raise RuntimeError("this bundle is for Python %s but this is Python %s; build one with "
                               "`latbench bundle --python-version %s`" % (want, have, have))
        sys.path.insert(0, str(site))
    try:
        import tvm_ffi
    except ImportError as exc:
        raise RuntimeError(f"cannot import tvm_ffi ({exc}); use a latbench bundle or "
                           "pip install apache-tvm-ffi") from None
    libdir = find_runtime_dir()
    for name in RUNTIME_LIBS + ((CUDA_LIB,) if cuda else ()):
        ctypes.CDLL(str(libdir / name), mode=ctypes.RTLD_GLOBAL)
    return tvm_ffi
