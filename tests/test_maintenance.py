"""Table maintenance (lake_assets/core/maintenance.py): compaction, manifest rewrite, snapshot and
orphan expiry, sidecar expiry, under the merge lock, and its Dagster job, schedule and check.

That maintenance never changes an answer is also drawn by the CDC contract's property tests
(tests/test_cdc_contract.py runs it between ingests of hostile histories)."""

from __future__ import annotations

import datetime as dt
import os
import time

import dagster as dg
import pytest

from demo.dms_writer import cdc_file_name, load_file_name, write_dms_file
from lake_assets.checks import LEDGER_RECONCILED, TABLE_HEALTH, evaluate
from lake_assets.core.arrivals import record_arrivals
from lake_assets.core.cdc.iceberg import committed_batches
from lake_assets.core.ledger import TableBusy
from lake_assets.core.maintenance import maintain, table_health
from lake_assets.core.registry import MaintenanceSpec
from lake_assets.definitions import build_definitions
from resources.lake import LakeResource
from tests.lakehelpers import make_lake

BASE = dt.datetime(2026, 11, 21, 10)
COLUMNS = [("seq", "long"), ("id", "long"), ("v", "long")]
# Everything maintenance may do, it does at once: every file is small, every snapshot old enough.
EAGER = "{keep_snapshots: 1, max_snapshot_age_hours: 0, orphan_age_hours: 0, max_delete_files: 0, small_files_warn: 5, snapshots_warn: 8}"


def source(mode: str = "current", write: str = "merge_on_read", maintenance: str = EAGER) -> str:
    return f"""
source: shop
tables:
  - name: items
    schema: app
    primary_key: [id]
    sequence_by: seq
    mode: {mode}
    write: {write}
    tombstone_retention_days: 1
    maintenance: {maintenance}
    columns:
      - {{name: seq, type: long}}
      - {{name: id, type: long}}
      - {{name: v, type: long}}
"""


def merges(lake, n: int, *, start: int = 0) -> None:
    folder = lake.landing / "shop" / "app" / "items"
    if start == 0:
        write_dms_file(folder / load_file_name(1), [{"seq": None, "id": i, "v": 0} for i in range(200)], COLUMNS, cdc=False)
        lake.ingest()
    for k in range(start, start + n):
        rows = [{"Op": "U", "seq": 1000 * (k + 1) + i, "id": (k * 13 + i * 7) % 200, "v": k} for i in range(10)]
        rows.append({"Op": "D", "seq": 1000 * (k + 1) + 99, "id": 150 + k % 50, "v": 0})
        write_dms_file(folder / cdc_file_name(BASE + dt.timedelta(minutes=k)), rows, COLUMNS, cdc=True)
        lake.ingest()


def table_rows(lake) -> list[tuple]:
    rows = lake.env.catalog.load_table("shop.items").scan().to_arrow().to_pylist()
    return sorted(tuple(sorted(r.items())) for r in rows)


def later() -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)


@pytest.mark.parametrize("mode", ["current", "scd2"])
def test_maintenance_bounds_files_and_metadata_and_changes_no_row(tmp_path, mode):
    lake = make_lake(tmp_path, {"shop": source(mode)})
    table = lake.registry.get("shop", "items")
    merges(lake, 12)
    before = table_rows(lake)
    health = table_health(lake.env.catalog.load_table("shop.items"), table.maintenance)
    # one delete file per data file with deleted rows, however many merges deleted from it
    assert health.data_files == 13 and 1 <= health.delete_files <= 13 and health.snapshots == 13 and health.manifests >= 13

    report = maintain(lake.env.catalog, lake.env.ledger, table, now=later())
    assert report.skipped is None
    assert (report.files_compacted, report.files_written, report.delete_files_removed) == (13, 1, health.delete_files)
    # The newest merge's snapshot stays (load and era decisions read it), with maintenance's on top.
    assert report.manifests_after == 1 and report.snapshots_expired == 12 and report.batches_kept == 12
    assert report.orphans_removed > 0
    tbl = lake.env.catalog.load_table("shop.items")
    after = table_health(tbl, table.maintenance)
    assert (after.data_files, after.delete_files, after.snapshots, after.manifests) == (1, 0, 2, 1)
    assert after.metadata_bytes < health.metadata_bytes / 3
    assert table_rows(lake) == before  # every column, the lake's own included
    stored = {os.path.join(d, f) for d, _, fs in os.walk(tbl.location().removeprefix("file://")) for f in fs if f.endswith(".parquet")}
    referenced = {e.data_file.file_path.removeprefix("file://") for snap in tbl.metadata.snapshots
                  for m in snap.manifests(tbl.io) for e in m.fetch_manifest_entry(tbl.io)}
    assert stored == referenced  # files only expired snapshots named are gone from storage

    # Merges after maintenance give what they give without it: load decisions, eras, tombstones
    # and file pruning survive compaction and expiry.
    merges(lake, 3, start=12)
    plain = make_lake(tmp_path / "plain", {"shop": source(mode)})
    merges(plain, 15)
    assert _data(lake) == _data(plain)
    assert lake.ingest()[1]["shop.items"].results == []  # nothing pending: nothing merged twice


