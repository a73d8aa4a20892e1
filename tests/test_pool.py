"""The device pool over a real TVM RPC tracker with real RPC servers (one killed mid-campaign)."""
from __future__ import annotations

import threading
import time

import pytest

from latbench.devices import device_from_dict
from latbench.errors import DeviceError
from latbench.runners.process import free_port
from latbench.runners.rpc import LocalRPCServer
from latbench.runners.tracker import LocalTracker
from remote_fixtures import x86_set  # noqa: F401  (fixture)

KEY = "pooltest"


def pool_device(port: int, key: str = KEY, connect_timeout: float = 5, **timing):
    t = {"number": 1, "repeat": 10, "min_repeat_ms": 30, "warmup": 1, "op_timeout": 60}
    t.update(timing)
    return device_from_dict({"name": "pooldev", "target": {"kind": "llvm", "mcpu": "native"}, "num_threads": 1,
                             "rpc": {"mode": "tracker", "host": "127.0.0.1", "port": port, "key": key,
                                     "connect_timeout": connect_timeout}, "timing": t}, "<test>")


@pytest.fixture(scope="module")
def tracker():
    with LocalTracker() as t:
        yield t


def start_servers(tracker: LocalTracker, n: int) -> list[LocalRPCServer]:
    servers = [LocalRPCServer(threads=1, tracker=tracker.address, key=KEY) for _ in range(n)]
    threads = [threading.Thread(target=s.start) for s in servers]  # each imports tvm: start them side by side
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return servers


def test_pool_survives_a_killed_server(tracker, x86_set, cli, tmp_path):
    import shutil

    from latbench.artifacts import Artifact, load_manifest
    from latbench.runners.base import Visit
    from latbench.runners.pool import PoolRunner

    _, entries = load_manifest(x86_set)
    items = [(e["key"], a) for e, a in entries]
    # Copies of the artifacts under extra keys: more ops than servers, so the pool has work after the kill.
    # (Copies, not the same directories: re-uploading a loaded library in one session crashes the server.)
    for i in range(3):
        for k, a in items[: len(entries)]:
            copy = Artifact(tmp_path / f"copy{i}-{a.root.name}")
            shutil.copytree(a.root, copy.root)
            items.append((f"{k}#copy{i}", copy))
    servers = start_servers(tracker, 2)
    try:
        addrs = tracker.wait_for_servers(KEY, 2, timeout=60)
        code, out, _ = cli("tracker", "status", "--port", tracker.port)
        assert code == 0 and KEY in out and all(a.split(":")[1] in out for a in addrs)
        victim = servers[0]
        victim_addr = f"127.0.0.1:{victim.port}"
        rows: list[tuple[str, dict]] = []
        killed = threading.Event()

        def record(key, res):  # called under the pool's lock
            rows.append((key, res))
            if not killed.is_set() and res.get("server") == victim_addr:
                killed.set()
                # Kill the victim shortly after its first row: it is then timing its next op.
                threading.Timer(0.15, victim.stop).start()

        with PoolRunner(pool_device(tracker.port)) as pool:
            pool.run([Visit(k, a) for k, a in items], lambda v, res: record(v.key, res))
        keys = [k for k, _ in rows]
        assert sorted(keys) == sorted(k for k, _ in items)  # every op exactly once: none lost, none twice
        assert killed.is_set() and not victim.alive()
        bad = [r for _, r in rows if r.get("status", "ok") != "ok"]
        assert not bad, bad
        servers_seen = {r["server"] for _, r in rows}
        assert servers_seen == set(addrs)  # spread over both; each row names its server
        assert pool.stats["requeued"] >= 1  # the victim's op in flight went to the survivor
        first_victim_row = next(i for i, (_, r) in enumerate(rows) if r["server"] == victim_addr)
        late = [r for _, r in rows[first_victim_row + 1:] if r["server"] == victim_addr]
        assert len(late) <= 1  # at most an op that finished in the 0.15 s before the kill
    finally:
        for s in servers:
            s.stop()


def test_tracker_without_server_for_key_fails_fast(tracker):
    from latbench.runners.pool import PoolRunner, request_server

    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="no server with key 'nobody'"):
        with PoolRunner(pool_device(tracker.port, key="nobody", connect_timeout=3)):
            pass
    assert time.monotonic() - t0 < 3 + 4  # the connect timeout, plus slack for a loaded machine
    # The raw tracker request (TVM's own blocks forever) gives up after the timeout.
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="no free 'nobody' server"):
        request_server("127.0.0.1", tracker.port, "nobody", timeout=1.5)
    assert time.monotonic() - t0 < 4


def test_tracker_down_is_one_line(cli):
    port = free_port()
    code, _, err = cli("tracker", "status", "--port", port)
    assert code != 0 and f"no RPC tracker at 127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(DeviceError, match="no RPC tracker"):
        from latbench.runners.pool import PoolRunner

        with PoolRunner(pool_device(port)):
            pass
