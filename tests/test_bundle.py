"""Build here, time there: aarch64 cross-compilation, the runtime-only bundle/timer, rasp4 without a board,
and the rasp4 path end to end under qemu (the aarch64 bundle's RPC server in an emulated Python);
``-m slow``: every op of the space, NEON-scheduled, checked against PyTorch under qemu."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import yaml

from latbench.backends.base import DEFAULT_BACKEND
from latbench.runners.process import free_port
from remote_fixtures import NO_TVM_PRELUDE, arm_set, x86_set, write_yaml  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parent.parent
EM_AARCH64, EM_X86_64 = 183, 62


def elf_machine(path: Path) -> tuple[int, int, int]:
    """(ELF class, ELF type, e_machine) of a shared object."""
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return head[4], int.from_bytes(head[16:18], "little"), int.from_bytes(head[18:20], "little")


def test_cross_compiled_artifacts_are_aarch64_elf(arm_set):
    manifest = json.loads((arm_set / "manifest.json").read_text())
    assert json.loads(manifest["target"])["mcpu"] == "cortex-a72"
    libs = [arm_set / e["path"] / "lib.so" for e in manifest["entries"] if e["status"] == "ok"]
    items = [e for e in manifest["entries"] if e.get("role") != "reference"]
    assert len(items) == 2 and len(libs) == len(manifest["entries"]) == 3  # + the reference op
    for lib in libs:
        assert elf_machine(lib) == (2, 3, EM_AARCH64)  # 64-bit, shared object (ET_DYN), ARM aarch64


def test_bundle_for_rasp4_is_aarch64_runtime_only(tmp_path, cli):
    code, out, err = cli("bundle", "--target", "rasp4", "--out", tmp_path / "b")
    if code != 0 and "cannot download" in err:
        pytest.skip(f"aarch64 wheels not downloadable here: {err.strip()}")
    assert code == 0, err
    info = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert info["arch"] == "aarch64" and info["apache-tvm"].startswith("0.27")
    assert info["size_mb"] < 20  # the runtime, not the 259 MB compiler
    for lib in ("lib/libtvm_runtime.so", "lib/libtvm_runtime_extra.so", "site/tvm_ffi/lib/libtvm_ffi.so"):
        assert elf_machine(tmp_path / "b" / lib)[2] == EM_AARCH64
    assert not list((tmp_path / "b").rglob("libtvm_compiler.so")) and not (tmp_path / "b" / "site" / "tvm").exists()
    assert (tmp_path / "b" / "board_server.py").exists() and (tmp_path / "b" / "runtime_timer.py").exists()


def test_runtime_timer_without_tvm(tmp_path, x86_set, cli):
    """The x86 bundle's timer and `latbench measure --artifacts` time CPU artifacts in processes where
    `import tvm` raises."""
    code, _, err = cli("bundle", "--target", "local-cpu", "--out", tmp_path / "b")
    assert code == 0, err
    out = tmp_path / "res.jsonl"
    script = NO_TVM_PRELUDE + (f"sys.argv = [{str(tmp_path / 'b' / 'runtime_timer.py')!r}, {str(x86_set)!r}, "
                               f"'--out', {str(out)!r}, '--repeat', '3', '--min-repeat-ms', '1']\n"
                               f"runpy.run_path(sys.argv[0], run_name='__main__')\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    manifest = json.loads((x86_set / "manifest.json").read_text())
    items = [e["key"] for e in manifest["entries"] if e.get("role") != "reference"]
    assert sorted(r["key"] for r in rows) == sorted(items)
    for r in rows:
        assert r["status"] == "ok" and r["median_ms"] > 0 and r["max_abs_err"] <= r["tolerance"]
    # Resume: a rerun times nothing new.
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and len(out.read_text().splitlines()) == len(rows)
    # The CLI falls back to the runtime-only timer when tvm cannot be imported.
    cli_script = NO_TVM_PRELUDE + (f"from latbench.cli import main\nsys.exit(main(['measure', '--artifacts', "
                                   f"{str(x86_set)!r}, '--out', {str(tmp_path / 'tables')!r}]))\n")
    res = subprocess.run([sys.executable, "-c", cli_script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    import pandas as pd

    df = pd.read_parquet(next((tmp_path / "tables").rglob("ops-*.parquet")))
    assert (df["runner"] == "runtime-only").all() and (df["status"] == "ok").all() and len(df) == len(rows)


def test_measure_rasp4_without_board_is_one_line(tmp_path, arm_set):
    """No tracker / no board: one line naming the address, the key and how to start the server; exit != 0."""
    dev = yaml.safe_load((ROOT / "latbench" / "device_configs" / "rasp4.yaml").read_text())
    dev["rpc"]["port"] = free_port()  # nothing listens there
    dev["rpc"]["connect_timeout"] = 3
    cfg = tmp_path / "configs"
    cfg.mkdir()
    write_yaml(cfg / "rasp4.yaml", dev)
    cache = arm_set  # already built: the same artifact ids
    res = subprocess.run([sys.executable, "-m", "latbench.cli", "measure", "--target", str(cfg / "rasp4.yaml"),
                          "-r", "32", "--limit", "1", "--out", str(tmp_path / "t"), "--cache", str(cache)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert f"127.0.0.1:{dev['rpc']['port']}" in lines[0] and "latbench tracker start" in lines[0]


def test_rasp4_qemu_end_to_end(tmp_path, cli, x86_set, arm_set):
    """`device start rasp4-qemu` (aarch64 bundle + tvm-free server under qemu, QEMU_CPU=cortex-a72), then
    `latbench measure --target rasp4-qemu`: cross-compiled cortex-a72 code timed through RPC, rows labelled
    emulated, outputs equal to the x86 build's."""
    if shutil.which("qemu-aarch64-static") is None:
        pytest.skip("qemu-user-static is not installed")
    from latbench.devices import get_device
    from latbench.errors import DeviceError
    from latbench.boards.emulated import ensure_arm_python

    try:
        ensure_arm_python()
    except DeviceError as exc:
        pytest.skip(f"no aarch64 Python sysroot for qemu: {exc}")
    dev = yaml.safe_load((ROOT / "latbench" / "device_configs" / "rasp4-qemu.yaml").read_text())
    port = free_port()
    dev["rpc"]["port"] = port
    dev["name"] = "rasp4-qemu-test"
    path = write_yaml(tmp_path / "rasp4-qemu-test.yaml", dev)
    code, out, err = cli("device", "start", path)
    assert code == 0, err
    try:
        code, out, err = cli("measure", "--target", path, "-r", "32", "--limit", "2", "--out", tmp_path / "t",
                             "--cache", arm_set)  # the rasp4 artifacts: same target, already cross-compiled
        assert code == 0, err
        import pandas as pd

        df = pd.read_parquet(tmp_path / "t" / "rasp4-qemu-test" / f"ops-{DEFAULT_BACKEND}.parquet")
        assert len(df) == 2 and (df["status"] == "ok").all()
        assert df["emulated"].all()  # labelled: emulation, not Pi speed
        assert (df["server"] == f"127.0.0.1:{port}").all()
        assert (df["max_abs_err"] <= df["tolerance"]).all()  # checked against PyTorch
        assert json.loads(df["target"].iloc[0])["mcpu"] == "cortex-a72"

        # The emulated aarch64 output equals the x86 build's output of the same op (same seeded weights).
        import tvm.rpc
        from tvm import relax

        from latbench.artifacts import load_manifest

        _, x86_entries = load_manifest(x86_set)
        x86 = {e["key"]: a for e, a in x86_entries}
        arm_libs = {json.loads((p.parent / "meta.json").read_text())["key"]: p.parent
                    for p in arm_set.rglob("lib.so")}
        key = next(k for k in df["key"] if k in x86 and k in arm_libs)
        from latbench.board.runtime_timer import ArtifactTimer

        timer = ArtifactTimer()
        xin = np.load(x86[key].input)
        y_x86 = timer.to_numpy(timer.load(x86[key].lib)["main"](timer.to_device(xin)))
        sess = tvm.rpc.connect("127.0.0.1", port, session_timeout=300)
        sess.upload(str(arm_libs[key] / "lib.so"), "check.so")
        rdev = sess.cpu(0)
        vm = relax.VirtualMachine(sess.load_module("check.so"), rdev)
        y_arm = vm["main"](tvm.runtime.tensor(np.load(arm_libs[key] / "input.npy"), rdev)).numpy()
        del vm, sess
        assert np.array_equal(np.load(arm_libs[key] / "input.npy"), xin)
        assert np.max(np.abs(y_arm - y_x86)) <= 1e-5 * (1 + np.max(np.abs(y_x86)))
        code, out, _ = cli("device", "info", path, "--json")
        facts = json.loads(out)
        assert facts["machine"] == "aarch64" and facts["emulated"] and facts["server"]["running"]
        assert "bundle" in (facts["tvm_runtime"] or "")
    finally:
        code, out, err = cli("device", "stop", path)
        assert code == 0, err
    assert get_device(str(path)).emulated