def _data(lake) -> list[tuple]:
    """Rows without what differs between two lakes merging the same files (batch ids, times)."""
    return sorted(tuple(sorted((k, v) for k, v in r.items() if k not in ("_lake_batch_id", "_lake_ingested_at")))
                  for r in lake.env.catalog.load_table("shop.items").scan().to_arrow().to_pylist())


def test_expired_batches_are_still_proven_committed(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKE_HOME", str(tmp_path))
    monkeypatch.setenv("LAKE_SOURCES_DIR", str(tmp_path / "sources"))
    lake = make_lake(tmp_path, {"shop": source()})
    table = lake.registry.get("shop", "items")
    merges(lake, 4)
    maintain(lake.env.catalog, lake.env.ledger, table, now=later())
    tbl = lake.env.catalog.load_table("shop.items")
    assert len(committed_batches(tbl)) == 1  # the newest merge's snapshot (and maintenance's) are left
    [result] = evaluate(table, LakeResource(), [LEDGER_RECONCILED])
    assert result.passed, result.description
    assert result.metadata["committed_files"].value == 5 and result.metadata["missing_from_snapshots"].value == 0

    # Without the kept records the same check fails: the records are what proves the batches.
    lake.env.ledger._run("test", lambda cur: cur.execute("DELETE FROM kept_batches"))
    [result] = evaluate(table, LakeResource(), [LEDGER_RECONCILED])
    assert not result.passed and result.metadata["missing_from_snapshots"].value == 4


def test_maintenance_waits_for_the_merge_lock_and_skips_unfinished_batches(tmp_path):
    lake = make_lake(tmp_path, {"shop": source()})
    table = lake.registry.get("shop", "items")
    merges(lake, 2)
    with lake.env.ledger.lock_table(table.identifier, wait_seconds=1):
        with pytest.raises(TableBusy):
            maintain(lake.env.catalog, lake.env.ledger, table, lock_wait_seconds=0.2, now=later())
    # A batch claimed and never finished (its merge crashed): its snapshots may be needed to resume it.
    write_dms_file(lake.landing / "shop/app/items" / cdc_file_name(BASE + dt.timedelta(hours=5)),
                   [{"Op": "U", "seq": 10**6, "id": 1, "v": 1}], COLUMNS, cdc=True)
    record_arrivals(lake.env.landing, lake.env.ledger, lake.registry)
    lake.env.ledger.claim(table.identifier)
    report = maintain(lake.env.catalog, lake.env.ledger, table, now=later())
    assert report.skipped and "unfinished" in report.skipped
    assert len(lake.env.catalog.load_table("shop.items").metadata.snapshots) == 3


def test_orphans_older_than_the_safety_age_go_and_newer_ones_stay(tmp_path):
    lake = make_lake(tmp_path, {"shop": source(maintenance="{orphan_age_hours: 1, max_snapshot_age_hours: 1000}")})
    table = lake.registry.get("shop", "items")
    merges(lake, 1)
    data = lake.env.catalog.load_table("shop.items").location().removeprefix("file://") + "/data"
    old, new = f"{data}/crashed-writer-old.parquet", f"{data}/in-flight-new.parquet"
    for path in (old, new):
        with open(path, "wb") as f:
            f.write(b"PAR1")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    before = table_rows(lake)
    report = maintain(lake.env.catalog, lake.env.ledger, table)
    assert report.orphans_removed == 1 and not os.path.exists(old) and os.path.exists(new)
    assert table_rows(lake) == before


def test_tombstones_and_quarantined_rows_expire_without_a_batch(tmp_path):
    lake = make_lake(tmp_path, {"shop": source(maintenance="{quarantine_retention_days: 2}")})
    table = lake.registry.get("shop", "items")
    merges(lake, 1)  # one delete: one tombstone
    write_dms_file(lake.landing / "shop/app/items" / cdc_file_name(BASE + dt.timedelta(hours=3)),
                   [{"Op": "U", "seq": None, "id": 5, "v": 1}], COLUMNS, cdc=True)  # a null sequence: quarantined
    lake.ingest()
    assert len(lake.rows("shop.items__tombstones")) == 1 and len(lake.rows("shop.items__quarantine")) == 1
    report = maintain(lake.env.catalog, lake.env.ledger, table, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=1, hours=1))
    assert (report.tombstones_expired, report.quarantine_expired) == (1, 0)  # retention 1 day; quarantine 2 days
    report = maintain(lake.env.catalog, lake.env.ledger, table, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=3))
    assert report.quarantine_expired == 1
    assert lake.rows("shop.items__tombstones") == [] and lake.rows("shop.items__quarantine") == []


