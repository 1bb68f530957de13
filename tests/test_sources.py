"""Debezium files and file drops as an operator meets them: the example registry (the README's
YAML), bad input (broken JSON lines, wrong envelopes, zips of two files, empty snapshots),
truncates, appends, upserts, archiving, and the ingest command from a fresh LAKE_HOME."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lake_assets.core.arrivals import route
from lake_assets.core.deployment import REPO_ROOT, local_catalog
from lake_assets.core.ledger import COMMITTED, FAILED, sqlite_ledger
from lake_assets.core.registry import load_registry
from tests.lakehelpers import make_lake
from tests.test_ingest_command import ingest

EXAMPLES = Path(__file__).parent / "data" / "sources"

CDC = """
source: cdc
tables:
  - name: items
    schema: app
    format: debezium
    primary_key: [id]
    mode: {mode}
    columns:
      - {{name: id, type: long}}
      - {{name: val, type: long}}
"""


def event(op: str, lsn: int, before=None, after=None, schema: bool = False) -> str:
    e = {"op": op, "before": before, "after": after, "source": {"lsn": lsn, "ts_ms": 1}, "ts_ms": 2}
    return json.dumps({"schema": {"type": "struct"}, "payload": e} if schema else e)


def land(lake, key: str, data: bytes | str) -> Path:
    path = lake.landing / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def rows(lake, identifier: str, *columns: str) -> list[tuple]:
    return sorted(tuple(r[c] for c in columns) for r in lake.rows(identifier))


def quarantine(lake, identifier: str) -> list[tuple]:
    return sorted((r["file"], r["row"], r["reason"]) for r in lake.rows(identifier + "__quarantine"))


# --- the registry --------------------------------------------------------------------------------


def test_the_example_registry_files_load_and_are_the_readmes():
    registry = load_registry([EXAMPLES], strict=True, cache=False)
    got = {t.identifier: (t.format, t.load, t.mode, t.archive) for t in registry.tables}
    assert got == {
        "inventory.customers": ("debezium", "cdc", "current", False),
        "inventory.customer_events": ("debezium", "cdc", "history", False),
        "partners.hotels": ("csv", "snapshot", "current", True),
        "partners.clicks": ("jsonl", "append", "history", False),
        "partners.rates": ("parquet", "upsert", "current", False),
        "clickstream.clicks": ("jsonl", "events", "history", False),
    }
    readme = (REPO_ROOT / "README.md").read_text()
    for f in sorted(EXAMPLES.glob("*.yaml")):
        assert f.read_text() in readme, f"README.md does not show {f.name} as it is"


@pytest.mark.parametrize("entry, message", [
    ("format: debezium\n    sequence_by: id", "field sequence_by: Debezium changes are ordered by their source position"),
    ("format: debezium\n    mode: scd2\n    sequence_by: id", "field mode: a debezium table cannot be mode scd2"),
    ("format: jsonl", "field format: jsonl files carry rows, not changes"),
    ("format: debezium\n    load: snapshot", "field load: debezium files carry changes"),
    ("format: jsonl\n    load: snapshot\n    mode: history", "field mode: load snapshot keeps the table equal to the newest file"),
    ("format: jsonl\n    load: append", "field mode: load append appends every row once"),
    ("format: jsonl\n    allow_empty_snapshot: true\n    load: upsert", "field allow_empty_snapshot: only a load snapshot table"),
])
def test_a_format_and_load_that_do_not_fit_fail_at_load_naming_file_table_and_field(tmp_path, entry, message):
    (tmp_path / "bad.yaml").write_text(f"source: bad\ntables:\n  - name: items\n    schema: app\n    primary_key: [id]\n    {entry}\n")
    (error,) = load_registry([tmp_path], cache=False).errors
    assert error.message.startswith(f"{tmp_path / 'bad.yaml'}: table 'items': ") and message in error.message


def test_routing_asks_each_tables_format_and_dms_keys_route_as_before(tmp_path):
    lake = make_lake(tmp_path, {"cdc": CDC.format(mode="current"), "shop": SHOP_DMS})
    reg = lake.registry
    assert route("cdc/app/items/partition=0/items+0+0000000000.json", reg) == ("cdc.items", None)
    assert route("cdc/app/items/items+0+0000000000.json.gz", reg) == ("cdc.items", None)
    table, reason = route("cdc/app/items/LOAD00000001.parquet", reg)
    assert table is None and "a Debezium file's name ends in .json.gz" in reason and "table cdc.items" in reason
    assert route("shop/app/orders/LOAD00000001.parquet", reg) == ("shop.orders", None)
    assert route("shop/app/orders/20261121-101500123.csv", reg) == ("shop.orders", None)
    assert "file extension must be one of .csv.gz, .parquet, .csv (table shop.orders" in route("shop/app/orders/items.json", reg)[1]
    assert "no registry table for source 'nope'" in route("nope/app/t/LOAD00000001.parquet", reg)[1]


SHOP_DMS = """
source: shop
tables:
  - {name: orders, schema: app, primary_key: [id]}
