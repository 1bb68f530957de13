"""Bad input: every kind of broken delivery gets a reason, is set aside, and costs nothing committed.

Each test commits a baseline into two tables (one Parquet, one header-less gzip CSV with a null
marker), then lands one kind of bad input beside good files for both tables, and checks the ledger,
the run's output, the quarantine table and the exact rows. Failed files are then fixed or retried and
must arrive exactly once. Everything runs through the real ledger, landing zone, DMS reader, in-process
engine and Iceberg tables, merging each table on its own as the source-aligned assets do.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from demo.dms_writer import cdc_file_name, load_file_name, write_dms_file, write_raw
from lake_assets.core.arrivals import ArrivalReport, record_arrivals
from lake_assets.core.cdc.inprocess import InProcessEngine, MergeResult
from lake_assets.core.cdc.runner import MergeOptions, merge_pending
from lake_assets.core.ledger import COMMITTED, FAILED, QUARANTINED, SUPERSEDED, LedgerEntry
from tests.lakehelpers import TempLake, make_lake

SOURCE = """
source: shop
defaults:
  format: parquet
tables:
  - name: orders
    schema: app
    primary_key: [id]
    columns:
      - {name: id, type: long}
      - {name: amount, type: long}
      - {name: note, type: string}
  - name: events
    schema: app
    primary_key: [id]
    format: csv
    csv: {header: false, null_marker: "NULL"}
    columns:
      - {name: id, type: long}
      - {name: qty, type: int}
      - {name: label, type: string}
  # No declared columns: the table takes its schema from the Parquet files (schema drift cases).
  - name: accounts
    schema: app
    primary_key: [id]
"""

ORDERS, EVENTS, ACCOUNTS = "shop.orders", "shop.events", "shop.accounts"
FOLDER = {ORDERS: "shop/app/orders", EVENTS: "shop/app/events", ACCOUNTS: "shop/app/accounts"}
ORDERS_COLUMNS = [("id", "long"), ("amount", "long"), ("note", "string")]
EVENTS_COLUMNS = [("id", "long"), ("qty", "int"), ("label", "string")]
ACCOUNTS_COLUMNS = [("id", "long"), ("balance", "long")]

BASE_ORDERS = [(1, 10, "a"), (2, 20, "b"), (3, 30, None)]
BASE_EVENTS = [(1, 5, "x"), (2, 6, None)]
BASE_ACCOUNTS = [(1, 100), (2, 200)]

# One good CDC file per table, landed beside the bad input: it must merge all the same.
GOOD_ORDERS = [{"Op": "U", "id": 2, "amount": 21, "note": "b2"}, {"Op": "I", "id": 4, "amount": 40, "note": "d"}]
AFTER_GOOD_ORDERS = [(1, 10, "a"), (2, 21, "b2"), (3, 30, None), (4, 40, "d")]
GOOD_EVENTS = [{"Op": "D", "id": 1, "qty": 5, "label": "x"}, {"Op": "I", "id": 3, "qty": 7, "label": "y"}]
AFTER_GOOD_EVENTS = [(2, 6, None), (3, 7, "y")]

T0 = dt.datetime(2026, 11, 21, 10, 15, 0)


def cdc_name(minute: int) -> str:
    return cdc_file_name(T0 + dt.timedelta(minutes=minute))


# --- landing files -------------------------------------------------------------------------------


def _key(lake: TempLake, path: Path) -> str:
    return path.relative_to(lake.landing).as_posix()


def land_orders(lake: TempLake, name: str, rows: list[dict], *, cdc: bool = True, columns=ORDERS_COLUMNS) -> str:
    return _key(lake, write_dms_file(lake.landing / FOLDER[ORDERS] / name, rows, columns, fmt="parquet", cdc=cdc))


def land_events(lake: TempLake, name: str, rows: list[dict], *, cdc: bool = True) -> str:
    path = write_dms_file(
        lake.landing / FOLDER[EVENTS] / name, rows, EVENTS_COLUMNS, fmt="csv", gzip=True, null_marker="NULL", cdc=cdc
    )
    return _key(lake, path)


def land_accounts(lake: TempLake, name: str, rows: list[dict], *, cdc: bool = True, columns=ACCOUNTS_COLUMNS) -> str:
    return _key(lake, write_dms_file(lake.landing / FOLDER[ACCOUNTS] / name, rows, columns, fmt="parquet", cdc=cdc))


def land_raw(lake: TempLake, key: str, data: bytes) -> str:
    write_raw(lake.landing / key, data)
    return key


def parquet_bytes(table: pa.Table) -> bytes:
    """A hand-made Parquet file (values a DMS writer would refuse to write, e.g. an unknown Op)."""
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def csv_gz(text: str) -> bytes:
    return gzip.compress(text.encode(), mtime=0)


def touch_later(lake: TempLake, key: str) -> None:
    """A re-delivery rewrites the object: give it a new listing version even on coarse clocks."""
    p = lake.landing / key
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


# --- running and looking -------------------------------------------------------------------------


@dataclass
class Run:
    report: ArrivalReport
    results: dict[str, list[MergeResult]]
    errors: dict[str, str]  # table -> what the asset would report as its failure

    def failed_files(self, table_id: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for r in self.results.get(table_id, []):
            out.update(r.failed_files)
        return out

    def quarantined(self, table_id: str) -> int:
        return sum(r.quarantined for r in self.results.get(table_id, []))


def ingest(lake: TempLake, *, retry_failed: bool = False) -> Run:
    """Record arrivals and merge each table on its own: one table's failure never stops the others."""
    report = record_arrivals(lake.env.landing, lake.env.ledger, lake.registry)
    results: dict[str, list[MergeResult]] = {}
    errors: dict[str, str] = {}
    for t in lake.registry.tables:
        try:
            results[t.identifier] = merge_pending(
                t, catalog=lake.env.catalog, ledger=lake.env.ledger, landing=lake.env.landing,
                engine=InProcessEngine(), options=MergeOptions(retry_failed=retry_failed),
            ).results
        except Exception as e:  # noqa: BLE001 - the asset turns this into a Failure of this table only
            errors[t.identifier] = f"{type(e).__name__}: {e}"
    return Run(report, results, errors)


