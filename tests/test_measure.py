"""The profile path end to end with real parts: TVM compiles, a real RPC server on loopback,
resume after a real kill, the artifact cache, and every bad-input case of the CLI."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import FAST_TIMING, latbench_cmd, write_device
from latbench.backends.base import DEFAULT_BACKEND as DEFAULT
from latbench.campaign import measure_ops
from latbench.errors import DeviceError
from latbench.runners.process import free_port
from latbench.runners.rpc import LocalRPCServer
from latbench.tables import table_path


def test_measure_small_ops_over_real_rpc(fast_device, cache_dir, small_ops, tmp_path):
    df = measure_ops(small_ops, str(fast_device), tmp_path, cache=cache_dir)
    assert len(df) == len(small_ops) and set(df["key"]) == {o.key for o in small_ops}
    assert (df["status"] == "ok").all(), df[["key", "error"]]
    assert (df["median_ms"] > 0).all() and (df["min_ms"] <= df["median_ms"]).all()
    assert (df["max_abs_err"] < df["tolerance"]).all()  # numerically checked against PyTorch
    assert df["server"].str.startswith("127.0.0.1:").all()
    row = df.iloc[0]
    assert row["device"] == "fast-cpu" and row["num_threads"] == 1 and row["repeat"] == FAST_TIMING["repeat"]
    assert json.loads(row["target"])["mcpu"] != "native"
    assert "apache-tvm" in json.loads(row["versions"]) and "cpu_model" in json.loads(row["host_facts"])
    # the table on disk is plain Parquet anyone can open
    on_disk = pd.read_parquet(table_path(tmp_path, "fast-cpu", DEFAULT))
    assert len(on_disk) == len(small_ops)


def test_rerun_hits_cache_and_measures_nothing(fast_device, cache_dir, small_ops, tmp_path, caplog):
    ops = small_ops[:3]
    first = measure_ops(ops, str(fast_device), tmp_path, cache=cache_dir)
    libs = sorted((Path(cache_dir) / DEFAULT).glob("*/lib.so"))
    mtimes = {p: p.stat().st_mtime_ns for p in libs}
    caplog.set_level("INFO", logger="latbench.campaign")
    second = measure_ops(ops, str(fast_device), tmp_path, cache=cache_dir)
    assert "0 to measure" in caplog.text
    pd.testing.assert_frame_equal(first.sort_values("key").reset_index(drop=True),
                                  second.sort_values("key").reset_index(drop=True))
    # a new table directory re-times but compiles nothing: libraries untouched
    caplog.clear()
    measure_ops(ops, str(fast_device), tmp_path / "other", cache=cache_dir)
    assert "building" not in caplog.text
    assert {p: p.stat().st_mtime_ns for p in libs} == mtimes


def test_rows_of_other_code_are_timed_again(cli, fast_device, cache_dir, small_ops, tmp_path, caplog):
    """A table from other code (an older latbench's rules, another thread count) is re-timed, not reused."""
    ops = small_ops[:2]
    first = measure_ops(ops, str(fast_device), tmp_path, cache=cache_dir).set_index("key")
    settings = json.loads(first["backend_settings"].iloc[0])
    assert first["code"].nunique() == 1
    path = table_path(tmp_path, "fast-cpu", DEFAULT)
    df = pd.read_parquet(path)
    old = df["key"] == ops[0].key  # as if an earlier latbench had written this row
    df.loc[old, "backend_settings"] = json.dumps({**settings, "rules_version": -1})
    df.loc[old, "median_ms"] = 999.0
    df.loc[old, "code"] = None  # an earlier latbench did not name the code
    df.to_parquet(path, index=False)
    assert "2 code versions in one table" in cli("table", "show", path)[1]
    caplog.set_level("INFO", logger="latbench.campaign")
    second = measure_ops(ops, str(fast_device), tmp_path, cache=cache_dir).set_index("key")
    assert "code versions" not in cli("table", "show", path)[1]
    assert "1 to measure, 1 already done" in caplog.text
    assert "1 of them were timed with other code (backend_settings rules_version -1 → " in caplog.text
    assert second.loc[ops[0].key, "median_ms"] != 999.0 and len(second) == 2
    assert json.loads(second.loc[ops[0].key, "backend_settings"]) == settings
    assert second.loc[ops[1].key, "timestamp"] == first.loc[ops[1].key, "timestamp"]  # the other row untouched
    # the same device with another thread count (part of the target too): every row is timed again
    two = write_device(tmp_path, "fast-cpu", num_threads=2)
    caplog.clear()
    third = measure_ops(ops, str(two), tmp_path, cache=cache_dir)
    assert "2 to measure" in caplog.text and "(target num-cores 1 → 2; num_threads 1 → 2)" in caplog.text
    assert (third["num_threads"] == 2).all() and len(third) == 2 and third["code"].nunique() == 1
    assert third["code"].iloc[0] != first["code"].iloc[0]
    caplog.clear()
    measure_ops(ops, str(two), tmp_path, cache=cache_dir)
    assert "0 to measure" in caplog.text and "other code" not in caplog.text


def _visits(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")] if path.exists() else []


def test_resume_after_kill_loses_nothing(tmp_path, cache_dir, small_ops):
    """SIGKILL in round 3 of 4: the visits of rounds 1-2 are kept, a rerun takes only the missing ones."""
    dev = write_device(tmp_path, "slow-cpu", timing={**FAST_TIMING, "repeat": 8, "min_repeat_ms": 40, "rounds": 4,
                                                     "ci_target": 0.5, "max_visits": 8})
    out = tmp_path / "data"
    keys = [o.key for o in small_ops]
    args = ["measure", "--target", dev, "--out", out, "--cache", cache_dir]
    for k in keys:
        args += ["--op", k]
    visits = table_path(out, "slow-cpu", DEFAULT).with_name(f"ops-{DEFAULT}.visits.jsonl")
    proc = subprocess.Popen(latbench_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if len(_visits(visits)) >= 2 * len(keys) + 1:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.killpg(proc.pid, signal.SIGKILL)  # no cleanup of any kind runs
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = _visits(visits)
    assert 2 * len(keys) < len(before) < 4 * len(keys)
    assert {v["key"] for v in before} == set(keys) and not table_path(out, "slow-cpu", DEFAULT).exists()
    done = subprocess.run(latbench_cmd(*args, "-v"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resuming: {len(before)} visits of {len(keys)} items" in done.stderr
    df = pd.read_parquet(table_path(out, "slow-cpu", DEFAULT))
    assert sorted(df["key"]) == sorted(keys) and (df["status"] == "ok").all()  # every op once
    assert not visits.exists()  # folded into the visits table
    long = pd.read_parquet(visits.with_name(f"ops-{DEFAULT}.visits.parquet"))
    for k in keys:  # the visits taken before the kill are the first visits of each item, unchanged
        mine = long[long["key"] == k].sort_values("t")
        pre = [v for v in before if v["key"] == k]
        assert list(mine["t"][: len(pre)]) == [v["t"] for v in pre]
        assert list(mine["round"]) == list(range(1, len(mine) + 1))
        row = df.set_index("key").loc[k]
        assert row["n_visits"] == len(mine) >= 4 and len(row["visits_ms"]) == len(mine)
        assert list(row["visits_ms"]) == pytest.approx(list(mine["median_ms"]))


def test_dead_rpc_server_mid_campaign_keeps_visits(tmp_path, cache_dir, small_ops):
    server = LocalRPCServer(threads=1).start()
    try:
        dev = write_device(tmp_path, "direct-cpu", rpc={"mode": "direct", "host": "127.0.0.1",
                                                        "port": server.port, "connect_timeout": 5},
                           timing={**FAST_TIMING, "repeat": 10, "min_repeat_ms": 50, "rounds": 3})
        visits = table_path(tmp_path / "d", "direct-cpu", DEFAULT).with_name(f"ops-{DEFAULT}.visits.jsonl")

        def killer() -> None:
            while len(_visits(visits)) < 2:
                time.sleep(0.05)
            server.stop()

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        with pytest.raises(DeviceError, match="RPC|no TVM RPC server|link"):
            measure_ops(small_ops, str(dev), tmp_path / "d", cache=cache_dir)
        t.join(10)
        kept = _visits(visits)
        assert len(kept) >= 2 and all(v["median_ms"] > 0 for v in kept)
    finally:
        server.stop()


# -- bad input: one line, exit code != 0, no traceback -------------------------------------------
def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_cli_unknown_target(cli):
    code, _, err = cli("measure", "--target", "my-phone")
    assert code != 0 and "unknown target 'my-phone'" in _one_line(err)


def test_cli_malformed_yaml(cli, tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: bad\ntarget: [llvm\n")
    code, _, err = cli("measure", "--target", p)
    assert code != 0 and "malformed YAML" in _one_line(err) and str(p) in err


def test_cli_incomplete_yaml(cli, tmp_path):
    p = tmp_path / "half.yaml"
    p.write_text("name: half\nrpc: {mode: direct}\n")
    code, _, err = cli("measure", "--target", p)
    assert code != 0 and "missing field 'target'" in _one_line(err)


def test_cli_bad_op_key(cli):
    code, _, err = cli("measure", "--op", "expanded_conv-input:7x7-output:big")
    assert code != 0 and "op key" in _one_line(err).lower()


def test_cli_unwritable_out(cli, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    code, _, err = cli("measure", "--out", blocker, "--limit", "1")
    assert code != 0 and "cannot write tables" in _one_line(err)


def test_cli_busy_port(cli, tmp_path, cache_dir, small_ops):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        dev = write_device(tmp_path, "busy", rpc={"mode": "local", "port": port})
        code, _, err = cli("measure", "--target", dev, "--op", small_ops[0].key, "--out", tmp_path,
                           "--cache", cache_dir)
    assert code != 0 and f"port 127.0.0.1:{port} is busy" in _one_line(err)
    # nothing measured, nothing lost: the build error-free artifact is cached, no row claims success
    assert not table_path(tmp_path, "busy", DEFAULT).exists() or \
        (pd.read_parquet(table_path(tmp_path, "busy", DEFAULT))["status"] != "ok").all()


def test_cli_dead_server(cli, tmp_path, cache_dir, small_ops):
    dev = write_device(tmp_path, "gone", rpc={"mode": "direct", "host": "127.0.0.1", "port": free_port(),
                                              "connect_timeout": 2})
    code, _, err = cli("measure", "--target", dev, "--op", small_ops[0].key, "--out", tmp_path,
                       "--cache", cache_dir)
    assert code == 3 and "no TVM RPC server at 127.0.0.1" in _one_line(err)


def test_cli_help_and_ops(cli):
    code, out, _ = cli("ops", "--resolution", "224")
    assert code == 0 and len(out.split()) == 72
    with pytest.raises(SystemExit) as e:
        cli("measure", "--help")
    assert e.value.code == 0


def test_cli_table_show(cli, fast_device, cache_dir, small_ops, tmp_path):
    measure_ops(small_ops[:1], str(fast_device), tmp_path, cache=cache_dir)
    code, out, _ = cli("table", "show", table_path(tmp_path, "fast-cpu", DEFAULT))
    assert code == 0 and small_ops[0].key in out and "median_ms" in out


def test_one_campaign_at_a_time_per_device(fast_device, cache_dir, small_ops, tmp_path):
    from latbench.devices import get_device
    from latbench.runners.lock import device_lock

    with device_lock(get_device(str(fast_device))):
        with pytest.raises(DeviceError, match="busy: another latbench campaign"):
            measure_ops(small_ops[:1], str(fast_device), tmp_path, cache=cache_dir)
    assert (measure_ops(small_ops[:1], str(fast_device), tmp_path, cache=cache_dir)["status"] == "ok").all()


def test_cli_every_op_fails_one_summary_line(cli, tmp_path, small_ops):
    """A campaign in which every build fails ends in one line: the reference op's failure, or (without a
    reference) the errors counted by kind; exit != 0, no traceback."""
    dev = write_device(tmp_path, "nokind", target={"kind": "nosuchkind"})
    args = ["measure", "--target", dev, "--op", small_ops[0].key, "--op", small_ops[1].key,
            "--out", tmp_path, "--cache", tmp_path / "cache", "--workers", "1"]
    code, _, err = cli(*args)
    assert code == 2 and "the reference op" in _one_line(err) and "--no-reference" in err
    code, out, err = cli(*args, "--no-reference")
    assert code == 1 and "Traceback" not in err, (out, err)
    assert "0 ops measured on nokind (2 errors)" in out
    kinds = [line for line in err.splitlines() if line.startswith("errors by kind: ")]
    assert len(kinds) == 1 and kinds[0].startswith("errors by kind: 2 build: "), err  # both alike: one kind