"""

# --- Debezium --------------------------------------------------------------------------------------


def test_debezium_bad_lines_are_quarantined_with_file_row_and_reason_and_the_rest_merges(tmp_path):
    lake = make_lake(tmp_path, {"cdc": CDC.format(mode="current")})
    key = "cdc/app/items/items+0+0000000000.json"
    land(lake, key, "\n".join([
        event("c", 10, after={"id": 1, "val": 1}, schema=True),
        '{"op": "c", "after": {"id": 2',  # broken JSON
        json.dumps({"schema": {}, "payload": {"before": None, "after": {"id": 3, "val": 3}, "source": {"lsn": 11}}}),  # no op
        json.dumps(["not", "an", "envelope"]),
        event("x", 12, after={"id": 4, "val": 4}),
        json.dumps({"op": "c", "after": {"id": 5, "val": 5}, "source": {"connector": "postgresql"}}),  # no position
        event("d", 13),  # no before image
        "null",  # a tombstone: ignored, not a row
        event("c", 14, after={"id": 6, "val": "six"}),  # a value that does not fit
        event("u", 15, before={"id": 1}, after={"id": 1, "val": 11}),
        "",
    ]))
    _, runs = lake.ingest()
    assert rows(lake, "cdc.items", "id", "val") == [(1, 11)]
    reasons = [(row, reason) for _, row, reason in quarantine(lake, "cdc.items")]
    assert [r for r, _ in reasons] == [2, 3, 4, 5, 6, 7, 9]
    text = dict(reasons)
    assert text[2].startswith("line is not JSON") and "no op field" in text[3] and "a JSON list" in text[4]
    assert "unknown Debezium op 'x'" in text[5] and "no source position" in text[6]
    assert "op d without a before image" in text[7] and "does not fit column val" in text[9]
    [result] = runs["cdc.items"].results
    assert (result.rows_read, result.quarantined, result.inserted) == (9, 7, 1)


def test_an_unreadable_debezium_file_fails_alone(tmp_path):
    lake = make_lake(tmp_path, {"cdc": CDC.format(mode="current")})
    land(lake, "cdc/app/items/items+0+0000000000.json.gz", b"\x1f\x8b\x08\x00garbage")
    land(lake, "cdc/app/items/items+0+0000000001.json.gz", gzip.compress(event("c", 1, after={"id": 1, "val": 1}).encode()))
    _, runs = lake.ingest()
    assert rows(lake, "cdc.items", "id", "val") == [(1, 1)]
    failed = runs["cdc.items"].failed_files
    assert list(failed) == ["cdc/app/items/items+0+0000000000.json.gz"]
    assert "truncated or corrupt gzip" in failed["cdc/app/items/items+0+0000000000.json.gz"] and "table cdc.items" in \
        failed["cdc/app/items/items+0+0000000000.json.gz"]


def test_a_truncate_removes_every_row_with_a_lower_position_now_and_late(tmp_path):
    lake = make_lake(tmp_path, {"cdc": CDC.format(mode="current")})
    land(lake, "cdc/app/items/items+0+0000000000.json", "\n".join([
        event("r", 1, after={"id": 1, "val": 1}), event("c", 5, after={"id": 2, "val": 2}),
        event("c", 30, after={"id": 3, "val": 3}),  # after the truncate: it stays
    ]))
    lake.ingest()
    land(lake, "cdc/app/items/items+0+0000000003.json", "\n".join([
        event("t", 20), event("c", 21, after={"id": 4, "val": 4}), event("u", 19, after={"id": 3, "val": 99}),
    ]))
    _, runs = lake.ingest()
    assert rows(lake, "cdc.items", "id", "val") == [(3, 3), (4, 4)]
    [result] = runs["cdc.items"].results
    assert (result.deleted, result.inserted, result.tombstone_rejected) == (2, 1, 1)
    land(lake, "cdc/app/items/items+1+0000000000.json", event("c", 7, after={"id": 9, "val": 9}))  # late, below the truncate
    _, runs = lake.ingest()
    assert rows(lake, "cdc.items", "id", "val") == [(3, 3), (4, 4)]
    assert runs["cdc.items"].results[0].tombstone_rejected == 1


def test_a_history_table_appends_a_truncate(tmp_path):
    lake = make_lake(tmp_path, {"cdc": CDC.format(mode="history")})
    land(lake, "cdc/app/items/items+0+0000000000.json", "\n".join([event("c", 1, after={"id": 1, "val": 1}), event("t", 2)]))
    lake.ingest()
    assert rows(lake, "cdc.items", "_lake_op", "_lake_row") == [("I", 1), ("T", 2)]


# --- file drops -----------------------------------------------------------------------------------

DROPS = """
source: drops
defaults:
  csv: {{header: true}}
