"""The in-process engine reads and rewrites only the data files a batch can touch."""

from __future__ import annotations

import datetime as dt

from demo.dms_writer import cdc_file_name, load_file_name, write_dms_file
from tests.lakehelpers import make_lake

COLUMNS = [("region", "string"), ("id", "long"), ("val", "long")]
SOURCE = """
source: pr
tables:
  - name: facts
    schema: app
    primary_key: [{keys}]
    write: copy_on_write  # the files a batch rewrites are what these tests count
    partition_by: [{{column: region, transform: identity}}]
    columns: [{{name: region, type: string}}, {{name: id, type: long}}, {{name: val, type: long}}]
"""


def _load(lake, regions: int, per: int):
    rows = [{"region": f"r{r}", "id": r * 1000 + i, "val": 0} for r in range(regions) for i in range(per)]
    write_dms_file(lake.landing / "pr" / "app" / "facts" / load_file_name(1), rows, COLUMNS, cdc=False)
    lake.ingest()


def test_key_range_pruning_scans_only_files_whose_range_holds_a_key(tmp_path):
    lake = make_lake(tmp_path, {"pr": SOURCE.format(keys="id")})  # region not in the key: no partition pruning
    _load(lake, regions=5, per=50)
    assert len(list(lake.env.catalog.load_table("pr.facts").scan().plan_files())) == 5
    write_dms_file(lake.landing / "pr" / "app" / "facts" / cdc_file_name(dt.datetime(2026, 11, 21, 10)),
                   [{"Op": "U", "region": "r2", "id": 2007, "val": 1}], COLUMNS, cdc=True)
    _, results = lake.ingest()
    r = results["pr.facts"].results[0]
    assert (r.files_in_table, r.files_read) == (5, 1)
    assert (r.updated, r.files_rewritten) == (1, 1)
    rows = {x["id"]: x["val"] for x in lake.rows("pr.facts")}
    assert rows[2007] == 1 and sum(rows.values()) == 1 and len(rows) == 250


def test_partition_pruning_when_partition_columns_are_in_the_key(tmp_path):
    lake = make_lake(tmp_path, {"pr": SOURCE.format(keys="id, region")})  # ranges on id cannot prune
    # the same ids in every region: key ranges overlap, only partitions can prune
    rows = [{"region": f"r{r}", "id": i, "val": 0} for r in range(4) for i in range(30)]
    write_dms_file(lake.landing / "pr" / "app" / "facts" / load_file_name(1), rows, COLUMNS, cdc=False)
    lake.ingest()
    write_dms_file(lake.landing / "pr" / "app" / "facts" / cdc_file_name(dt.datetime(2026, 11, 21, 10)),
                   [{"Op": "D", "region": "r1", "id": 3, "val": 0}, {"Op": "I", "region": "r3", "id": 99, "val": 5}],
                   COLUMNS, cdc=True)
    _, results = lake.ingest()
    r = results["pr.facts"].results[0]
    # ids 3 and 99 fall in every file's id range; only the partitions (r1, r3) leave two files of four.
    assert (r.files_in_table, r.files_read) == (4, 2)
    assert (r.deleted, r.inserted, r.files_rewritten) == (1, 1, 1)
    got = {(x["region"], x["id"]) for x in lake.rows("pr.facts")}
    assert ("r1", 3) not in got and ("r3", 99) in got and len(got) == 120


def test_columns_named_like_duckdbs_own_do_not_confuse_the_lookup(tmp_path):
    """DuckDB's reader adds `filename` and `file_row_number`; a table with such columns still has its
    replaced rows found (no update turned into a second row of the key)."""
    cols = [("id", "long"), ("filename", "string"), ("file_row_number", "long")]
    source = """
source: dn
tables:
  - name: docs
    schema: app
    primary_key: [id]
    write: merge_on_read
    columns: [{name: id, type: long}, {name: filename, type: string}, {name: file_row_number, type: long}]
"""
    lake = make_lake(tmp_path, {"dn": source})
    folder = lake.landing / "dn" / "app" / "docs"
    write_dms_file(folder / load_file_name(1), [{"id": i, "filename": f"f{i}", "file_row_number": 0} for i in range(20)],
                   cols, cdc=False)
    lake.ingest()
    write_dms_file(folder / cdc_file_name(dt.datetime(2026, 11, 21, 10)),
                   [{"Op": "U", "id": 3, "filename": "new", "file_row_number": 7}, {"Op": "D", "id": 4, "filename": "", "file_row_number": 0}],
                   cols, cdc=True)
    _, results = lake.ingest()
    r = results["dn.docs"].results[0]
    assert (r.inserted, r.updated, r.deleted) == (0, 1, 1)
    rows = {x["id"]: (x["filename"], x["file_row_number"]) for x in lake.rows("dn.docs")}
    assert len(rows) == 19 and rows[3] == ("new", 7) and 4 not in rows


def test_a_lake_under_a_path_with_glob_characters_merges(tmp_path):
    """DuckDB's read_parquet takes [ * ? as patterns; a lake in such a folder still finds its rows."""
    lake = make_lake(tmp_path / "lakes[1]", {"pr": SOURCE.format(keys="id")})
    _load(lake, regions=2, per=10)
    write_dms_file(lake.landing / "pr" / "app" / "facts" / cdc_file_name(dt.datetime(2026, 11, 21, 10)),
                   [{"Op": "U", "region": "r1", "id": 1003, "val": 5}], COLUMNS, cdc=True)
    _, results = lake.ingest()
    assert results["pr.facts"].results[0].updated == 1
    rows = {x["id"]: x["val"] for x in lake.rows("pr.facts")}
    assert len(rows) == 20 and rows[1003] == 5


def test_a_data_file_keeps_one_delete_file_however_many_merges_delete_from_it(tmp_path):
    """Merge-on-read replaces a data file's delete file with one holding all its deleted positions
    (as Iceberg v3's deletion vectors are), so a reader opens one delete file per data file."""
    from demo.dms_writer import cdc_file_name, load_file_name, write_dms_file
    from tests.lakehelpers import make_lake

    lake = make_lake(tmp_path, {"shop": """
source: shop
tables:
  - name: items
    schema: app
    primary_key: [id]
    write: merge_on_read
    columns: [{name: id, type: long}, {name: v, type: long}]
"""})
    folder = lake.landing / "shop" / "app" / "items"
    cols = [("id", "long"), ("v", "long")]
    write_dms_file(folder / load_file_name(1), [{"id": i, "v": 0} for i in range(100)], cols, cdc=False)
    lake.ingest()
    t0 = dt.datetime(2026, 11, 21, 10)
    for k in range(6):
        write_dms_file(folder / cdc_file_name(t0 + dt.timedelta(minutes=k)), [{"Op": "D", "id": 10 * k, "v": 0},
                                                                             {"Op": "U", "id": 10 * k + 1, "v": k}], cols, cdc=True)
        lake.ingest()
    tasks = list(lake.env.catalog.load_table("shop.items").scan().plan_files())
    loaded = [t for t in tasks if t.file.record_count == 100]
    assert len(loaded) == 1 and len(loaded[0].delete_files) == 1  # one, not six
    assert next(iter(loaded[0].delete_files)).record_count == 12  # six deletes and six updated rows
    rows = {r["id"]: r["v"] for r in lake.rows("shop.items")}
    assert len(rows) == 94 and all(rows[10 * k + 1] == k for k in range(6)) and 0 not in rows and 50 not in rows
