"""The Dagster layer: asset specs from the registry, landing assets upstream of every table, the
landing sensor (named jobs, observations, freshness), checks that run alone, merges with nothing to do,
failed files that fail a check, and isolated table failures."""

from __future__ import annotations

import json

from dagster import AssetKey, AssetObservation, DagsterInstance, build_sensor_context, materialize
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from demo.dms_writer import cdc_file_name, load_file_name, write_dms_file, write_raw
from lake_assets.definitions import build_definitions
from lake_assets.sensors import build_landing_sensor
from resources.lake import LakeResource
from tests.lakehelpers import make_lake

TWO_TABLES = """
source: shop
defaults: {refresh: on_arrival, owners: [team@example.com]}
tables:
  - name: orders
    schema: app
    primary_key: [order_id]
    columns: [{name: order_id, type: long}, {name: total, type: double}]
  - name: refunds
    schema: app
    primary_key: [refund_id]
    refresh: "*/10 * * * *"
    columns: [{name: refund_id, type: long}, {name: amount, type: double}]
"""


def test_asset_specs_follow_the_registry(tmp_path):
    lake = make_lake(tmp_path, {"shop": TWO_TABLES}, builtin=True)
    defs = build_definitions(lake.registry, with_dbt=False)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"source_aligned/shop/orders", "source_aligned/shop/refunds", "source_aligned/travel/bookings"} <= keys
    node = graph.get(AssetKey(["source_aligned", "shop", "orders"]))
    assert node.group_name == "shop"
    assert "iceberg" in node.kinds
    assert node.pools == {"merge_shop"}  # one merge op per source, serialized by its pool
    assert {c.name for c in node.check_keys} == {"unique_primary_key", "ledger_reconciled", "quarantine_rate", "freshness", "table_health"}
    assert node.parent_keys == {AssetKey(["landing", "shop", "orders"])}
    landing = graph.get(AssetKey(["landing", "shop", "orders"]))
    assert landing.is_observable and not landing.is_materializable and landing.group_name == "shop"
    # refunds' refresh, and every source's maintenance at its default time (03:00 daily)
    assert sorted(s.name for s in defs.schedules) == ["maintain_loyalty_0_3", "maintain_shop_0_3", "maintain_travel_0_3",
                                                      "refresh_shop_10"]
    assert {j.name for j in defs.jobs} == {f"{kind}_{source}" for kind in ("ingest", "maintain") for source in ("shop", "travel", "loyalty")}


