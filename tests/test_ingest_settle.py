"""The one-shot ingest command waits, once, for files still being written instead of leaving them."""

from __future__ import annotations

import os

from demo.dms_writer import load_file_name, write_dms_file
from lake_assets.definitions import build_definitions
from lake_assets.ingest import ingest
from tests.lakehelpers import make_lake

SOURCE = """
source: shop
tables:
  - name: orders
    schema: app
    primary_key: [id]
    columns: [{name: id, type: long}, {name: total, type: long}]
"""


def test_a_file_landing_just_before_ingest_is_merged_after_it_settles(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKE_HOME", str(tmp_path))
    lake = make_lake(tmp_path, {"shop": SOURCE})
    path = write_dms_file(lake.landing / "shop/app/orders" / load_file_name(1), [{"id": 1, "total": 5}],
                          [("id", "long"), ("total", "long")], cdc=False)
    defs = build_definitions(lake.registry, with_dbt=False)
    os.utime(path)  # still being written as the command starts
    out = ingest(lake.env, defs, lake.registry, settle_seconds=2.0)
    assert out.arrivals.recorded == {"shop.orders": 1} and out.arrivals.settling == 0
    assert [(r["id"], r["total"]) for r in lake.rows("shop.orders")] == [(1, 5)]
