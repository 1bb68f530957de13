"""The file ledger's contract, on SQLite (local) and a real PostgreSQL server (production)."""

from __future__ import annotations

import pytest

from lake_assets.core.ledger import LandedFile, postgres_ledger, sqlite_ledger
from tests.postgres_server import fresh_database, postgres_server


@pytest.fixture(scope="module")
def pg_server():
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request, tmp_path):
    if request.param == "sqlite":
        return sqlite_ledger(tmp_path / "ledger.db")
    return postgres_ledger(fresh_database(request.getfixturevalue("pg_server")))


def f(key, checksum="c1", table="s.t", reason=None):
    return LandedFile(key, checksum, 10, f"v-{checksum}", table, reason)


def test_identical_redelivery_is_a_noop_and_new_content_is_a_new_entry(ledger):
    r = ledger.record([f("s/a/t/LOAD00000001.parquet"), f("s/a/t/20261121-100000000.parquet", "c9")])
    assert (len(r.entries), r.duplicates, r.identical) == (2, [], 0)
    r = ledger.record([f("s/a/t/LOAD00000001.parquet")])
    assert (r.entries, r.duplicates, r.identical) == ([], [], 1)
    r = ledger.record([f("s/a/t/LOAD00000001.parquet", "c2")])
    assert len(r.entries) == 1 and r.identical == 0
    assert ledger.seen_versions()["s/a/t/LOAD00000001.parquet"] == {"v-c1", "v-c2"}


def test_claim_finish_and_retry(ledger):
    ledger.record([f("k1", "c1"), f("k2", "c2"), f("k3", "c3"), f("other", "c4", table="s.u")])
    batch, entries = ledger.claim("s.t")
    assert [e.key for e in entries] == ["k1", "k2", "k3"] and all(e.status == "processing" for e in entries)
    assert ledger.claim("s.t")[1] == []  # nothing is claimed twice
    assert list(ledger.processing_batches("s.t")) == [batch]
    ledger.finish_batch(batch, committed={"k1": (5, 0), "k2": (4, 4)}, failed={"k3": "k3: corrupt"}, snapshot_id=42,
                        set_aside={"k2": "k2: all 4 rows quarantined"})
    by_key = {e.key: e for e in ledger.entries("s.t")}
    assert (by_key["k1"].status, by_key["k1"].rows_read, by_key["k1"].snapshot_id) == ("committed", 5, 42)
    assert (by_key["k2"].status, by_key["k2"].reason) == ("quarantined", "k2: all 4 rows quarantined")
    assert (by_key["k3"].status, by_key["k3"].reason) == ("failed", "k3: corrupt")
    assert ledger.status_counts("s.t") == {"landed": 0, "processing": 0, "committed": 1, "failed": 1, "quarantined": 1,
                                           "duplicate": 0, "superseded": 0}
    assert ledger.tables_with_pending() == {"s.u": 1}
    assert ledger.retry_failed("s.t") == 1
    assert [e.key for e in ledger.claim("s.t")[1]] == ["k3"]


def test_unroutable_files_are_failed_until_a_table_claims_them(ledger):
    ledger.record([f("x/y/z/LOAD00000001.parquet", table=None, reason="no registry table for x.y.z")])
    [e] = ledger.unrouted()
    assert (e.status, e.reason) == ("failed", "no registry table for x.y.z")
    ledger.route(e.id, "x.z")
    assert ledger.unrouted() == [] and ledger.tables_with_pending() == {"x.z": 1}


def test_only_the_newest_version_of_a_key_is_claimed(ledger):
    ledger.record([f("k", "old")])
    ledger.record([f("k", "new")])
    _, entries = ledger.claim("s.t")
    assert [e.checksum for e in entries] == ["new"]
    [old] = [e for e in ledger.entries("s.t") if e.checksum == "old"]
    assert old.status == "superseded" and "superseded" in old.reason


def test_merges_exactly_once_with_the_postgres_ledger(pg_server, tmp_path):
    import datetime as dt

    from demo.dms_writer import cdc_file_name, load_file_name, write_dms_file
    from tests.lakehelpers import make_lake

    lake = make_lake(tmp_path, {"pg": """
        source: pg
        tables:
          - name: items
            schema: app
            primary_key: [id]
            columns: [{name: id, type: long}, {name: val, type: long}]
        """})
    lake.env.ledger = postgres_ledger(fresh_database(pg_server))
    cols = [("id", "long"), ("val", "long")]
    folder = lake.landing / "pg" / "app" / "items"
    write_dms_file(folder / load_file_name(1), [{"id": i, "val": 0} for i in range(5)], cols, cdc=False)
    write_dms_file(folder / cdc_file_name(dt.datetime(2026, 11, 21, 10)),
                   [{"Op": "U", "id": 1, "val": 1}, {"Op": "D", "id": 2, "val": 0}], cols, cdc=True)
    lake.ingest()
    lake.ingest()  # nothing new: no change
    write_dms_file(folder / load_file_name(1), [{"id": i, "val": 0} for i in range(5)], cols, cdc=False)  # re-delivered
    report, _ = lake.ingest()
    assert report.identical == 1 and report.content_duplicates == []
    assert sorted((r["id"], r["val"]) for r in lake.rows("pg.items")) == [(0, 0), (1, 1), (3, 0), (4, 0)]
    assert lake.env.ledger.status_counts("pg.items")["committed"] == 2
    assert len(lake.env.catalog.load_table("pg.items").metadata.snapshots) == 1
