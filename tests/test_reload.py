"""A full reload replaces the table, also after commits the lake did not make (compaction, maintenance)."""

from __future__ import annotations

from demo.dms_writer import load_file_name, write_dms_file
from tests.lakehelpers import make_lake

COLS = [("id", "long"), ("v", "long")]
SOURCE = """
source: rl
tables:
  - name: items
    schema: app
    primary_key: [id]
    columns: [{name: id, type: long}, {name: v, type: long}]
"""


def test_reload_after_a_maintenance_commit_replaces_the_table(tmp_path):
    lake = make_lake(tmp_path, {"rl": SOURCE})
    folder = lake.landing / "rl" / "app" / "items"
    write_dms_file(folder / load_file_name(1), [{"id": i, "v": 1} for i in range(1, 5)], COLS, cdc=False)
    lake.ingest()
    # A rewrite by another writer (like Spark's rewrite_data_files): same rows, no lake properties.
    tbl = lake.env.catalog.load_table("rl.items")
    tbl.overwrite(tbl.scan().to_arrow())
    write_dms_file(folder / load_file_name(1), [{"id": i, "v": 2} for i in range(1, 3)], COLS, cdc=False)
    _, results = lake.ingest()
    assert results["rl.items"].results[0].reload
    assert sorted((r["id"], r["v"]) for r in lake.rows("rl.items")) == [(1, 2), (2, 2)]