def orders(lake: TempLake) -> list[tuple]:
    return sorted((r["id"], r["amount"], r["note"]) for r in lake.rows(ORDERS))


def events(lake: TempLake) -> list[tuple]:
    return sorted((r["id"], r["qty"], r["label"]) for r in lake.rows(EVENTS))


def accounts(lake: TempLake, *extra: str) -> list[tuple]:
    return sorted(tuple(r[c] for c in ("id", "balance", *extra)) for r in lake.rows(ACCOUNTS))


def ledger_entries(lake: TempLake, key: str) -> list[LedgerEntry]:
    return [e for e in lake.env.ledger.entries() if e.key == key]


def only_entry(lake: TempLake, key: str) -> LedgerEntry:
    found = ledger_entries(lake, key)
    assert len(found) == 1, found
    return found[0]


def quarantine(lake: TempLake, table_id: str) -> list[dict]:
    rows = lake.rows(f"{table_id}__quarantine")
    return sorted(rows, key=lambda r: (r["file"], r["row"]))


def assert_quarantined(lake: TempLake, table_id: str, expected: list[tuple[str, int, list[str], dict]]) -> None:
    """The quarantine table holds exactly these rows: (file, row, words of the reason, raw values)."""
    got = quarantine(lake, table_id)
    assert [(r["file"], r["row"]) for r in got] == [(f, n) for f, n, _, _ in expected]
    for r, (_, _, words, raw) in zip(got, expected):
        for w in words:
            assert w in r["reason"], r["reason"]
        assert json.loads(r["raw"]) == raw
        assert r["batch_id"] and r["quarantined_at"] is not None


def snapshot_id(lake: TempLake, table_id: str) -> int:
    return lake.env.catalog.load_table(table_id).current_snapshot().snapshot_id


@pytest.fixture
def lake(tmp_path) -> TempLake:
    """A lake with a committed full load in both tables."""
    lake = make_lake(tmp_path, {"shop": SOURCE})
    land_orders(lake, load_file_name(1), [dict(zip(("id", "amount", "note"), r)) for r in BASE_ORDERS], cdc=False)
    land_events(lake, load_file_name(1), [dict(zip(("id", "qty", "label"), r)) for r in BASE_EVENTS], cdc=False)
    run = ingest(lake)
    assert run.errors == {} and run.failed_files(ORDERS) == {} and run.failed_files(EVENTS) == {}
    assert orders(lake) == BASE_ORDERS and events(lake) == BASE_EVENTS
    return lake


# --- whole files that cannot be read: failed, retryable ------------------------------------------


def test_corrupt_parquet_fails_the_file_and_its_rewrite_arrives_once(lake):
    good = land_orders(lake, cdc_name(1), GOOD_ORDERS)
    land_events(lake, cdc_name(1), GOOD_EVENTS)
    bad = land_raw(lake, f"{FOLDER[ORDERS]}/{cdc_name(2)}.parquet", b"PAR1" + bytes(range(256)) * 4 + b"PAR1")

    run = ingest(lake)

    assert run.errors == {}
    e = only_entry(lake, bad)
    assert e.status == FAILED
    assert bad in e.reason and "not a readable Parquet file" in e.reason
    assert run.failed_files(ORDERS) == {bad: e.reason}
    assert only_entry(lake, good).status == COMMITTED
    assert orders(lake) == AFTER_GOOD_ORDERS
    assert events(lake) == AFTER_GOOD_EVENTS

    # The producer rewrites the object with good bytes: the new version is recorded and merged.
    land_orders(lake, cdc_name(2), [{"Op": "U", "id": 3, "amount": 31, "note": "c"}])
    run = ingest(lake)
    assert run.errors == {}
    old, new = ledger_entries(lake, bad)
    assert (old.status, new.status, new.rows_read) == (FAILED, COMMITTED, 1)
    assert orders(lake) == [(1, 10, "a"), (2, 21, "b2"), (3, 31, "c"), (4, 40, "d")]

    # Retrying failed files (beside new traffic) neither revives the corrupt version nor repeats the new one.
    land_orders(lake, cdc_name(3), [{"Op": "D", "id": 1, "amount": 10, "note": "a"}])
    run = ingest(lake, retry_failed=True)
    assert run.errors == {}
    old, new = ledger_entries(lake, bad)
    assert (old.status, new.status) == (FAILED, COMMITTED) and bad in old.reason
    assert orders(lake) == [(2, 21, "b2"), (3, 31, "c"), (4, 40, "d")]
    assert events(lake) == AFTER_GOOD_EVENTS


