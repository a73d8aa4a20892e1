"""Shared fixtures: a fast local device, a session-wide artifact cache, a CLI runner."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# Tests never touch the user's cache or device configs.
os.environ.setdefault("LATBENCH_CACHE",
                      str(Path(os.environ.get("TMPDIR", "/tmp")) / f"latbench-test-cache-{os.getuid()}"))

#: Short visits, and exactly 3 interleaved rounds (no extra visits for noisy items): tests check behaviour; the
#: method's accuracy is measured by benchmarks/repeatability.py.
FAST_TIMING = {"number": 1, "repeat": 5, "min_repeat_ms": 2, "warmup": 1, "op_timeout": 60, "rounds": 3,
               "max_visits": 3}


def write_device(directory: Path, name: str, **fields) -> Path:
    """Write a device YAML (local CPU with fast timing unless overridden) and return its path."""
    d = {"name": name, "target": {"kind": "llvm", "mcpu": "native"}, "num_threads": 1,
         "rpc": {"mode": "local"}, "timing": dict(FAST_TIMING)}
    d.update(fields)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One artifact cache for the whole session, so each small op compiles once."""
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def fast_device(tmp_path_factory) -> Path:
    """A local-CPU device YAML with short timing settings."""
    return write_device(tmp_path_factory.mktemp("devices"), "fast-cpu")


@pytest.fixture(scope="session")
def small_ops():
    """A few cheap ops of the space at resolution 32 (stem, feature mix, logits, three MBConvs)."""
    from latbench.space import Space

    ops = Space(resolution=32).distinct_ops()
    mb = [o for o in ops if o.kind == "expanded_conv"]
    return [o for o in ops if o.kind != "expanded_conv"] + [mb[0], mb[5], mb[-1]]


@pytest.fixture
def cli(capsys):
    """Run the latbench CLI in-process: returns (exit code, stdout, stderr)."""
    from latbench.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def latbench_cmd(*args: str) -> list[str]:
    """The command line to run latbench in a subprocess with this interpreter."""
    return [sys.executable, "-m", "latbench.cli", *map(str, args)]
