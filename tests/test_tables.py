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