@pytest.mark.slow
@pytest.mark.parametrize("resolution,width", [(224, 1.0), (224, 0.75), (32, 1.0), (32, 0.75)])
def test_every_op_matches_pytorch_on_aarch64_under_qemu(tmp_path, cli, resolution, width):
    """Every distinct op of the space, scheduled by the NEON rules (4 lanes, no fallback) and cross-compiled for
    the Pi 4, runs under qemu (QEMU_CPU=cortex-a72, the bundle's runtime-only timer) and matches PyTorch's output
    as closely as the x86 sweep does (|err| <= 1e-5 x max(1, max |y|))."""
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ is not installed (apt-get install g++-aarch64-linux-gnu)")
    from latbench.boards.emulated import emulator_of
    from latbench.devices import get_device
    from latbench.errors import LatbenchError
    from latbench.runners.bundle import cached_bundle
    from latbench.space import Space

    emulator = emulator_of(get_device("rasp4-qemu"))  # the Pi 4 stand-in: its qemu, QEMU_CPU and aarch64 Python
    assert emulator is not None
    try:
        python = emulator.python_cmd()
        bundle = cached_bundle(get_device("rasp4"))
    except LatbenchError as exc:
        pytest.skip(f"no qemu, aarch64 Python or runtime bundle here: {exc}")
    out = tmp_path / "set"
    code, _, err = cli("compile", "--target", "rasp4", "-r", resolution, "-w", width, "--out", out)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    items = {e["key"]: out / e["path"] for e in manifest["entries"] if e.get("role") != "reference"}
    assert sorted(items) == sorted(op.key for op in Space(resolution, width).distinct_ops())
    assert all(e["status"] == "ok" for e in manifest["entries"])
    for d in items.values():
        build = json.loads((d / "meta.json").read_text())["build"]
        assert build["vector_lanes"] == 4 and build["rules"] and not build.get("fallbacks"), (d, build)
        assert elf_machine(d / "lib.so")[2] == EM_AARCH64
    res = subprocess.run([python, str(bundle / "runtime_timer.py"), str(out), "--out", str(tmp_path / "r.jsonl"),
                          "--repeat", "1", "--warmup", "0", "--min-repeat-ms", "0"],
                         capture_output=True, text=True, timeout=900,
                         env={"PATH": "/usr/bin:/bin", "QEMU_CPU": emulator.cpu})  # nothing of the x86 Python's
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {r["key"]: r for r in map(json.loads, (tmp_path / "r.jsonl").read_text().splitlines())}
    assert sorted(rows) == sorted(items)
    for key, row in rows.items():
        scale = max(1.0, float(np.abs(np.load(items[key] / "expected.npy")).max()))
        assert row["status"] == "ok" and row["max_abs_err"] <= 1e-5 * scale, (key, row)
