"""latbench's environment variables, one function each, read at call time (so a test or a user can
change them while a process runs).

Every ``LATBENCH_*`` variable the package reads is here, except in the two files shipped alone to
boards (:mod:`latbench.board`: ``runtime.py``, used by ``board_server.py`` and ``runtime_timer.py``),
which imports nothing from latbench and reads ``$LATBENCH_TVM_RUNTIME`` itself.

=========================== =========================================================================
``LATBENCH_CACHE``          artifact cache root (default ``~/.cache/latbench``): :func:`cache_root`
``LATBENCH_DEVICE_CONFIGS`` extra directories of device YAMLs, ``:``-separated: :func:`device_config_dirs`
``LATBENCH_SHARED``         shared reference data (default ``<checkout>/../shared``): :func:`shared_dir_override`
``LATBENCH_RUNTIME_ONLY``   ``1``: never import the TVM compiler, time with the runtime only: :func:`runtime_only`
``LATBENCH_TVM_RUNTIME``    directory of ``libtvm_runtime.so`` for the runtime-only timer: :func:`tvm_runtime_dir`
``LATBENCH_FASHION_MNIST``  directory of the Fashion-MNIST idx files: :func:`fashion_mnist_dir`
=========================== =========================================================================
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE = "LATBENCH_CACHE"
DEVICE_CONFIGS = "LATBENCH_DEVICE_CONFIGS"
SHARED = "LATBENCH_SHARED"
RUNTIME_ONLY = "LATBENCH_RUNTIME_ONLY"
TVM_RUNTIME = "LATBENCH_TVM_RUNTIME"
FASHION_MNIST = "LATBENCH_FASHION_MNIST"


def _get(name: str) -> str | None:
    """The variable's value, ``None`` when unset or empty."""
    return os.environ.get(name) or None


def cache_root() -> Path:
    """``$LATBENCH_CACHE`` or ``~/.cache/latbench``: the artifact cache, tuning databases, CUDA stubs,
    emulated boards' work directories."""
    env = _get(CACHE)
    return Path(env) if env else Path.home() / ".cache" / "latbench"


def device_config_dirs() -> list[Path]:
    """The directories in ``$LATBENCH_DEVICE_CONFIGS`` (``os.pathsep``-separated; empty when unset), looked
    up before ``./device_configs`` and the packaged configs."""
    return [Path(p) for p in (_get(DEVICE_CONFIGS) or "").split(os.pathsep) if p]


def shared_dir_override() -> Path | None:
    """``$LATBENCH_SHARED`` (expanded, absolute) or ``None``: see :func:`latbench.paths.shared_dir`."""
    env = _get(SHARED)
    return Path(env).expanduser().resolve() if env else None


def runtime_only() -> bool:
    """True when ``$LATBENCH_RUNTIME_ONLY`` is set to anything but ``0``: time prebuilt artifacts with
    the TVM runtime alone, without importing the compiler."""
    return (_get(RUNTIME_ONLY) or "0") != "0"


def tvm_runtime_dir() -> Path | None:
    """``$LATBENCH_TVM_RUNTIME``: the directory holding ``libtvm_runtime.so`` (``None`` when unset)."""
    env = _get(TVM_RUNTIME)
    return Path(env) if env else None


def fashion_mnist_dir() -> Path | None:
    """``$LATBENCH_FASHION_MNIST``: the Fashion-MNIST idx files for the search (``None``: Debian's)."""
    env = _get(FASHION_MNIST)
    return Path(env) if env else None
