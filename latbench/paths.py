"""Where latbench finds things outside the repository: the shared data directory.

Published tables (e.g. the HELP NAS-Bench-201 latencies) live beside every checkout in
``<project root>/../shared``. One setting moves them: the environment variable
``LATBENCH_SHARED``, so a user can point every command and test at their own copy.
"""
from __future__ import annotations

from pathlib import Path

from latbench import settings

#: The environment variable that overrides :func:`shared_dir`.
SHARED_ENV = settings.SHARED

#: Path of the published HELP NAS-Bench-201 latency table, relative to :func:`shared_dir`.
HELP_NB201_CSV = Path("data") / "help-nasbench201" / "latency_ms.csv.gz"


def project_root() -> Path:
    """The directory holding the ``latbench`` package: the checkout's root (in an installed wheel,
    site-packages — so only defaults for a checkout, like ``../shared``, are derived from it)."""
    return Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """The shared data directory: ``$LATBENCH_SHARED``, else ``<project root>/../shared``."""
    env = settings.shared_dir_override()
    if env is not None:
        return env
    return (project_root() / ".." / "shared").resolve()


def help_nb201_csv() -> Path:
    """The published HELP NAS-Bench-201 latency table (may not exist; callers check)."""
    return shared_dir() / HELP_NB201_CSV
