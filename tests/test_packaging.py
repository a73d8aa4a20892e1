"""The wheel works outside the checkout: package data (device configs, the arm sysroot script) ships in it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (the checkout stays clean), installed into a bare directory."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in ("latbench", "predictors", "search"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp / "dist").glob("latbench-*.whl")
    subprocess.run(pip + ["install", "--no-deps", "--no-index", "--target", str(tmp / "site"), str(wheel)],
                   check=True, capture_output=True, timeout=120)
    shutil.rmtree(src)  # nothing of the sources is left to be found by accident
    return tmp / "site"


def run_installed(site: Path, *args: str) -> subprocess.CompletedProcess:
    """``python ARGS`` from ``/`` with the installed wheel first on the path (before the editable checkout,
    whose dependencies it shares), without ``$LATBENCH_DEVICE_CONFIGS``."""
    env = {k: v for k, v in os.environ.items() if k != "LATBENCH_DEVICE_CONFIGS"}
    env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, "-P", *args], cwd="/", env=env, capture_output=True, text=True,
                          timeout=120)


def test_wheel_is_what_runs(installed):
    res = run_installed(installed, "-c", "import latbench, predictors, search; "
                        "print(latbench.__file__); print(predictors.__file__); print(search.__file__)")
    assert res.returncode == 0, res.stderr
    for line in res.stdout.split():
        assert Path(line).is_relative_to(installed), line
    res = run_installed(installed, "-c", "from latbench.boards.emulated import setup_script; "
                        "p = setup_script(); print(p, p.is_file())")
    assert res.returncode == 0, res.stderr
    path, exists = res.stdout.split()
    assert Path(path).is_relative_to(installed) and exists == "True"


def test_installed_cli_lists_packaged_devices_and_ops(installed):
    res = run_installed(installed, "-m", "latbench", "devices", "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert {"rasp4", "rasp4-qemu", "h100", "x86-server", "local-cpu"} <= set(rows)
    for name in ("rasp4", "rasp4-qemu", "h100", "x86-server"):
        assert "error" not in rows[name], rows[name]
        assert Path(rows[name]["file"]).is_relative_to(installed), rows[name]["file"]
    res = run_installed(installed, "-m", "latbench", "ops")
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.splitlines()) == 72


def test_installed_wheel_ships_the_nasbench201_order(installed, tmp_path):
    """The NAS-Bench-201 index ↔ string order is package data: the wheel resolves indices with an empty
    shared directory."""
    env_shared = tmp_path / "empty-shared"
    env_shared.mkdir()
    os.environ["LATBENCH_SHARED"], old = str(env_shared), os.environ.get("LATBENCH_SHARED")
    try:
        res = run_installed(installed, "-c", "import latbench.nasbench201 as n; print(n.ORDER_FILE); "
                            "print(n.nb201_resolve(1462)[1])")
    finally:
        if old is None:
            del os.environ["LATBENCH_SHARED"]
        else:
            os.environ["LATBENCH_SHARED"] = old
    assert res.returncode == 0, res.stderr
    path, arch = res.stdout.split()
    assert Path(path).is_relative_to(installed) and arch.count("nor_conv_3x3") == 6