def test_truncated_gzip_fails_the_file_and_a_complete_copy_arrives_once(lake):
    land_orders(lake, cdc_name(1), GOOD_ORDERS)
    good = land_events(lake, cdc_name(1), GOOD_EVENTS)
    later = [{"Op": "U", "id": 2, "qty": 60, "label": "z"}]
    full = (lake.landing / land_events(lake, cdc_name(2), later)).read_bytes()
    bad = land_raw(lake, f"{FOLDER[EVENTS]}/{cdc_name(2)}.csv.gz", full[: len(full) // 2])

    run = ingest(lake)

    assert run.errors == {}
    e = only_entry(lake, bad)
    assert e.status == FAILED
    assert bad in e.reason and "truncated or corrupt gzip" in e.reason
    assert run.failed_files(EVENTS) == {bad: e.reason}
    assert only_entry(lake, good).status == COMMITTED
    assert events(lake) == AFTER_GOOD_EVENTS
    assert orders(lake) == AFTER_GOOD_ORDERS

    # The producer delivers the complete file under a new name.
    fixed = land_events(lake, cdc_name(3), later)
    run = ingest(lake)
    assert run.errors == {}
    assert only_entry(lake, fixed).status == COMMITTED
    assert events(lake) == [(2, 60, "z"), (3, 7, "y")]

    # Retrying the failed files (beside new traffic) changes nothing: the truncated file fails again.
    land_events(lake, cdc_name(4), [{"Op": "I", "id": 9, "qty": 1, "label": "n"}])
    run = ingest(lake, retry_failed=True)
    assert run.errors == {}
    e = only_entry(lake, bad)
    assert e.status == FAILED and bad in e.reason and "gzip" in e.reason
    assert run.failed_files(EVENTS) == {bad: e.reason}
    assert events(lake) == [(2, 60, "z"), (3, 7, "y"), (9, 1, "n")]
    assert orders(lake) == AFTER_GOOD_ORDERS


@pytest.mark.parametrize("table_id", [ORDERS, EVENTS])
def test_zero_byte_file_fails_and_its_finished_upload_arrives_once(lake, table_id):
    ext = ".parquet" if table_id == ORDERS else ".csv.gz"
    read = orders if table_id == ORDERS else events
    land = land_orders if table_id == ORDERS else land_events
    good_rows, after = (GOOD_ORDERS, AFTER_GOOD_ORDERS) if table_id == ORDERS else (GOOD_EVENTS, AFTER_GOOD_EVENTS)
    land_orders(lake, cdc_name(1), GOOD_ORDERS)
    land_events(lake, cdc_name(1), GOOD_EVENTS)
    bad = land_raw(lake, f"{FOLDER[table_id]}/{cdc_name(2)}{ext}", b"")  # an upload still in progress

    run = ingest(lake)

    assert run.errors == {}
    e = only_entry(lake, bad)
    assert e.status == FAILED
    assert bad in e.reason and "zero-byte" in e.reason
    assert run.failed_files(table_id) == {bad: e.reason}
    assert orders(lake) == AFTER_GOOD_ORDERS and events(lake) == AFTER_GOOD_EVENTS

    # The upload finishes: same key, real content. It merges once, also when failed files are retried.
    finished = [{"Op": "I", "id": 8, "amount": 80, "qty": 8, "note": "h", "label": "h"}]
    land(lake, cdc_name(2), finished)
    run = ingest(lake)
    assert run.errors == {}
    old, new = ledger_entries(lake, bad)
    assert (old.status, new.status) == (FAILED, COMMITTED)
    assert read(lake) == after + [(8, 80, "h") if table_id == ORDERS else (8, 8, "h")]
    land(lake, cdc_name(3), [{"Op": "U", "id": 8, "amount": 81, "qty": 9, "note": "h", "label": "h"}])
    run = ingest(lake, retry_failed=True)
    assert run.errors == {}
    old, new = ledger_entries(lake, bad)
    assert (old.status, new.status) == (FAILED, COMMITTED) and bad in old.reason
    assert read(lake) == after + [(8, 81, "h") if table_id == ORDERS else (8, 9, "h")]
    other, other_after = (events, AFTER_GOOD_EVENTS) if table_id == ORDERS else (orders, AFTER_GOOD_ORDERS)
    assert other(lake) == other_after


@pytest.mark.parametrize("table_id", [ORDERS, EVENTS])
def test_empty_file_is_quarantined_with_a_reason_and_changes_nothing(lake, table_id):
    good_o = land_orders(lake, cdc_name(1), GOOD_ORDERS)
    good_e = land_events(lake, cdc_name(1), GOOD_EVENTS)
    # A well-formed file with no rows: Parquet with its schema only, or gzip of nothing.
    empty = land_orders(lake, cdc_name(2), []) if table_id == ORDERS else land_events(lake, cdc_name(2), [])
    assert (lake.landing / empty).stat().st_size > 0

    run = ingest(lake)

    assert run.errors == {}
    assert run.failed_files(ORDERS) == {} and run.failed_files(EVENTS) == {}
    assert only_entry(lake, good_o).status == COMMITTED and only_entry(lake, good_e).status == COMMITTED
    assert orders(lake) == AFTER_GOOD_ORDERS
    assert events(lake) == AFTER_GOOD_EVENTS
    e = only_entry(lake, empty)
    assert e.rows_read == 0
    assert e.status == QUARANTINED
    assert e.reason and empty in e.reason and "no rows" in e.reason


# --- bad rows: quarantined with file, row, reason and raw values; the rest of the file merges ----


def test_csv_rows_with_the_wrong_number_of_fields_are_quarantined(lake):
    land_orders(lake, cdc_name(1), GOOD_ORDERS)
    key = land_raw(lake, f"{FOLDER[EVENTS]}/{cdc_name(1)}.csv.gz", csv_gz("I,3,7,y\nI,4,8,z,extra\nU,2,9,NULL\nI,5,1\n"))

    run = ingest(lake)

    assert run.errors == {}
    e = only_entry(lake, key)
    assert (e.status, e.rows_read, e.quarantined_rows) == (COMMITTED, 4, 2)
    assert run.quarantined(EVENTS) == 2
    assert_quarantined(lake, EVENTS, [
        (key, 2, ["5 fields", "expected 4"], {"line": "I,4,8,z,extra"}),
        (key, 4, ["3 fields", "expected 4"], {"line": "I,5,1"}),
    ])
    assert events(lake) == [(1, 5, "x"), (2, 9, None), (3, 7, "y")]
    assert orders(lake) == AFTER_GOOD_ORDERS


def test_csv_full_load_whose_first_row_has_an_extra_field(lake):
    # Header-less full-load files may or may not carry Op (IncludeOpForFullLoad); one bad first row
    # must not decide that for the whole file.
    land_orders(lake, cdc_name(1), GOOD_ORDERS)
    key = land_raw(lake, f"{FOLDER[EVENTS]}/{load_file_name(2)}.csv.gz", csv_gz("3,7,y,extra\n4,8,z\n5,9,NULL\n"))

    run = ingest(lake)

    assert run.errors == {}
    e = only_entry(lake, key)
    assert (e.status, e.rows_read, e.quarantined_rows) == (COMMITTED, 3, 1)
    assert_quarantined(lake, EVENTS, [(key, 1, ["4 fields", "expected 3"], {"line": "3,7,y,extra"})])
    assert events(lake) == [(1, 5, "x"), (2, 6, None), (4, 8, "z"), (5, 9, None)]
    assert orders(lake) == AFTER_GOOD_ORDERS


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_null_key_rows_are_quarantined(lake, fmt):
    if fmt == "parquet":
        land_events(lake, cdc_name(1), GOOD_EVENTS)
        table_id = ORDERS
        rows = [{"Op": "I", "id": 5, "amount": 50, "note": "e"}, {"Op": "I", "id": None, "amount": 60, "note": "n"},
                {"Op": "U", "id": 1, "amount": 11, "note": "a2"}]
        key = land_orders(lake, cdc_name(1), rows)
        raw = {"Op": "I", "id": None, "amount": 60, "note": "n"}
        expected, other, other_after = [(1, 11, "a2"), (2, 20, "b"), (3, 30, None), (5, 50, "e")], events, AFTER_GOOD_EVENTS
    else:
        land_orders(lake, cdc_name(1), GOOD_ORDERS)
        table_id = EVENTS
        key = land_raw(lake, f"{FOLDER[EVENTS]}/{cdc_name(1)}.csv.gz", csv_gz("I,3,7,y\nI,NULL,9,w\nU,1,50,NULL\n"))
        raw = {"Op": "I", "id": None, "qty": "9", "label": "w"}
        expected, other, other_after = [(1, 50, None), (2, 6, None), (3, 7, "y")], orders, AFTER_GOOD_ORDERS

    run = ingest(lake)

    assert run.errors == {}
    e = only_entry(lake, key)
    assert (e.status, e.rows_read, e.quarantined_rows) == (COMMITTED, 3, 1)
    assert run.quarantined(table_id) == 1
    assert_quarantined(lake, table_id, [(key, 2, ["null primary key column id"], raw)])
    assert (orders if table_id == ORDERS else events)(lake) == expected
    assert other(lake) == other_after


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_unknown_op_rows_are_quarantined(lake, fmt):
    if fmt == "parquet":
        land_events(lake, cdc_name(1), GOOD_EVENTS)
        table_id = ORDERS
        t = pa.table({
            "Op": ["I", "X", "U"],
            "id": pa.array([5, 1, 2], pa.int64()),
            "amount": pa.array([50, 0, 22], pa.int64()),
            "note": ["e", "gone?", "b2"],
        })
        key = land_raw(lake, f"{FOLDER[ORDERS]}/{cdc_name(1)}.parquet", parquet_bytes(t))
        raw = {"Op": "X", "id": 1, "amount": 0, "note": "gone?"}
        expected, other, other_after = [(1, 10, "a"), (2, 22, "b2"), (3, 30, None), (5, 50, "e")], events, AFTER_GOOD_EVENTS
    else:
        land_orders(lake, cdc_name(1), GOOD_ORDERS)
        table_id = EVENTS
        key = land_raw(lake, f"{FOLDER[EVENTS]}/{cdc_name(1)}.csv.gz", csv_gz("I,3,7,y\nX,1,0,q\nU,2,9,NULL\n"))
        raw = {"Op": "X", "id": "1", "qty": "0", "label": "q"}
        expected, other, other_after = [(1, 5, "x"), (2, 9, None), (3, 7, "y")], orders, AFTER_GOOD_ORDERS

    run = ingest(lake)

    assert run.errors == {}
    e = only_entry(lake, key)
    assert (e.status, e.rows_read, e.quarantined_rows) == (COMMITTED, 3, 1)
    assert run.quarantined(table_id) == 1
    assert_quarantined(lake, table_id, [(key, 2, ["unknown Op 'X'"], raw)])
    assert (orders if table_id == ORDERS else events)(lake) == expected
    assert other(lake) == other_after


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_values_that_do_not_fit_the_column_type_are_quarantined(lake, fmt):
    if fmt == "parquet":
        land_events(lake, cdc_name(1), GOOD_EVENTS)
        table_id = ORDERS
        # The producer wrote amount as text; the registry declares long.
        t = pa.table({"Op": ["I", "I"], "id": pa.array([5, 6], pa.int64()), "amount": ["45", "n/a"], "note": ["e", "f"]})
        key = land_raw(lake, f"{FOLDER[ORDERS]}/{cdc_name(1)}.parquet", parquet_bytes(t))
        raw, words = {"Op": "I", "id": 6, "amount": "n/a", "note": "f"}, ["'n/a'", "column amount"]
        expected, other, other_after = BASE_ORDERS + [(5, 45, "e")], events, AFTER_GOOD_EVENTS
        rows_read = 2
    else:
        land_orders(lake, cdc_name(1), GOOD_ORDERS)
        table_id = EVENTS
        # 3,000,000,000 does not fit qty (int).
        key = land_raw(lake, f"{FOLDER[EVENTS]}/{cdc_name(1)}.csv.gz", csv_gz("I,3,3000000000,y\nI,4,8,z\n"))
        raw, words = {"Op": "I", "id": "3", "qty": "3000000000", "label": "y"}, ["'3000000000'", "column qty"]
        expected, other, other_after = BASE_EVENTS + [(4, 8, "z")], orders, AFTER_GOOD_ORDERS
        rows_read = 2
    bad_row = 2 if fmt == "parquet" else 1

    run = ingest(lake)

    assert run.errors == {}
    e = only_entry(lake, key)
    assert (e.status, e.rows_read, e.quarantined_rows) == (COMMITTED, rows_read, 1)
    assert run.quarantined(table_id) == 1
    assert_quarantined(lake, table_id, [(key, bad_row, words, raw)])
    assert (orders if table_id == ORDERS else events)(lake) == sorted(expected)
    assert other(lake) == other_after


def test_file_whose_every_row_is_bad_is_quarantined_with_a_reason(lake):
    good = land_orders(lake, cdc_name(1), GOOD_ORDERS)
    land_events(lake, cdc_name(1), GOOD_EVENTS)
    bad = land_orders(lake, cdc_name(2), [{"Op": "I", "id": None, "amount": 1, "note": "p"},
                                     {"Op": "U", "id": None, "amount": 2, "note": "q"}])

    run = ingest(lake)

    assert run.errors == {}
    assert only_entry(lake, good).status == COMMITTED
    assert orders(lake) == AFTER_GOOD_ORDERS and events(lake) == AFTER_GOOD_EVENTS
    assert_quarantined(lake, ORDERS, [
        (bad, 1, ["null primary key column id"], {"Op": "I", "id": None, "amount": 1, "note": "p"}),
        (bad, 2, ["null primary key column id"], {"Op": "U", "id": None, "amount": 2, "note": "q"}),
    ])
    e = only_entry(lake, bad)
    assert (e.status, e.rows_read, e.quarantined_rows) == (QUARANTINED, 2, 2)
    assert e.reason and bad in e.reason and "quarantine" in e.reason


# --- files that route nowhere: failed at arrival with a reason, picked up once fixed -------------


@pytest.mark.parametrize(
    "name, words",
    [
        ("orders_export.parquet", ["neither", "LOAD", "CDC"]),
        ("LOAD1.parquet", ["neither", "LOAD", "CDC"]),
        ("20261121-1015.parquet", ["neither", "LOAD", "CDC"]),
        (f"{load_file_name(2)}.json", ["extension"]),
    ],
)
def test_file_name_neither_load_nor_cdc_fails_at_arrival(lake, tmp_path, name, words):
    rows = [{"Op": "I", "id": 7, "amount": 70, "note": "g"}]
    content = write_dms_file(tmp_path / "staging" / "f", rows, ORDERS_COLUMNS, fmt="parquet", cdc=True).read_bytes()
    bad = land_raw(lake, f"{FOLDER[ORDERS]}/{name}", content)
    good = land_orders(lake, cdc_name(1), GOOD_ORDERS)
    land_events(lake, cdc_name(1), GOOD_EVENTS)

    run = ingest(lake)

    assert run.errors == {}
    unroutable = dict(run.report.unroutable)
    assert list(unroutable) == [bad]
    assert bad in unroutable[bad] and all(w in unroutable[bad] for w in words), unroutable[bad]
    e = only_entry(lake, bad)
    assert (e.status, e.table_id, e.reason) == (FAILED, None, unroutable[bad])
    assert only_entry(lake, good).status == COMMITTED
    assert orders(lake) == AFTER_GOOD_ORDERS and events(lake) == AFTER_GOOD_EVENTS

    # The producer lands the same changes under a DMS name: they arrive, once.
    fixed = land_raw(lake, f"{FOLDER[ORDERS]}/{cdc_name(2)}.parquet", content)
    run = ingest(lake, retry_failed=True)
    assert run.errors == {} and run.report.unroutable == []
    assert only_entry(lake, fixed).status == COMMITTED
    assert orders(lake) == AFTER_GOOD_ORDERS + [(7, 70, "g")]
    run = ingest(lake, retry_failed=True)
    assert run.errors == {} and run.report.unroutable == []
    assert only_entry(lake, bad).status == FAILED
    assert orders(lake) == AFTER_GOOD_ORDERS + [(7, 70, "g")]


REFUNDS = """
  - name: refunds
    schema: app
    primary_key: [id]
    columns:
      - {name: id, type: long}
      - {name: amount, type: long}
"""


def test_table_missing_from_the_registry_fails_at_arrival_and_routes_once_added(lake, tmp_path):
    refund_rows = [{"id": 1, "amount": 5}, {"id": 2, "amount": 7}]
    bad = land_raw(
        lake,
        f"shop/app/refunds/{load_file_name(1)}.parquet",
        write_dms_file(tmp_path / "staging" / "r", refund_rows, [("id", "long"), ("amount", "long")], cdc=False).read_bytes(),
    )
    land_orders(lake, cdc_name(1), GOOD_ORDERS)
    land_events(lake, cdc_name(1), GOOD_EVENTS)

    run = ingest(lake)

    assert run.errors == {}
    assert [k for k, _ in run.report.unroutable] == [bad]
    reason = dict(run.report.unroutable)[bad]
    assert bad in reason and "no registry table" in reason and "'refunds'" in reason
    e = only_entry(lake, bad)
    assert (e.status, e.table_id, e.reason) == (FAILED, None, reason)
    assert orders(lake) == AFTER_GOOD_ORDERS and events(lake) == AFTER_GOOD_EVENTS

    # The table is added to the registry: the waiting file routes to it and merges, once.
    lake = make_lake(tmp_path, {"shop": SOURCE + REFUNDS})
    run = ingest(lake)
    assert run.errors == {} and run.report.rerouted == 1
    assert only_entry(lake, bad).status == COMMITTED
    assert sorted((r["id"], r["amount"]) for r in lake.rows("shop.refunds")) == [(1, 5), (2, 7)]
    run = ingest(lake, retry_failed=True)
    assert run.errors == {} and run.report.rerouted == 0
    assert sorted((r["id"], r["amount"]) for r in lake.rows("shop.refunds")) == [(1, 5), (2, 7)]
    assert orders(lake) == AFTER_GOOD_ORDERS and events(lake) == AFTER_GOOD_EVENTS


# --- re-delivery -----------------------------------------------------------------------------------


def test_same_file_delivered_twice_is_merged_once(lake):
    key = land_orders(lake, cdc_name(1), GOOD_ORDERS)
    first = (lake.landing / key).read_bytes()
    report = record_arrivals(lake.env.landing, lake.env.ledger, lake.registry)
    assert report.recorded == {ORDERS: 1}
    # Delivered again before it was merged: same key, same bytes, a new object version.
    land_orders(lake, cdc_name(1), GOOD_ORDERS)
    touch_later(lake, key)
    assert (lake.landing / key).read_bytes() == first
    land_events(lake, cdc_name(1), GOOD_EVENTS)

    run = ingest(lake)

    assert run.errors == {}
    assert run.report.duplicates == 1
    assert only_entry(lake, key).status == COMMITTED
    assert orders(lake) == AFTER_GOOD_ORDERS and events(lake) == AFTER_GOOD_EVENTS
    snap = snapshot_id(lake, ORDERS)

    # Delivered a third time after it was merged: a no-op, reported as a duplicate.
    land_orders(lake, cdc_name(1), GOOD_ORDERS)
    touch_later(lake, key)
    run = ingest(lake, retry_failed=True)

    assert run.errors == {}
    assert run.report.duplicates == 1 and run.report.recorded == {}
    assert run.results[ORDERS] == []
    assert only_entry(lake, key).status == COMMITTED
    assert snapshot_id(lake, ORDERS) == snap
    assert orders(lake) == AFTER_GOOD_ORDERS and events(lake) == AFTER_GOOD_EVENTS


# --- schema drift --------------------------------------------------------------------------------


@pytest.fixture
def lake_with_accounts(lake) -> TempLake:
    land_accounts(lake, load_file_name(1), [{"id": i, "balance": b} for i, b in BASE_ACCOUNTS], cdc=False)
    run = ingest(lake)
    assert run.errors == {} and accounts(lake) == BASE_ACCOUNTS
    return lake


@pytest.mark.parametrize("table_id", [ORDERS, ACCOUNTS], ids=["declared-columns", "no-declared-columns"])
def test_new_column_is_added_and_older_rows_read_null(lake_with_accounts, table_id):
    lake = lake_with_accounts
    land_events(lake, cdc_name(1), GOOD_EVENTS)
    if table_id == ORDERS:
        key = land_orders(lake, cdc_name(1), [{"Op": "U", "id": 2, "amount": 21, "note": "b2", "channel": "web"},
                                         {"Op": "I", "id": 4, "amount": 40, "note": "d", "channel": None}],
                          columns=ORDERS_COLUMNS + [("channel", "string")])
        read = lambda: sorted((r["id"], r["amount"], r["note"], r["channel"]) for r in lake.rows(ORDERS))  # noqa: E731
        expected = [(1, 10, "a", None), (2, 21, "b2", "web"), (3, 30, None, None), (4, 40, "d", None)]
    else:
        key = land_accounts(lake, cdc_name(1), [{"Op": "U", "id": 2, "balance": 250, "channel": "web"},
                                           {"Op": "I", "id": 3, "balance": 300, "channel": None}],
                            columns=ACCOUNTS_COLUMNS + [("channel", "string")])
        read = lambda: accounts(lake, "channel")  # noqa: E731
        expected = [(1, 100, None), (2, 250, "web"), (3, 300, None)]

    run = ingest(lake)

    assert run.errors == {}
    assert only_entry(lake, key).status == COMMITTED
    assert [c for r in run.results[table_id] for c in r.schema_changes] == ["added column channel string"]
    assert "channel" in lake.env.catalog.load_table(table_id).schema().column_names
    assert read() == expected
    assert events(lake) == AFTER_GOOD_EVENTS


DECLARED_ACCOUNTS = SOURCE.replace(
    "  - name: accounts\n    schema: app\n    primary_key: [id]\n",
    "  - name: accounts\n    schema: app\n    primary_key: [id]\n"
    "    columns:\n      - {name: id, type: long}\n      - {name: balance, type: long}\n",
)
TEXT_BALANCE = [("id", "long"), ("balance", "string")]


@pytest.mark.parametrize(
    "beside_older_file",
    [
        False,
        True,
    ],
    ids=["drifted-file-alone", "beside-an-older-file"],
)
def test_incompatible_type_change_fails_the_tables_batch_and_is_retryable(lake_with_accounts, tmp_path, beside_older_file):
    lake = lake_with_accounts
    keys = [land_accounts(lake, cdc_name(1), [{"Op": "U", "id": 1, "balance": 110}])] if beside_older_file else []
    # The source changed balance from a number to text; the table (no declared columns) holds long.
    bad = land_accounts(lake, cdc_name(2), [{"Op": "I", "id": 3, "balance": "300"}], columns=TEXT_BALANCE)
    keys.append(bad)
    land_orders(lake, cdc_name(1), GOOD_ORDERS)
    land_events(lake, cdc_name(1), GOOD_EVENTS)
    snap = snapshot_id(lake, ACCOUNTS)

    run = ingest(lake)

    # The table's batch fails with a reason naming table, column and file; the other tables merge.
    assert list(run.errors) == [ACCOUNTS]
    message = run.errors[ACCOUNTS]
    assert "BatchFailed" in message and "shop.accounts" in message and "column balance" in message
    assert bad in message
    for key in keys:
        e = only_entry(lake, key)
        assert e.status == FAILED
        assert "shop.accounts" in e.reason and "column balance" in e.reason and bad in e.reason
    assert accounts(lake) == BASE_ACCOUNTS and snapshot_id(lake, ACCOUNTS) == snap
    assert orders(lake) == AFTER_GOOD_ORDERS and events(lake) == AFTER_GOOD_EVENTS

    # Without a fix, a retry fails the same way and loses nothing.
    run = ingest(lake, retry_failed=True)
    assert list(run.errors) == [ACCOUNTS] and "column balance" in run.errors[ACCOUNTS]
    assert [only_entry(lake, k).status for k in keys] == [FAILED] * len(keys)
    assert accounts(lake) == BASE_ACCOUNTS

    # The owner declares the column types: text that reads as a number now fits; the same bytes retry.
    lake = make_lake(tmp_path, {"shop": DECLARED_ACCOUNTS})
    run = ingest(lake, retry_failed=True)
    assert run.errors == {}
    assert [only_entry(lake, k).status for k in keys] == [COMMITTED] * len(keys)
    expected = [(1, 110 if beside_older_file else 100), (2, 200), (3, 300)]
    assert accounts(lake) == expected
    run = ingest(lake, retry_failed=True)
    assert run.errors == {}
    assert accounts(lake) == expected
    assert orders(lake) == AFTER_GOOD_ORDERS and events(lake) == AFTER_GOOD_EVENTS


def test_rows_quarantined_by_a_failed_batch_are_quarantined_once_after_retry(lake_with_accounts, tmp_path):
    lake = lake_with_accounts
    key = land_accounts(lake, cdc_name(1), [{"Op": "I", "id": None, "balance": "5"}, {"Op": "I", "id": 3, "balance": "300"}],
                        columns=TEXT_BALANCE)
    run = ingest(lake)
    assert list(run.errors) == [ACCOUNTS] and "column balance" in run.errors[ACCOUNTS]
    assert only_entry(lake, key).status == FAILED

    lake = make_lake(tmp_path, {"shop": DECLARED_ACCOUNTS})
    run = ingest(lake, retry_failed=True)

    assert run.errors == {}
    e = only_entry(lake, key)
    assert (e.status, e.rows_read, e.quarantined_rows) == (COMMITTED, 2, 1)
    assert accounts(lake) == [(1, 100), (2, 200), (3, 300)]
    assert_quarantined(lake, ACCOUNTS, [(key, 1, ["null primary key column id"], {"Op": "I", "id": None, "balance": "5"})])


# --- exactly once around failed files ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["retry-with-the-failed-version", "overwritten-before-merge"])
def test_new_version_of_a_key_claimed_with_its_old_version_is_committed_once(lake, how):
    key = f"{FOLDER[ORDERS]}/{cdc_name(1)}.parquet"
    if how == "retry-with-the-failed-version":
        land_orders(lake, cdc_name(0), GOOD_ORDERS)
        land_raw(lake, key, b"PAR1 not parquet PAR1")
        assert ingest(lake).failed_files(ORDERS).keys() == {key}
        expected = [(1, 10, "a"), (2, 22, "b3"), (3, 30, None), (4, 40, "d")]
    else:
        land_orders(lake, cdc_name(1), GOOD_ORDERS)
        assert record_arrivals(lake.env.landing, lake.env.ledger, lake.registry).recorded == {ORDERS: 1}
        expected = [(1, 10, "a"), (2, 22, "b3"), (3, 30, None)]
    land_orders(lake, cdc_name(1), [{"Op": "U", "id": 2, "amount": 22, "note": "b3"}])  # the new version
    touch_later(lake, key)

    run = ingest(lake, retry_failed=True)

    assert run.errors == {}
    old, new = ledger_entries(lake, key)
    # A version never merged is superseded by the newer one; a failed version stays failed.
    old_status = FAILED if how == "retry-with-the-failed-version" else SUPERSEDED
    assert old.status == old_status and key in old.reason
    assert (new.status, new.rows_read) == (COMMITTED, 1)
    assert orders(lake) == expected
    # The ledger agrees with the table: a further retry merges nothing again.
    snap = snapshot_id(lake, ORDERS)
    ingest(lake, retry_failed=True)
    assert [e.status for e in ledger_entries(lake, key)] == [old_status, COMMITTED]
    assert snapshot_id(lake, ORDERS) == snap


@pytest.mark.parametrize("how", ["only-pending-file", "retried-alone"])
def test_unreadable_file_alone_in_its_batch_fails_without_blocking_the_table(lake, how):
    bad = land_raw(lake, f"{FOLDER[ORDERS]}/{cdc_name(1)}.parquet", b"")
    land_events(lake, cdc_name(1), GOOD_EVENTS)
    if how == "retried-alone":
        land_orders(lake, cdc_name(2), GOOD_ORDERS)  # the first attempt has company
        assert ingest(lake).errors == {}
        assert orders(lake) == AFTER_GOOD_ORDERS
    run = ingest(lake, retry_failed=how == "retried-alone")

    assert run.errors == {}
    e = only_entry(lake, bad)
    assert e.status == FAILED and bad in e.reason and "zero-byte" in e.reason
    assert run.failed_files(ORDERS) == {bad: e.reason}
    assert lake.env.ledger.status_counts(ORDERS)["processing"] == 0
    assert events(lake) == AFTER_GOOD_EVENTS
    before = AFTER_GOOD_ORDERS if how == "retried-alone" else BASE_ORDERS
    assert orders(lake) == before
    # The table is not blocked: the next file merges.
    land_orders(lake, cdc_name(3), [{"Op": "I", "id": 9, "amount": 90, "note": "i"}])
    assert ingest(lake).errors == {}
    assert orders(lake) == sorted(before + [(9, 90, "i")])


def test_unreadable_first_file_of_a_new_table_creates_nothing(lake):
    bad = land_raw(lake, f"{FOLDER[ACCOUNTS]}/{load_file_name(1)}.parquet", b"PAR1 not parquet PAR1")
    land_orders(lake, cdc_name(1), GOOD_ORDERS)

    run = ingest(lake)

    assert run.errors == {}
    e = only_entry(lake, bad)
    assert e.status == FAILED and bad in e.reason and "not a readable Parquet file" in e.reason
    assert not lake.env.catalog.table_exists(ACCOUNTS)  # no table with a schema guessed from nothing
    assert orders(lake) == AFTER_GOOD_ORDERS
    # The producer rewrites the full load: the table is created from it, with its columns.
    land_accounts(lake, load_file_name(1), [{"id": i, "balance": b} for i, b in BASE_ACCOUNTS], cdc=False)
    assert ingest(lake).errors == {}
    assert accounts(lake) == BASE_ACCOUNTS
    assert [e.status for e in ledger_entries(lake, bad)] == [FAILED, COMMITTED]