def test_landing_sensor_records_and_requests_only_new_arrivals(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKE_HOME", str(tmp_path))
    lake = make_lake(tmp_path, {"shop": TWO_TABLES})
    folder = lake.landing / "shop" / "app"
    write_dms_file(folder / "orders" / load_file_name(1), [{"order_id": 1, "total": 9.5}], [("order_id", "long"), ("total", "double")], cdc=False)
    write_dms_file(folder / "refunds" / load_file_name(1), [{"refund_id": 1, "amount": 2.0}], [("refund_id", "long"), ("amount", "double")], cdc=False)
    write_raw(folder / "orders" / "notes.txt", b"not a dms file")
    sensor = build_landing_sensor(lake.registry)
    with DagsterInstance.ephemeral() as instance:
        ctx = build_sensor_context(instance=instance, resources={"lake": LakeResource()})
        result = sensor(ctx)
        assert len(result.run_requests) == 1
        req = result.run_requests[0]
        # refunds is refreshed by its schedule, orders on arrival; by the source's named job
        assert req.asset_selection == [AssetKey(["source_aligned", "shop", "orders"])]
        assert req.job_name == "ingest_shop"
        # What landed shows on the landing assets: both tables, the bad name under orders' folder.
        observed = {e.asset_key.to_user_string(): e for e in result.asset_events if isinstance(e, AssetObservation)}
        assert set(observed) == {"landing/shop/orders", "landing/shop/refunds"}
        orders = {k: v.value for k, v in observed["landing/shop/orders"].metadata.items()}
        assert (orders["files_landed"], orders["pending"], orders["unroutable"], orders["failed"]) == (1, 1, 1, 0)
        assert orders["bytes_landed"] > 0 and orders["newest_arrival"] != "-"
        version = observed["landing/shop/orders"].tags[DATA_VERSION_TAG]
        cursor = result.cursor
        failed = lake.env.ledger.entries(status="failed")
        assert [e.key for e in failed] == ["shop/app/orders/notes.txt"]
        assert "neither a DMS full-load name" in failed[0].reason or "extension" in failed[0].reason

        again = sensor(build_sensor_context(instance=instance, cursor=cursor, resources={"lake": LakeResource()}))
        assert not again.run_requests  # nothing new: no second request for the same files
        assert not again.asset_events  # nor a second report of them
        write_dms_file(folder / "orders" / cdc_file_name(__import__("datetime").datetime(2026, 11, 21, 10)),
                       [{"Op": "U", "order_id": 1, "total": 10.0}], [("order_id", "long"), ("total", "double")], cdc=True)
        third = sensor(build_sensor_context(instance=instance, cursor=again.cursor, resources={"lake": LakeResource()}))
        assert len(third.run_requests) == 1 and third.run_requests[0].run_key != req.run_key
        assert json.loads(third.cursor)["last_recorded"] == 1
        [landed] = third.asset_events
        assert landed.asset_key == AssetKey(["landing", "shop", "orders"]) and landed.tags[DATA_VERSION_TAG] != version


def test_one_table_failing_does_not_stop_the_others(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKE_HOME", str(tmp_path))
    lake = make_lake(tmp_path, {"shop": TWO_TABLES})
    folder = lake.landing / "shop" / "app"
    write_dms_file(folder / "orders" / load_file_name(1), [{"order_id": 1, "total": 9.5}, {"order_id": 2, "total": 1.0}],
                   [("order_id", "long"), ("total", "double")], cdc=False)
    # refunds: a primary key column missing from the file fails the whole file
    write_dms_file(folder / "refunds" / load_file_name(1), [{"amount": 2.0}], [("amount", "double")], cdc=False)
    from lake_assets.core.arrivals import record_arrivals

    record_arrivals(lake.env.landing, lake.env.ledger, lake.registry)
    defs = build_definitions(lake.registry, with_dbt=False)
    result = materialize(list(defs.assets), resources=dict(defs.resources), raise_on_error=False)
    mats = {e.materialization.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert mats["source_aligned/shop/orders"]["inserted"].value == 2
    assert mats["source_aligned/shop/refunds"]["failed_files"].value == 1
    assert "primary key column 'refund_id' is missing" in mats["source_aligned/shop/refunds"]["failures"].value
    assert sorted(r["order_id"] for r in lake.rows("shop.orders")) == [1, 2]
    checks = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}
    assert checks[("source_aligned/shop/orders", "unique_primary_key")]
    assert checks[("source_aligned/shop/orders", "ledger_reconciled")]


def test_sensor_resumes_a_batch_whose_run_died(tmp_path, monkeypatch):
    import datetime as dt

    import lake_assets.sensors as sensors

    monkeypatch.setenv("LAKE_HOME", str(tmp_path))
    monkeypatch.setattr(sensors, "STALLED_AFTER", dt.timedelta(seconds=0))
    lake = make_lake(tmp_path, {"shop": TWO_TABLES})
    write_dms_file(lake.landing / "shop" / "app" / "orders" / load_file_name(1), [{"order_id": 1, "total": 9.5}],
                   [("order_id", "long"), ("total", "double")], cdc=False)
    sensor = build_landing_sensor(lake.registry)
    with DagsterInstance.ephemeral() as instance:
        first = sensor(build_sensor_context(instance=instance, resources={"lake": LakeResource()}))
        assert len(first.run_requests) == 1
        lake.env.ledger.claim("shop.orders")  # the requested run claimed the file, then died
        second = sensor(build_sensor_context(instance=instance, cursor=first.cursor, resources={"lake": LakeResource()}))
        assert [r.asset_selection for r in second.run_requests] == [[AssetKey(["source_aligned", "shop", "orders"])]]
        third = sensor(build_sensor_context(instance=instance, cursor=second.cursor, resources={"lake": LakeResource()}))
        assert not third.run_requests  # requested once per stalled batch
    lake.ingest()  # the resumed run
    assert [r["order_id"] for r in lake.rows("shop.orders")] == [1]
    assert lake.env.ledger.status_counts("shop.orders")["processing"] == 0
