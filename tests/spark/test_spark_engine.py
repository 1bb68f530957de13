"""The Spark engine on one local session: the shared catalog, the travel tables through the
exactly-once runner next to the in-process engine, schema drift, re-runs and an S3 landing zone."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from pathlib import Path

import boto3
import pyarrow as pa
import pytest
from moto.server import ThreadedMotoServer

from demo.dms_writer import cdc_file_name, load_file_name, table_dir, write_dms_file, write_raw
from lake_assets.core.cdc.iceberg import SchemaDriftError, committed_batches
from lake_assets.core.cdc.inprocess import InProcessEngine
from lake_assets.core.cdc.runner import merge_pending
from lake_assets.core.landing import LocalLandingZone
from lake_assets.core.ledger import sqlite_ledger
from lake_assets.core.naming import quarantine_identifier, tombstone_identifier
from lake_assets.core.registry import load_registry
from lake_assets.core.spark.engine import SparkEngine
from lake_assets.core.spark.merge_job import session_launcher
from tests.spark.conftest import NOW, landed, make_table, record_landed, sql_catalog, table_rows, unique_source

pytestmark = pytest.mark.spark


def spark_engine(spark_lake, landing: Path | str, scratch: Path) -> SparkEngine:
    return SparkEngine(session_launcher(spark_lake.spark), landing=str(landing), scratch=str(scratch))


def test_pyiceberg_and_spark_see_each_others_commits(spark_lake):
    ns = unique_source("interop")
    schema = pa.schema([("id", pa.int64()), ("v", pa.string())])
    spark_lake.catalog.create_namespace(ns)
    tbl = spark_lake.catalog.create_table(f"{ns}.t", schema=schema)
    tbl.append(pa.table({"id": [1, 2], "v": ["a", "b"]}, schema=schema))
    spark = spark_lake.spark
    assert spark.sql(f"SELECT count(*) AS n FROM lake.{ns}.t").collect()[0].n == 2
    spark.sql(f"INSERT INTO lake.{ns}.t VALUES (3, 'c')")
    # pyiceberg commits while the session's catalog connections stay open (SQLite locking).
    tbl = spark_lake.catalog.load_table(f"{ns}.t")
    tbl.append(pa.table({"id": [4], "v": ["d"]}, schema=schema))
    assert sorted(r["id"] for r in tbl.scan().to_arrow().to_pylist()) == [1, 2, 3, 4]
    assert sorted(r.id for r in spark.sql(f"SELECT id FROM lake.{ns}.t").collect()) == [1, 2, 3, 4]


# --- the travel tables through the exactly-once runner, both engines side by side ---------------


def _cols(t) -> list[tuple[str, str]]:
    return [(c.name, c.type) for c in t.columns]


def _booking(i: int, seq: int, status: str = "new", **extra) -> dict:
    return {"change_seq": seq, "booking_id": i, "customer_id": i % 3, "hotel_id": 7, "check_in": dt.date(2026, 12, i % 28 + 1),
            "nights": 2, "amount": decimal.Decimal(f"{100 + i}.50"), "currency": "EUR", "status": status,
            "created_at": dt.datetime(2026, 9 + i % 3, 5, 8, 30), **extra}


def _payment(i: int, status: str = "paid") -> dict:
    return {"payment_id": i, "booking_id": i, "amount": decimal.Decimal(f"{i}.25"), "currency": "EUR", "method": "card",
            "card_number": "4111", "region": "eu", "status": status, "paid_at": dt.datetime(2026, 11, 1, 9, i % 60)}


def _rounds(landing: Path, reg):
    """Yield once per delivery round after writing its files (full load; CDC with late and bad data; reload)."""
    bookings, payments, audit = reg.get("travel", "bookings"), reg.get("travel", "payments"), reg.get("travel", "booking_status_history")
    bdir = table_dir(landing, "travel", bookings.schema, bookings.source_table)
    pdir = table_dir(landing, "travel", payments.schema, payments.source_table)
    adir = table_dir(landing, "travel", audit.schema, audit.source_table)
    t0 = dt.datetime(2026, 11, 21, 10, 0, 0)

    write_dms_file(bdir / load_file_name(1), [_booking(i, seq=i) for i in range(1, 9)], _cols(bookings), cdc=False)
    write_dms_file(pdir / load_file_name(1), [_payment(i) for i in range(1, 6)], _cols(payments), fmt="csv", cdc=False,
                   gzip=True, null_marker="NULL")
    write_raw(pdir / (cdc_file_name(t0) + ".csv.gz"), b"")  # zero bytes: an upload in progress
    audit_rows = [{"audit_id": i, "booking_id": i, "old_status": "new", "new_status": "paid", "changed_at": t0} for i in range(1, 4)]
    write_dms_file(adir / load_file_name(1), audit_rows, _cols(audit), cdc=False)
    yield "full load"

    cdc = [dict(_booking(2, seq=20, status="paid"), Op="U"), dict(_booking(3, seq=21), Op="D"),
           dict(_booking(4, seq=2, status="changed"), Op="U"),  # a lower seq than its full-load row, yet newer: CDC follows the load
           dict(_booking(9, seq=22, channel="web"), Op="I"), dict(_booking(9, seq=23, status="confirmed", channel="app"), Op="U")]
    write_dms_file(bdir / "2026/11/21" / cdc_file_name(t0 + dt.timedelta(minutes=5)), cdc, _cols(bookings) + [("channel", "string")], cdc=True)
    pay = [dict(_payment(2, "refunded"), Op="U"), dict(_payment(6), Op="I"), dict(_payment(7), Op="I")]
    pay[-1]["amount"] = "not a number"  # quarantined: does not fit decimal(12,2)
    write_dms_file(pdir / cdc_file_name(t0 + dt.timedelta(minutes=6)), pay, [("payment_id", "long"), ("booking_id", "long"), ("amount", "string")]
                   + _cols(payments)[3:], fmt="csv", cdc=True, gzip=True, null_marker="NULL")
    write_dms_file(adir / cdc_file_name(t0 + dt.timedelta(minutes=6)),
                   [dict(audit_rows[0], audit_id=4, Op="I"), dict(audit_rows[1], Op="U")], _cols(audit), cdc=True)
    yield "cdc"

    # A late insert of the deleted booking 3 (older than its delete) and a reload of payments.
    write_dms_file(bdir / "2026/11/21" / cdc_file_name(t0 + dt.timedelta(minutes=1)), [dict(_booking(3, seq=15), Op="I"),
                   dict(_booking(5, seq=30, status="cancelled"), Op="U")], _cols(bookings), cdc=True)
    write_dms_file(pdir / load_file_name(1), [_payment(i, "settled") for i in (1, 6, 8)], _cols(payments), fmt="csv",
                   cdc=False, gzip=True, null_marker="NULL")
    yield "reload"


def _merge_all(tables, catalog, ledger, landing, engine) -> dict:
    out = {}
    for t in tables:
        results = merge_pending(t, catalog=catalog, ledger=ledger, landing=LocalLandingZone(landing), engine=engine).results
        out[t.identifier] = results
    return out


RESULT_FIELDS = ("files", "rows_read", "inserted", "updated", "deleted", "appended", "stale_skipped", "tombstone_rejected",
                 "quarantined", "reload", "schema_changes", "failed_files", "already_committed")


def test_travel_tables_through_the_runner_match_inprocess(spark_lake, tmp_path):
    reg = load_registry()
    tables = [reg.get("travel", n).model_copy(update={"engine": "spark"}) for n in ("bookings", "payments", "booking_status_history")]
    landing = tmp_path / "landing"
    inproc_catalog = sql_catalog(tmp_path / "inprocess")
    ledgers = {"inprocess": sqlite_ledger(tmp_path / "inprocess-ledger.db"), "spark": sqlite_ledger(tmp_path / "spark-ledger.db")}
    engines = {"inprocess": InProcessEngine(), "spark": spark_engine(spark_lake, landing, tmp_path / "scratch")}
    catalogs = {"inprocess": inproc_catalog, "spark": spark_lake.catalog}

    seen = {}
    for round_name in _rounds(landing, reg):
        merged = {}
        for name in engines:
            record_landed(LocalLandingZone(landing), ledgers[name], tables)
            merged[name] = _merge_all(tables, catalogs[name], ledgers[name], landing, engines[name])
        for ident, results in merged["spark"].items():
            assert len(results) == len(merged["inprocess"][ident]) <= 1, (round_name, ident)
            for s, a in zip(results, merged["inprocess"][ident]):
                for f in RESULT_FIELDS:
                    assert getattr(s, f) == getattr(a, f), (round_name, ident, f)
                seen[(round_name, ident)] = s
        for t in tables:
            assert ledgers["spark"].status_counts(t.identifier) == ledgers["inprocess"].status_counts(t.identifier)

    # What happened, as a user reads it from the results.
    assert seen[("full load", "travel.payments")].failed_files  # the zero-byte file
    cdc = seen[("cdc", "travel.bookings")]
    assert (cdc.inserted, cdc.updated, cdc.deleted, cdc.stale_skipped) == (1, 2, 1, 0)
    assert cdc.schema_changes == ["added column channel string"]
    assert seen[("cdc", "travel.payments")].quarantined == 1
    assert seen[("cdc", "travel.booking_status_history")].appended == 2
    late = seen[("reload", "travel.bookings")]
    assert (late.tombstone_rejected, late.updated) == (1, 1)
    assert seen[("reload", "travel.payments")].reload

    # Batch ids (from each ledger) and ingestion times differ between the two runs; the rest is identical.
    per_run = ("_lake_batch_id", "_lake_ingested_at", "batch_id", "quarantined_at", "_lake_deleted_at")

    def rows(catalog, ident, order):
        return [{k: v for k, v in r.items() if k not in per_run} for r in table_rows(catalog, ident, order)]

    for t in tables:
        order = list(t.primary_key) if t.mode == "current" else ["_lake_seq"]
        assert rows(spark_lake.catalog, t.identifier, order) == rows(inproc_catalog, t.identifier, order)
        for ident, o in ((tombstone_identifier(t.source, t.name), list(t.primary_key)), (quarantine_identifier(t.source, t.name), ["file", "row"])):
            assert spark_lake.catalog.table_exists(ident) == inproc_catalog.table_exists(ident)
            if inproc_catalog.table_exists(ident):
                assert rows(spark_lake.catalog, ident, o) == rows(inproc_catalog, ident, o), ident
    assert [r["payment_id"] for r in table_rows(spark_lake.catalog, "travel.payments", ["payment_id"])] == [1, 6, 8]

    # Each commit names its batch and files in the snapshot summary, as the in-process engine's do.
    summaries = committed_batches(spark_lake.catalog.load_table("travel.bookings"))
    inproc_summaries = committed_batches(inproc_catalog.load_table("travel.bookings"))
    assert len(summaries) == 3
    for summary in summaries.values():
        assert json.loads(summary["lake.files"])
        other = next(v for v in inproc_summaries.values() if v["lake.files"] == summary["lake.files"])
        assert {k: v for k, v in summary.items() if k.startswith("lake.") and k != "lake.batch-id"} == {
            k: v for k, v in other.items() if k.startswith("lake.") and k != "lake.batch-id"}


# --- failures and re-runs ------------------------------------------------------------------------


def test_incompatible_type_change_fails_the_batch_like_inprocess(spark_lake, tmp_path):
    source = unique_source("drift")
    table = make_table(source, columns=None)  # columns come from the files
    landing = tmp_path / "landing"
    folder = table_dir(landing, source, table.schema, table.source_table)
    first = write_dms_file(folder / load_file_name(1), [{"id": 1, "v": 10}], [("id", "long"), ("v", "long")], cdc=False)
    second = write_dms_file(folder / cdc_file_name(dt.datetime(2026, 11, 21, 10)), [{"id": 2, "v": "ten", "Op": "I"}],
                            [("id", "long"), ("v", "string")], cdc=True)
    inproc_catalog = sql_catalog(tmp_path / "inprocess")
    engines = [(InProcessEngine(), inproc_catalog), (spark_engine(spark_lake, landing, tmp_path / "scratch"), spark_lake.catalog)]
    messages = []
    for engine, catalog in engines:
        engine.merge(catalog, table, landed(landing, [first]), "b0", now=NOW)
        with pytest.raises(SchemaDriftError) as err:
            engine.merge(catalog, table, landed(landing, [second]), "b1", now=NOW)
        messages.append(str(err.value))
        assert list(committed_batches(catalog.load_table(table.identifier))) == ["b0"]
        assert [r["v"] for r in table_rows(catalog, table.identifier, ["id"])] == [10]
    assert messages[0] == messages[1]
    assert f"{source}.items: column v is long in the table but string" in messages[1]


def test_a_committed_batch_run_again_changes_nothing(spark_lake, tmp_path):
    source = unique_source("again")
    table = make_table(source, columns=[("id", "long"), ("v", "long")])
    landing = tmp_path / "landing"
    folder = table_dir(landing, source, table.schema, table.source_table)
    f = write_dms_file(folder / load_file_name(1), [{"id": i, "v": i} for i in range(5)], [("id", "long"), ("v", "long")], cdc=False)
    engine = spark_engine(spark_lake, landing, tmp_path / "scratch")
    first = engine.merge(spark_lake.catalog, table, landed(landing, [f]), "b0", now=NOW)
    snapshots = len(spark_lake.catalog.load_table(table.identifier).metadata.snapshots)
    again = engine.merge(spark_lake.catalog, table, landed(landing, [f]), "b0", now=NOW)
    assert (first.inserted, first.already_committed) == (5, False)
    assert again.already_committed and again.snapshot_id == first.snapshot_id and again.inserted == 0
    assert len(spark_lake.catalog.load_table(table.identifier).metadata.snapshots) == snapshots
    assert len(table_rows(spark_lake.catalog, table.identifier, ["id"])) == 5


@pytest.mark.parametrize("engine_name", ["inprocess", "spark"])
def test_changes_merged_again_under_a_new_batch_id_are_not_newer(spark_lake, tmp_path, engine_name):
    """A change at the very position the table holds (or a delete at its tombstone's) is not newer:
    merged again, under another batch id (a lost ledger re-recording its files), it changes nothing."""
    from tests.oracle import OracleFile, TableOracle

    source = unique_source("equal")
    cols = [("id", "long"), ("v", "long"), ("seq", "string")]
    table = make_table(source, columns=cols, sequence_by="seq")
    landing = tmp_path / "landing"
    folder = table_dir(landing, source, table.schema, table.source_table)
    t0 = dt.datetime(2026, 11, 21, 10)
    rows = [[{"Op": "I", "id": 1, "v": 1, "seq": "1"}, {"Op": "I", "id": 2, "v": 2, "seq": "1"}, {"Op": "I", "id": 3, "v": 3, "seq": "1"}],
            [{"Op": "U", "id": 1, "v": 11, "seq": "2"}, {"Op": "D", "id": 2, "v": 2, "seq": "2"}, {"Op": "D", "id": 5, "v": 0, "seq": "2"}]]
    paths = [write_dms_file(folder / cdc_file_name(t0 + dt.timedelta(minutes=m)), r, cols, cdc=True) for m, r in enumerate(rows)]
    engine, catalog = ((InProcessEngine(), sql_catalog(tmp_path / "inprocess")) if engine_name == "inprocess"
                       else (spark_engine(spark_lake, landing, tmp_path / "scratch"), spark_lake.catalog))
    oracle = TableOracle(columns=("id", "v", "seq"), sequence="string")
    files = [OracleFile(p.relative_to(landing).as_posix(), tuple(r)) for p, r in zip(paths, rows)]
    for batch_id in ("b0", "b1"):
        got = engine.merge(catalog, table, landed(landing, paths), batch_id, now=NOW)
        want = oracle.merge(files)
        assert (got.inserted, got.updated, got.deleted, got.stale_skipped, got.tombstone_rejected) == (
            want.inserted, want.updated, want.deleted, want.stale_skipped, want.tombstone_rejected), batch_id
    assert (got.inserted, got.updated, got.deleted, got.stale_skipped, got.tombstone_rejected) == (0, 0, 0, 2, 0)
    held = table_rows(catalog, table.identifier, ["id"])
    assert [(r["id"], r["v"], r["_lake_batch_id"]) for r in held] == [(1, 11, "b0"), (3, 3, "b0")]
    tombstones = table_rows(catalog, tombstone_identifier(table.source, table.name), ["id"])
    assert [r["id"] for r in tombstones] == [2, 5]


def test_a_file_changed_after_it_was_claimed_is_left_out(spark_lake, tmp_path):
    source = unique_source("changed")
    table = make_table(source, columns=[("id", "long"), ("v", "long")])
    landing = tmp_path / "landing"
    folder = table_dir(landing, source, table.schema, table.source_table)
    cols = [("id", "long"), ("v", "long")]
    keep = write_dms_file(folder / load_file_name(1), [{"id": 1, "v": 1}], cols, cdc=False)
    moved = write_dms_file(folder / load_file_name(2), [{"id": 2, "v": 2}], cols, cdc=False)
    claimed = landed(landing, [keep, moved])
    write_dms_file(folder / load_file_name(2), [{"id": 2, "v": 99}], cols, cdc=False)  # re-uploaded before the job read it
    result = spark_engine(spark_lake, landing, tmp_path / "scratch").merge(spark_lake.catalog, table, claimed, "b0", now=NOW)
    assert list(result.failed_files) == [moved.relative_to(landing).as_posix()]
    assert "content changed since the batch was claimed" in result.failed_files[moved.relative_to(landing).as_posix()]
    assert [r["id"] for r in table_rows(spark_lake.catalog, table.identifier, ["id"])] == [1]


def test_the_job_reads_an_s3_landing_zone(spark_lake, tmp_path, monkeypatch):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for k, v in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="landing")
        source = unique_source("s3land")
        table = make_table(source, columns=[("id", "long"), ("v", "long")])
        local = tmp_path / "landing"
        f = write_dms_file(table_dir(local, source, table.schema, table.source_table) / load_file_name(1),
                           [{"id": i, "v": i * 10} for i in range(1, 4)], [("id", "long"), ("v", "long")], cdc=False)
        key = f.relative_to(local).as_posix()
        s3.put_object(Bucket="landing", Key=f"dms/{key}", Body=f.read_bytes())
        engine = spark_engine(spark_lake, "s3://landing/dms", tmp_path / "scratch")
        result = engine.merge(spark_lake.catalog, table, landed(local, [f]), "b0", now=NOW)
        assert result.inserted == 3 and result.files == [key]
        assert [r["v"] for r in table_rows(spark_lake.catalog, table.identifier, ["id"])] == [10, 20, 30]
    finally:
        server.stop()


def _readers_agree(spark_lake, identifier: str) -> list[tuple]:
    """The table as pyiceberg, Spark and DuckDB's iceberg_scan read it (delete files applied): one answer."""
    import duckdb
    import duckdb_extensions

    tbl = spark_lake.catalog.load_table(identifier)
    by_pyiceberg = sorted((r["id"], r["v"]) for r in tbl.scan(selected_fields=("id", "v")).to_arrow().to_pylist())
    by_spark = sorted((r.id, r.v) for r in spark_lake.spark.sql(f"SELECT id, v FROM lake.{identifier}").collect())
    con = duckdb.connect()
    con.execute(f"SET extension_directory = '{spark_lake.home / 'duckdb_extensions'}'")
    for name in ("avro", "iceberg"):
        duckdb_extensions.import_extension(name, con=con)
        con.execute(f"LOAD {name}")
    by_duckdb = sorted(con.execute(f"SELECT id, v FROM iceberg_scan('{tbl.metadata_location}')").fetchall())
    con.close()
    assert by_pyiceberg == by_spark == by_duckdb, identifier
    return by_pyiceberg


@pytest.mark.parametrize("write", ["merge_on_read", "copy_on_write"])
def test_a_table_can_switch_engines_between_batches(spark_lake, tmp_path, write):
    """`engine:` is a registry setting: batches of one table merged alternately by both engines give
    the table the in-process engine alone gives, whether merges write delete files or rewrite data
    files, and pyiceberg, Spark and DuckDB read the same rows after every batch."""
    source = unique_source("switch")
    table = make_table(source, columns=[("id", "long"), ("v", "long")], partition_by=(("id", "bucket[4]"),), write=write)
    landing = tmp_path / "landing"
    folder = table_dir(landing, source, table.schema, table.source_table)
    cols = [("id", "long"), ("v", "long")]
    t0 = dt.datetime(2026, 11, 21, 10)
    batches = [
        [write_dms_file(folder / load_file_name(1), [{"id": i, "v": i} for i in range(1, 21)], cols, cdc=False)],
        [write_dms_file(folder / cdc_file_name(t0), [{"id": 3, "v": 0, "Op": "D"}, {"id": 4, "v": 40, "Op": "U"},
                                                     {"id": 21, "v": 21, "Op": "I"}], cols, cdc=True)],
        [write_dms_file(folder / cdc_file_name(t0 - dt.timedelta(minutes=5)), [{"id": 3, "v": 33, "Op": "U"},  # late: older than the delete
                                                                               {"id": 4, "v": 44, "Op": "U"}], cols, cdc=True)],
        [write_dms_file(folder / cdc_file_name(t0 + dt.timedelta(minutes=5)), [{"id": 3, "v": 300, "Op": "I"}, {"id": 5, "v": 0, "Op": "D"}],
                        cols, cdc=True)],
    ]
    reference = sql_catalog(tmp_path / "reference")
    spark = spark_engine(spark_lake, landing, tmp_path / "scratch")
    for b, paths in enumerate(batches):
        files = landed(landing, paths)
        engine = spark if b % 2 else InProcessEngine()
        got = engine.merge(spark_lake.catalog, table, files, f"b{b}", now=NOW)
        want = InProcessEngine().merge(reference, table, files, f"b{b}", now=NOW)
        assert (got.inserted, got.updated, got.deleted, got.stale_skipped, got.tombstone_rejected) == (
            want.inserted, want.updated, want.deleted, want.stale_skipped, want.tombstone_rejected), f"b{b}"
        assert _readers_agree(spark_lake, table.identifier) == sorted(
            (r["id"], r["v"]) for r in table_rows(reference, table.identifier, ["id"])), f"b{b}"
    deletes = [t for t in spark_lake.catalog.load_table(table.identifier).scan().plan_files() if t.delete_files]
    assert bool(deletes) == (write == "merge_on_read"), "merge-on-read leaves delete files; copy-on-write none"
    assert table_rows(spark_lake.catalog, table.identifier, ["id"]) == table_rows(reference, table.identifier, ["id"])
    assert {r["id"]: r["v"] for r in table_rows(reference, table.identifier, ["id"])}[3] == 300


def test_a_spark_table_is_maintained_by_icebergs_procedures(spark_lake, tmp_path):
    """Maintenance of an `engine: spark` table runs Iceberg's rewrite_data_files, rewrite_manifests,
    expire_snapshots and remove_orphan_files in the Spark job: the rows stay, files and snapshots
    shrink, the expired batches' records are kept in the ledger, and merges go on as before."""
    from lake_assets.core.maintenance import maintain, table_health
    from lake_assets.core.registry import MaintenanceSpec

    source = unique_source("maint")
    table = make_table(source, columns=[("id", "long"), ("v", "long")], write="merge_on_read").model_copy(update={"engine": "spark"})
    landing = tmp_path / "landing"
    folder = table_dir(landing, source, table.schema, table.source_table)
    cols = [("id", "long"), ("v", "long")]
    t0 = dt.datetime(2026, 11, 21, 10)
    spark = spark_engine(spark_lake, landing, tmp_path / "scratch")
    reference = sql_catalog(tmp_path / "reference")
    batches = [[write_dms_file(folder / load_file_name(1), [{"id": i, "v": i} for i in range(1, 41)], cols, cdc=False)]]
    for k in range(4):
        batches.append([write_dms_file(folder / cdc_file_name(t0 + dt.timedelta(minutes=k)),
                                       [{"id": 1 + 9 * k, "v": 100 + k, "Op": "U"}, {"id": 2 + 9 * k, "v": 0, "Op": "D"},
                                        {"id": 50 + k, "v": k, "Op": "I"}], cols, cdc=True)])
    for b, paths in enumerate(batches):
        files = landed(landing, paths)
        spark.merge(spark_lake.catalog, table, files, f"b{b}", now=NOW)
        InProcessEngine().merge(reference, table, files, f"b{b}", now=NOW)
    spec = MaintenanceSpec(keep_snapshots=1, max_snapshot_age_hours=0, orphan_age_hours=0, max_delete_files=0)
    before = table_health(spark_lake.catalog.load_table(table.identifier), spec)
    ledger = sqlite_ledger(tmp_path / "ledger.db")
    report = maintain(spark_lake.catalog, ledger, table, engine=spark, spec=spec,
                      now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    after = table_health(spark_lake.catalog.load_table(table.identifier), spec)
    assert report.files_compacted >= 2 and after.data_files < before.data_files and after.delete_files == 0
    assert report.snapshots_expired == len(ledger.kept_batches(table.identifier)) == before.snapshots - 1
    assert after.snapshots < before.snapshots
    assert table_rows(spark_lake.catalog, table.identifier, ["id"]) == table_rows(reference, table.identifier, ["id"])

    late = landed(landing, [write_dms_file(folder / cdc_file_name(t0 + dt.timedelta(hours=1)),
                                           [{"id": 3, "v": 333, "Op": "U"}, {"id": 60, "v": 6, "Op": "I"}], cols, cdc=True)])
    spark.merge(spark_lake.catalog, table, late, "b-after", now=NOW)
    InProcessEngine().merge(reference, table, late, "b-after", now=NOW)
    assert table_rows(spark_lake.catalog, table.identifier, ["id"]) == table_rows(reference, table.identifier, ["id"])