tables:
  - name: items
    schema: app
    format: csv
    load: snapshot
    archive: {archive}
    allow_empty_snapshot: {allow_empty}
    primary_key: [id]
    columns:
      - {{name: id, type: long}}
      - {{name: val, type: long}}
"""


def zip_of(*members: tuple[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in members:
            z.writestr(name, text)
    return buf.getvalue()


def test_a_snapshot_diff_gives_real_counts_and_leaves_unchanged_rows_alone(tmp_path):
    lake = make_lake(tmp_path, {"drops": DROPS.format(archive="false", allow_empty="false")})
    land(lake, "drops/app/items/items_2026-11-21.csv", "id,val\n1,1\n2,2\n3,3\n")
    lake.ingest()
    before = {r["id"]: r["_lake_batch_id"] for r in lake.rows("drops.items")}
    land(lake, "drops/app/items/items_2026-11-22.csv.zip", zip_of(("items.csv", "id,val\n1,1\n2,20\n4,4\n")))
    _, runs = lake.ingest()
    [r] = runs["drops.items"].results
    assert (r.inserted, r.updated, r.deleted) == (1, 1, 1)
    assert rows(lake, "drops.items", "id", "val") == [(1, 1), (2, 20), (4, 4)]
    assert {x["id"]: x["_lake_batch_id"] for x in lake.rows("drops.items")}[1] == before[1]  # not rewritten
    land(lake, "drops/app/items/items_2026-11-20.csv", "id,val\n7,7\n")  # an older day landing late: no effect
    _, runs = lake.ingest()
    assert rows(lake, "drops.items", "id", "val") == [(1, 1), (2, 20), (4, 4)]
    assert runs["drops.items"].results[0].stale_skipped == 1


def test_a_zip_of_two_files_and_an_empty_snapshot_fail_alone_and_stay_retryable(tmp_path):
    lake = make_lake(tmp_path, {"drops": DROPS.format(archive="false", allow_empty="false")})
    land(lake, "drops/app/items/items_2026-11-21.csv", "id,val\n1,1\n")
    lake.ingest()
    land(lake, "drops/app/items/items_2026-11-22.zip", zip_of(("a.csv", "id,val\n"), ("b.csv", "id,val\n")))
    land(lake, "drops/app/items/items_2026-11-23.csv", "id,val\n")
    _, runs = lake.ingest()
    failed = runs["drops.items"].failed_files
    assert "the zip holds 2 files (a.csv, b.csv); a file drop's zip must hold exactly one" in failed["drops/app/items/items_2026-11-22.zip"]
    empty = failed["drops/app/items/items_2026-11-23.csv"]
    assert "the snapshot file has no rows" in empty and "allow_empty_snapshot: true" in empty and "table drops.items" in empty
    assert rows(lake, "drops.items", "id", "val") == [(1, 1)]  # nothing deleted
    assert {e.key: e.status for e in lake.env.ledger.entries("drops.items")}["drops/app/items/items_2026-11-23.csv"] == FAILED


def test_an_allowed_empty_snapshot_empties_the_table(tmp_path):
    lake = make_lake(tmp_path, {"drops": DROPS.format(archive="false", allow_empty="true")})
    land(lake, "drops/app/items/items_2026-11-21.csv", "id,val\n1,1\n2,2\n")
    lake.ingest()
    land(lake, "drops/app/items/items_2026-11-22.csv", "id,val\n")
    _, runs = lake.ingest()
    assert lake.rows("drops.items") == [] and runs["drops.items"].results[0].deleted == 2


def test_a_corrupt_row_is_quarantined_and_does_not_delete_its_row(tmp_path):
    lake = make_lake(tmp_path, {"drops": DROPS.format(archive="false", allow_empty="false")})
    land(lake, "drops/app/items/items_2026-11-21.csv", "id,val\n1,1\n2,2\n3,3\n")
    lake.ingest()
    land(lake, "drops/app/items/items_2026-11-22.csv", "id,val\n1,1\n2,two\n")
    _, runs = lake.ingest()
    assert rows(lake, "drops.items", "id", "val") == [(1, 1), (2, 2)]  # 3 deleted, 2 kept: its new row is corrupt
    assert [(row, reason[:30]) for _, row, reason in quarantine(lake, "drops.items")] == [(2, "value 'two' does not fit colum")]
    assert runs["drops.items"].results[0].quarantined == 1


def test_archived_files_leave_the_landing_folder_and_the_ledger_says_where(tmp_path):
    lake = make_lake(tmp_path, {"drops": DROPS.format(archive="true", allow_empty="false")})
    land(lake, "drops/app/items/items_2026-11-21.csv", "id,val\n1,1\n")
    land(lake, "drops/app/items/items_2026-11-22.csv", "id,val\n2,2\n")
    report, _ = lake.ingest()
    assert rows(lake, "drops.items", "id", "val") == [(2, 2)]
    entries = {e.key: e for e in lake.env.ledger.entries("drops.items")}
    for key, e in entries.items():
        assert e.status == COMMITTED and e.archived_to == str(lake.landing / "_archive" / key)
        assert not (lake.landing / key).exists() and (lake.landing / "_archive" / key).exists()
    report, _ = lake.ingest()  # the archive is never listed as landed files
    assert report.total == 0 and report.unroutable == []


def test_an_old_ledger_gains_the_archived_to_column(tmp_path):
    import sqlite3

    path = tmp_path / "ledger.db"
    sqlite_ledger(path)
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE landed_files DROP COLUMN archived_to")
    con.commit()
    con.close()
    assert sqlite_ledger(path).entries() == []
    assert "archived_to" in {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(landed_files)")}


APPEND_UPSERT = """
source: feed
tables:
  - {name: clicks, schema: app, format: jsonl, load: append, mode: history, primary_key: [click_id]}
  - name: rates
    schema: app
    format: json
    load: upsert
    sequence_by: updated_at
    primary_key: [hotel_id]
    columns:
      - {name: hotel_id, type: long}
      - {name: rate, type: long}
      - {name: updated_at, type: timestamptz}
