"""Source-aligned assets as a data engineer meets them, in process: the column schema, row count and
Iceberg name of every materialization; checks run alone on the table as it is; a merge with nothing
to do keeps the data version; failed and quarantined files fail a check with files and reasons;
freshness from the table's cadence, turned red and green by the landing sensor; a table that fails
still reports its checks."""

from __future__ import annotations

import datetime as dt
import sqlite3
from decimal import Decimal

import dagster as dg
import pytest
from dagster._core.definitions.data_version import DATA_VERSION_TAG
from dagster._core.definitions.metadata import TableMetadataSet

from demo.dms_writer import cdc_file_name, load_file_name, write_dms_file, write_raw
from lake_assets import checks
from lake_assets.core.arrivals import record_arrivals
from lake_assets.core.registry import load_registry
from lake_assets.definitions import build_definitions
from lake_assets.sensors import build_landing_sensor
from resources.lake import LakeResource
from tests.lakehelpers import make_lake

SHOP = """
source: shop
defaults: {refresh: on_arrival, owners: [team@example.com]}
tables:
  - name: orders
    schema: app
    primary_key: [order_id]
    pii: [email]
    columns:
      - {name: order_id, type: long, description: The order.}
      - {name: email, type: string}
      - {name: total, type: "decimal(12,2)"}
  - name: audit
    schema: app
    primary_key: [audit_id]
    mode: history
    refresh: "0 6 * * *"
    columns: [{name: audit_id, type: long}, {name: note, type: string}]
"""
COLUMNS = [("order_id", "long"), ("email", "string"), ("total", "decimal(12,2)")]
ORDERS = dg.AssetKey(["source_aligned", "shop", "orders"])
T0 = dt.datetime(2026, 11, 21, 10)


