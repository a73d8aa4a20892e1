"""Tables: every row durable on append, consolidation to Parquet, resume bookkeeping."""
from __future__ import annotations

import pandas as pd
import pytest

from latbench.tables import TableError, TableStore, read_table, table_path


def test_rows_survive_without_consolidation(tmp_path):
    path = table_path(tmp_path, "dev", "tvm")
    store = TableStore(path)
    store.append({"key": "a", "status": "ok", "median_ms": 1.5, "host_facts": {"cpu": "x"}})
    # a new process (e.g. after a crash) sees the row before any consolidation
    again = TableStore(path)
    assert again.done_keys() == {"a"}
    df = again.consolidate()
    assert path.exists() and not again.journal.exists()
    assert pd.read_parquet(path)["median_ms"].tolist() == [1.5] == df["median_ms"].tolist()


def test_torn_last_line_is_ignored(tmp_path):
    store = TableStore(table_path(tmp_path, "dev", "tvm"))
    store.append({"key": "a", "status": "ok", "median_ms": 1.0})
    with store.journal.open("a") as f:
        f.write('{"key": "b", "status": "o')  # the process died mid-write
    assert store.done_keys() == {"a"}
    assert len(store.consolidate()) == 1


def test_error_rows_do_not_erase_good_ones(tmp_path):
    store = TableStore(table_path(tmp_path, "dev", "tvm"))
    store.append({"key": "a", "status": "ok", "median_ms": 1.0})
    store.consolidate()
    store.append({"key": "a", "status": "error", "error": "boom", "median_ms": None})
    store.append({"key": "b", "status": "error", "error": "boom", "median_ms": None})
    store.append({"key": "b", "status": "ok", "median_ms": 2.0})
    df = store.consolidate().set_index("key")
    assert df.loc["a", "median_ms"] == 1.0 and df.loc["b", "status"] == "ok" and len(df) == 2


def test_unwritable_directory_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(TableError, match="cannot write tables to .*choose another --out"):
        TableStore(blocker / "dev" / "ops-tvm.parquet")


def test_missing_and_corrupt_tables(tmp_path):
    with pytest.raises(TableError, match="does not exist"):
        read_table(tmp_path / "none.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(TableError, match="cannot read table"):
        read_table(bad)


def test_rows_of_other_code_are_stale_and_old_visits_not_counted(tmp_path):
    from latbench.tables import code_difference, code_id

    store = TableStore(table_path(tmp_path, "dev", "tvm"))
    code = {"backend": "tvm", "target": '{"kind": "llvm", "mcpu": "znver4"}',
            "backend_settings": '{"rules_version": 8}', "num_threads": 2}
    store.append({"key": "same", "status": "ok", "median_ms": 1.0, **code})
    store.append({"key": "rules", "status": "ok", "median_ms": 1.0, **code, "backend_settings": '{"rules_version": 7}'})
    store.append({"key": "cpu", "status": "ok", "median_ms": 1.0, **code,
                  "target": '{"kind": "llvm", "mcpu": "znver3"}'})
    store.append({"key": "unknown", "status": "ok", "median_ms": 1.0, "backend": "tvm"})  # an older latbench's row
    store.consolidate()  # Parquet turns num_threads into a float column (NaN where unknown): still the same code
    assert store.done_keys(code) == {"same"} and store.done_keys() == {"same", "rules", "cpu", "unknown"}
    assert store.stale_keys(code) == {"rules": "backend_settings rules_version 7 → 8",
                                      "cpu": "target mcpu znver3 → znver4",
                                      "unknown": "target not recorded → {'kind': 'llvm', 'mcpu': 'znver4'}; "
                                                 "backend_settings not recorded → {'rules_version': 8}; "
                                                 "num_threads not recorded → 2"}
    # a field the campaign does not know (an artifact set built before settings were recorded) is not compared
    assert code_difference({"backend_settings": '{"rules_version": 7}', **{k: code[k] for k in ("backend", "target")},
                            "num_threads": 2.0}, {**code, "backend_settings": None}) is None
    assert code_id(code) == code_id({**code, "num_threads": 2.0, "backend_settings": '{ "rules_version":8 }'})
    assert code_id(code) != code_id({**code, "num_threads": 4})
    # an interrupted campaign of other code: its visits are not counted, and stay in the journal
    store.append_visit("a", {"median_ms": 1.0, "round": 1, "code": code_id(code)})
    store.append_visit("a", {"median_ms": 9.0, "round": 1, "code": "older"})
    store.append_visit("b", {"median_ms": 9.0, "round": 1})
    assert [v["median_ms"] for v in store.pending_visits(code_id(code))["a"]] == [1.0]
    assert set(store.pending_visits(code_id(code))) == {"a"} and len(store.pending_visits()["a"]) == 2


def test_a_directory_of_tables_leaves_the_visits_tables_out(tmp_path):
    """``<table>.visits.parquet`` (one row per visit) sits beside its table; reading the directory (what
    ``fit-predictor``, ``table show`` and the report do) must not take its visits for rows."""
    from latbench.tables import table_paths

    store = TableStore(table_path(tmp_path, "dev", "tvm"))
    store.append({"key": "a", "status": "ok", "median_ms": 1.0})
    for r in range(3):
        store.append_visit("a", {"median_ms": 1.0 + r, "round": r + 1})
    store.consolidate()
    store.fold_visits({"a"})
    assert store.visits_path.exists()
    assert table_paths(tmp_path) == [store.path]
    df = read_table(tmp_path)
    assert df["key"].tolist() == ["a"] and df["median_ms"].tolist() == [1.0]


def _open_many(path, n):
    for _ in range(n):
        TableStore(path)


def test_processes_open_one_table_at_once(tmp_path):
    """Two campaigns open one table at the same moment (the second is then refused by the device lock):
    opening checks the directory is writable with a probe file of its own, so neither fails on the other's."""
    import multiprocessing

    path = table_path(tmp_path, "dev", "tvm")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_open_many, args=(path, 300)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert list(path.parent.iterdir()) == []  # no probe left behind