def test_the_maintenance_job_reports_health_and_the_check_warns(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKE_HOME", str(tmp_path))
    monkeypatch.setenv("LAKE_SOURCES_DIR", str(tmp_path / "sources"))
    lake = make_lake(tmp_path, {"shop": source(maintenance=EAGER.replace("}", ", schedule: '30 2 * * *'}"))})
    table = lake.registry.get("shop", "items")
    merges(lake, 9)
    [warned] = evaluate(table, LakeResource(), [TABLE_HEALTH])
    assert not warned.passed and warned.severity == dg.AssetCheckSeverity.WARN
    assert "10 small data files" in warned.description and "10 snapshots" in warned.description

    defs = build_definitions(lake.registry, with_dbt=False)
    assert [(s.name, s.cron_schedule) for s in defs.schedules] == [("maintain_shop_30_2", "30 2 * * *")]
    with dg.DagsterInstance.ephemeral() as instance:
        result = defs.resolve_job_def("maintain_shop").execute_in_process(instance=instance)
        assert result.success
        [obs] = [e.asset_observation_data.asset_observation for e in result.all_events
                 if e.event_type == dg.DagsterEventType.ASSET_OBSERVATION]
    assert obs.asset_key == dg.AssetKey(["source_aligned", "shop", "items"])
    meta = {k: v.value for k, v in obs.metadata.items()}
    assert (meta["before_data_files"], meta["data_files"], meta["before_snapshots"]) == (10, 1, 10)
    assert meta["snapshots"] <= 2 and meta["files_compacted"] == 10
    [healthy] = evaluate(table, LakeResource(), [TABLE_HEALTH])
    assert healthy.passed


def test_registry_maintenance_fields_are_validated(tmp_path):
    from lake_assets.core.registry import load_registry

    lake = make_lake(tmp_path, {"shop": source(maintenance="{schedule: 'on_arrival'}")})
    assert lake.registry.tables == () and "maintenance.schedule" in lake.registry.errors[0].message
    (tmp_path / "sources" / "shop.yaml").write_text(source(maintenance="{keep_snapshots: 0}"))
    reg = load_registry([tmp_path / "sources"], cache=False)
    assert "keep_snapshots" in reg.errors[0].message
    assert MaintenanceSpec().schedule == "0 3 * * *"


def test_maintenance_keeps_the_data_version(tmp_path):
    """Compaction and expiry rewrite files, not rows: nothing downstream is stale for them."""
    from lake_assets.table_metadata import data_version

    lake = make_lake(tmp_path, {"shop": source()})
    merges(lake, 4)
    before = data_version(lake.env.catalog.load_table("shop.items"))
    report = maintain(lake.env.catalog, lake.env.ledger, lake.registry.get("shop", "items"), now=later())
    assert report.files_compacted > 0 and report.snapshots_expired > 0
    assert data_version(lake.env.catalog.load_table("shop.items")) == before
    merges(lake, 1, start=4)
    assert data_version(lake.env.catalog.load_table("shop.items")) != before