@pytest.fixture
def shop(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKE_HOME", str(tmp_path))
    monkeypatch.setenv("LAKE_SOURCES_DIR", str(tmp_path / "sources"))
    lake = make_lake(tmp_path, {"shop": SHOP})
    defs = build_definitions(lake.registry, with_dbt=False)
    with dg.DagsterInstance.ephemeral() as instance:
        yield lake, defs, instance


def land(lake, name: str, rows: list[dict], *, cdc: bool = True):
    return write_dms_file(lake.landing / "shop" / "app" / "orders" / name, rows, COLUMNS, cdc=cdc)


def run(defs, instance, *, assets=(ORDERS,), checks_only: set[dg.AssetCheckKey] | None = None):
    """Record arrivals as the sensor does, then run ingest_shop as the UI would: the tables, or
    (checks_only) a run with only those checks selected, what the UI's Execute on a check sends."""
    lake_resource = LakeResource()
    record_arrivals(lake_resource.landing, lake_resource.ledger, load_registry())
    job = defs.resolve_job_def("ingest_shop")
    if checks_only is not None:
        job = job.get_subset(asset_selection=set(), asset_check_selection=checks_only)
        return job.execute_in_process(instance=instance, raise_on_error=False)
    return job.execute_in_process(instance=instance, asset_selection=list(assets), raise_on_error=False)


def materialization(result, key=ORDERS):
    [mat] = [e.materialization for e in result.get_asset_materialization_events() if e.materialization.asset_key == key]
    return mat


def evaluations(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_the_definition_and_every_materialization_describe_the_iceberg_table(shop):
    lake, defs, instance = shop
    node = defs.resolve_asset_graph().get(ORDERS)
    schema = TableMetadataSet.extract(node.metadata).column_schema
    assert [(c.name, c.type) for c in schema.columns] == [
        ("order_id", "long"), ("email", "string"), ("total", "decimal(12, 2)"),
        ("_lake_seq", "string"), ("_lake_op", "string"), ("_lake_batch_id", "string"), ("_lake_ingested_at", "timestamptz")]
    by_name = {c.name: c for c in schema.columns}
    assert by_name["order_id"].description == "The order. Primary key." and not by_name["order_id"].constraints.nullable
    assert by_name["email"].tags == {"pii": ""} and by_name["_lake_seq"].description
    assert TableMetadataSet.extract(node.metadata).table_name == "shop.orders"
    history = defs.resolve_asset_graph().get(dg.AssetKey(["source_aligned", "shop", "audit"]))
    assert [c.name for c in TableMetadataSet.extract(history.metadata).column_schema.columns][-2:] == ["_lake_file", "_lake_row"]

    land(lake, load_file_name(1), [{"order_id": i, "email": f"{i}@x", "total": Decimal("1.00")} for i in range(3)], cdc=False)
    mat = materialization(run(defs, instance))
    assert [(c.name, c.type) for c in mat.metadata["dagster/column_schema"].value.columns] == \
        [(c.name, c.type) for c in schema.columns]
    assert mat.metadata["dagster/row_count"].value == 3
    assert mat.metadata["dagster/table_name"].value == "shop.orders"
    land(lake, cdc_file_name(T0), [{"Op": "D", "order_id": 0}])
    assert materialization(run(defs, instance)).metadata["dagster/row_count"].value == 2


def test_a_check_run_alone_evaluates_the_table_as_it_is(shop):
    lake, defs, instance = shop
    land(lake, load_file_name(1), [{"order_id": 1, "total": Decimal("1.00")}, {"order_id": 2, "total": Decimal("2.00")}], cdc=False)
    run(defs, instance)
    land(lake, cdc_file_name(T0), [{"Op": "I", "order_id": 3, "total": Decimal("3.00")}])  # lands, not merged by the check
    wanted = {dg.AssetCheckKey(ORDERS, "unique_primary_key"), dg.AssetCheckKey(ORDERS, "ledger_reconciled")}
    result = run(defs, instance, checks_only=wanted)
    assert result.success
    assert not result.get_asset_materialization_events()
    found = evaluations(result)
    assert set(found) == {"unique_primary_key", "ledger_reconciled"} and all(e.passed for e in found.values())
    assert found["unique_primary_key"].metadata["rows"].value == 2  # the table as it is: the new file waits
    assert lake.env.ledger.status_counts("shop.orders")["landed"] == 1


def test_a_merge_with_nothing_pending_keeps_the_data_version(shop):
    lake, defs, instance = shop
    land(lake, load_file_name(1), [{"order_id": 1, "total": Decimal("1.00")}], cdc=False)
    first = materialization(run(defs, instance))
    nothing = materialization(run(defs, instance))
    assert nothing.tags[DATA_VERSION_TAG] == first.tags[DATA_VERSION_TAG]
    assert nothing.metadata["files"].value == 0
    land(lake, cdc_file_name(T0), [{"Op": "U", "order_id": 1, "total": Decimal("5.00")}])  # a change: a new version
    changed = materialization(run(defs, instance))
    assert changed.tags[DATA_VERSION_TAG] != first.tags[DATA_VERSION_TAG]
    assert materialization(run(defs, instance)).tags[DATA_VERSION_TAG] == changed.tags[DATA_VERSION_TAG]


def test_failed_and_quarantined_files_fail_a_check_with_files_and_reasons(shop):
    lake, defs, instance = shop
    land(lake, load_file_name(1), [{"order_id": 1, "total": Decimal("1.00")}], cdc=False)
    assert evaluations(run(defs, instance))["ledger_reconciled"].passed
    bad = write_raw(lake.landing / "shop" / "app" / "orders" / f"{cdc_file_name(T0)}.parquet", b"PAR1 not parquet")
    result = run(defs, instance)
    check = evaluations(result)["ledger_reconciled"]
    key = bad.relative_to(lake.landing).as_posix()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["failed_files"].value == 1 and key in check.metadata["files"].value
    assert "not a readable Parquet file" in check.metadata["reasons"].value[key]
    assert materialization(result).metadata["failed_files"].value == 1  # the run itself succeeds, the check says it

    lake.env.ledger.retry_failed("shop.orders")
    bad.unlink()  # a retry of a file that is gone fails again: still red
    assert not evaluations(run(defs, instance))["ledger_reconciled"].passed


def test_a_file_whose_rows_are_all_quarantined_warns(shop):
    lake, defs, instance = shop
    land(lake, load_file_name(1), [{"order_id": None, "total": Decimal("1.00")}], cdc=False)  # null key: quarantined
    check = evaluations(run(defs, instance))["ledger_reconciled"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["quarantined_files"].value == 1 and "quarantined" in check.metadata["files"].value


def test_a_table_that_fails_still_reports_its_checks(shop, tmp_path):
    lake, defs, instance = shop
    land(lake, load_file_name(1), [{"order_id": 1, "total": Decimal("1.00")}], cdc=False)
    run(defs, instance)
    # The registry now says another primary key: the table refuses to merge until rebuilt.
    (tmp_path / "sources" / "shop.yaml").write_text(
        (tmp_path / "sources" / "shop.yaml").read_text().replace("primary_key: [order_id]", "primary_key: [order_id, email]"))
    defs = build_definitions(load_registry(), with_dbt=False)
    land(lake, cdc_file_name(T0), [{"Op": "I", "order_id": 2, "total": Decimal("2.00")}])
    result = run(defs, instance)
    assert not result.success and not result.get_asset_materialization_events()
    assert set(evaluations(result)) == set(checks.CHECK_NAMES)  # not skipped: each says what it sees


# ---------------------------------------------------------------------------------------------
# Freshness


def _on(cadence: str):
    return next(t for t in load_registry().tables if t.refresh == cadence)


def test_freshness_follows_the_cadence(shop):
    arrival, now = "2026-11-21T10:00:00.000+00:00", dt.datetime(2026, 11, 21, 10, 5, tzinfo=dt.UTC)
    orders, audit = _on("on_arrival"), _on("0 6 * * *")
    assert checks.freshness(orders, None, now=now).passed  # nothing waiting: fresh however old the table
    assert checks.freshness(orders, arrival, now=now).passed  # 5 minutes: the merge may still come
    assert not checks.freshness(orders, arrival, now=now + dt.timedelta(minutes=11)).passed  # 16 minutes
    # Daily at 06:00: a file of 10:00 waits for tomorrow's refresh (and its grace) before it is late.
    assert checks.freshness(audit, arrival, now=dt.datetime(2026, 11, 22, 6, 14, tzinfo=dt.UTC)).passed
    late = checks.freshness(audit, arrival, now=dt.datetime(2026, 11, 22, 6, 16, tzinfo=dt.UTC))
    assert not late.passed and late.metadata["oldest_unmerged_file_landed_at"].value == arrival


def test_the_landing_sensor_turns_freshness_red_and_green(shop):
    lake, defs, instance = shop
    sensor = build_landing_sensor(lake.registry)
    land(lake, load_file_name(1), [{"order_id": 1, "total": Decimal("1.00")}], cdc=False)

    def tick(cursor=None):
        return sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"lake": LakeResource()}))

    def freshness(result):
        return [e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)]

    first = tick()
    assert first.run_requests and not freshness(first)  # just landed: fresh, nothing to report
    # The requested run never came (daemon down, runs failing): 20 minutes later the table is behind.
    with sqlite3.connect(lake.home / "ledger.db") as db:
        db.execute("UPDATE landed_files SET arrived_at = ?",
                   ((dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)).isoformat(timespec="milliseconds"),))
    behind = tick(first.cursor)
    [red] = freshness(behind)
    assert red.asset_key == ORDERS and red.check_name == "freshness" and not red.passed
    assert red.metadata["waiting_minutes"].value >= 20
    assert not freshness(tick(behind.cursor))  # reported once, not every tick
    run(defs, instance)  # the merge catches up
    caught_up = tick(behind.cursor)
    [green] = freshness(caught_up)
    assert green.passed and not freshness(tick(caught_up.cursor))


def test_the_landing_sensor_waits_in_its_tick_for_a_file_about_to_settle(shop, monkeypatch):
    lake, defs, instance = shop
    monkeypatch.setenv("LAKE_SETTLE_SECONDS", "1.5")
    from lake_assets.core.settings import current_settings

    current_settings.cache_clear()
    land(lake, load_file_name(1), [{"order_id": 1, "total": Decimal("1.00")}], cdc=False)
    result = build_landing_sensor(lake.registry)(dg.build_sensor_context(instance=instance, resources={"lake": LakeResource()}))
    assert [r.asset_selection for r in result.run_requests] == [[ORDERS]]  # recorded in this tick, not the next


def test_the_lake_columns_are_named_as_the_pipeline_names_them():
    from lake_assets import table_metadata
    from lake_assets.core.cdc import batch, pipeline

    assert (table_metadata.SEQ, table_metadata.FILE) == (batch.SEQ, batch.FILE)
    assert (table_metadata.LAKE_OP, table_metadata.BATCH, table_metadata.INGESTED_AT, table_metadata.LAKE_ROW) == \
        (pipeline.LAKE_OP, pipeline.BATCH, pipeline.INGESTED_AT, pipeline.LAKE_ROW)