"""


def test_append_appends_every_row_once_and_upsert_keeps_the_newest_by_sequence(tmp_path):
    lake = make_lake(tmp_path, {"feed": APPEND_UPSERT})
    land(lake, "feed/app/clicks/2026/11/21/part-0001.jsonl", '{"click_id": 1, "page": "a"}\n{"click_id": 1, "page": "b"}\n')
    land(lake, "feed/app/rates/rates_2.json", json.dumps([{"hotel_id": 1, "rate": 100, "updated_at": "2026-11-21T10:00:00+00:00"}]))
    land(lake, "feed/app/rates/rates_1.json", json.dumps([{"hotel_id": 1, "rate": 90, "updated_at": "2026-11-21T12:00:00+02:00"},
                                                           {"hotel_id": 2, "rate": 50, "updated_at": None}]))
    lake.ingest()
    lake.ingest()  # nothing new: nothing appended twice
    assert rows(lake, "feed.clicks", "click_id", "page", "_lake_op") == [(1, "a", "I"), (1, "b", "I")]
    assert rows(lake, "feed.rates", "hotel_id", "rate") == [(1, 100)]  # 12:00+02:00 is before 10:00 UTC
    assert [r["reason"] for r in lake.rows("feed.rates__quarantine")] == ["sequence_by column updated_at is null: the change cannot be ordered"]


def test_a_parquet_drop_is_read_like_the_others(tmp_path):
    lake = make_lake(tmp_path, {"drops": DROPS.format(archive="false", allow_empty="false").replace("format: csv", "format: parquet")})
    buf = io.BytesIO()
    pq.write_table(pa.table({"ID": [1, 2], "val": [5, 6]}), buf)
    land(lake, "drops/app/items/items_2026-11-21.parquet.zip", _zip_bytes("x.parquet", buf.getvalue()))
    lake.ingest()
    assert rows(lake, "drops.items", "id", "val") == [(1, 5), (2, 6)]


def _zip_bytes(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, data)
    return buf.getvalue()


# --- end to end -----------------------------------------------------------------------------------


def test_the_ingest_command_takes_debezium_and_file_drops_from_a_fresh_lake_home(tmp_path):
    home, sdir = tmp_path / "lake", tmp_path / "sources"
    shutil.copytree(EXAMPLES, sdir)
    landing = home / "landing"
    topic = landing / "inventory" / "public" / "dbserver1.public.customers" / "partition=0"
    topic.mkdir(parents=True)
    (topic / "dbserver1.public.customers+0+0000000000.json").write_text("\n".join([
        event("r", 100, after={"id": 1, "name": "Ann", "email": "ann@example.com"}, schema=True),
        event("r", 100, after={"id": 2, "name": "Bob", "email": "bob@example.com"}, schema=True),
        event("u", 200, before={"id": 1}, after={"id": 1, "name": "Ann", "email": "ann@new.example.com"}, schema=True),
        event("d", 300, before={"id": 2, "name": None, "email": None}, schema=True), "null",
    ]) + "\n")
    hotels = landing / "partners" / "daily" / "hotels"
    hotels.mkdir(parents=True)
    (hotels / "hotels_2026-11-21.csv").write_text("hotel_id,name,stars\n1,Ritz,5\n2,Inn,2\n")
    out = ingest(home, sdir)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    (hotels / "hotels_2026-11-22.csv").write_text("hotel_id,name,stars\n1,Ritz,5\n3,Lodge,3\n")
    out = ingest(home, sdir)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    catalog = local_catalog(home)
    customers = catalog.load_table("inventory.customers").scan().to_arrow().to_pylist()
    assert [(r["id"], r["email"]) for r in customers] == [(1, "ann@new.example.com")]
    hotel_rows = sorted((r["hotel_id"], r["name"]) for r in catalog.load_table("partners.hotels").scan().to_arrow().to_pylist())
    assert hotel_rows == [(1, "Ritz"), (3, "Lodge")]
    ledger = sqlite_ledger(home / "ledger.db")
    archived = sorted(e.archived_to for e in ledger.entries("partners.hotels"))
    assert archived == [str(landing / "_archive/partners/daily/hotels" / n) for n in ("hotels_2026-11-21.csv", "hotels_2026-11-22.csv")]
    assert list(hotels.iterdir()) == []
