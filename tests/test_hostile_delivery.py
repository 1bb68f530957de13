"""Deliveries real DMS tasks, S3 and producers make, one class at a time (issue: no silent loss).

Each test lands files as a pipeline would, ingests through the real ledger, runner, reader, pipeline
and Iceberg tables, and checks the exact rows, the ledger and the reasons. The random mixture of all
of them is tests/test_cdc_contract.py; this file pins each class so that breaking its rule fails a
test with a readable name.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import pytest

from demo.dms_writer import cdc_file_name, load_file_name, write_dms_file, write_raw
from lake_assets.core.cdc.iceberg import TableDefinitionError
from lake_assets.core.cdc.inprocess import InProcessEngine
from lake_assets.core.cdc.runner import BatchFailed, MergeOptions, merge_pending
from lake_assets.core.ledger import COMMITTED, DUPLICATE, FAILED, LANDED, PROCESSING
from tests.lakehelpers import TempLake, make_lake

SOURCE = """
source: shop
defaults: {format: parquet}
tables:
  - name: orders          # ordered by a numeric string, as DMS's $AR_H_CHANGE_SEQ
    schema: app
    primary_key: [id]
    sequence_by: seq
    columns:
      - {name: seq, type: string}
      - {name: id, type: long}
      - {name: amount, type: long}
  - name: plain           # no sequence_by: file order, version, row
    schema: app
    primary_key: [id]
    columns:
      - {name: id, type: long}
      - {name: amount, type: long}
  - name: events          # header-less gzip CSV ordered by an instant
    schema: app
    primary_key: [id]
    sequence_by: at
    format: csv
    csv: {header: false, null_marker: "NULL"}
    columns:
      - {name: at, type: timestamptz}
      - {name: id, type: long}
      - {name: label, type: string}
"""
ORDERS, PLAIN, EVENTS = "shop.orders", "shop.plain", "shop.events"
ORDER_COLUMNS = [("seq", "string"), ("id", "long"), ("amount", "long")]
PLAIN_COLUMNS = [("id", "long"), ("amount", "long")]
EVENT_COLUMNS = [("at", "timestamptz"), ("id", "long"), ("label", "string")]
T0 = dt.datetime(2026, 11, 21, 10, 15, 0)


def cdc(minute: int) -> str:
    return cdc_file_name(T0 + dt.timedelta(minutes=minute))


@pytest.fixture
def lake(tmp_path) -> TempLake:
    return make_lake(tmp_path, {"shop": SOURCE})


def land(lake: TempLake, table: str, name: str, rows: list[dict], *, load: bool = False) -> Path:
    folder = lake.landing / "shop" / "app" / table.split(".")[1]
    if table == EVENTS:
        return write_dms_file(folder / name, rows, EVENT_COLUMNS, fmt="csv", gzip=True, null_marker="NULL", cdc=not load)
    columns = ORDER_COLUMNS if table == ORDERS else PLAIN_COLUMNS
    path = write_dms_file(folder / name, rows, columns, fmt="parquet", cdc=not load)
    return path


def later(path: Path) -> None:
    """A rewrite of an object gets a new listing version even where the clock is coarse."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def rows(lake: TempLake, table: str, *columns: str) -> list[tuple]:
    return sorted(tuple(r[c] for c in columns) for r in lake.rows(table))


def plain(lake: TempLake) -> list[tuple]:
    return rows(lake, PLAIN, "id", "amount")


def entries(lake: TempLake, table: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in lake.env.ledger.entries(table):
        out.setdefault(e.key.rsplit("/", 1)[1], []).append(e.status)
    return out


def quarantine(lake: TempLake, table: str) -> list[dict]:
    if not lake.env.catalog.table_exists(f"{table}__quarantine"):
        return []
    return sorted(lake.rows(f"{table}__quarantine"), key=lambda r: (r["file"], r["row"]))


def ingest(lake: TempLake, **options):
    return lake.ingest(**options)


def L(*pairs) -> list[dict]:  # full-load rows
    return [{"id": i, "amount": a} for i, a in pairs]


# --- 1. full loads ------------------------------------------------------------------------------


def test_a_later_numbered_load_file_merged_first_is_kept_when_the_first_arrives(lake):
    land(lake, PLAIN, load_file_name(2), L((3, 30), (4, 40)), load=True)
    ingest(lake)
    land(lake, PLAIN, load_file_name(1), L((1, 10), (2, 20)), load=True)
    ingest(lake)
    assert plain(lake) == [(1, 10), (2, 20), (3, 30), (4, 40)]


def test_load_file_numbered_zero_joins_the_current_load(lake):
    land(lake, PLAIN, load_file_name(1), L((1, 10)), load=True)
    ingest(lake)
    land(lake, PLAIN, "LOAD00000000", L((2, 20)), load=True)
    ingest(lake)
    assert plain(lake) == [(1, 10), (2, 20)]


def test_identical_redelivery_of_a_load_file_changes_nothing(lake):
    path = land(lake, PLAIN, load_file_name(1), L((1, 10), (2, 20)), load=True)
    ingest(lake)
    land(lake, PLAIN, cdc(1), [{"Op": "U", "id": 1, "amount": 11}, {"Op": "D", "id": 2, "amount": 20}])
    ingest(lake)
    snapshot = lake.env.catalog.load_table(PLAIN).current_snapshot().snapshot_id
    later(path)  # the same bytes landed again
    ingest(lake)
    assert plain(lake) == [(1, 11)]
    assert lake.env.catalog.load_table(PLAIN).current_snapshot().snapshot_id == snapshot


def test_a_load_file_landing_after_cdc_never_overwrites_a_change_nor_undoes_a_delete(lake):
    land(lake, PLAIN, load_file_name(1), L((1, 10)), load=True)
    land(lake, PLAIN, cdc(1), [{"Op": "U", "id": 1, "amount": 11}, {"Op": "I", "id": 2, "amount": 21},
                               {"Op": "D", "id": 2, "amount": 21}, {"Op": "I", "id": 3, "amount": 31}])
    ingest(lake)
    land(lake, PLAIN, load_file_name(2), L((1, 99), (2, 99), (3, 99), (4, 40)), load=True)  # a parallel upload, late
    ingest(lake)
    assert plain(lake) == [(1, 11), (3, 31), (4, 40)]


def test_a_new_version_of_a_load_file_in_the_current_load_reloads_the_table(lake):
    first = land(lake, PLAIN, load_file_name(1), L((1, 10), (2, 20)), load=True)
    land(lake, PLAIN, load_file_name(2), L((3, 30)), load=True)
    land(lake, PLAIN, cdc(1), [{"Op": "U", "id": 1, "amount": 11}, {"Op": "D", "id": 3, "amount": 30}])
    ingest(lake)
    assert plain(lake) == [(1, 11), (2, 20)]
    # DMS reloads the table: LOAD00000001 is rewritten with the source's rows of now.
    land(lake, PLAIN, load_file_name(1), L((2, 22), (5, 50)), load=True)
    later(first)
    _, runs = ingest(lake)
    assert [r.reload for r in runs[PLAIN].results] == [True]
    assert plain(lake) == [(2, 22), (5, 50)]  # nothing of the old load survives
    # The rest of the new load joins it, and CDC after it applies.
    land(lake, PLAIN, load_file_name(2), L((6, 60)), load=True)
    land(lake, PLAIN, cdc(2), [{"Op": "D", "id": 5, "amount": 50}])
    ingest(lake)
    assert plain(lake) == [(2, 22), (6, 60)]


def test_the_current_load_remembers_every_member_across_batches(lake):
    """Members joined in separate batches, with CDC batches between, all stay in the current load:
    a new version of any of them reloads."""
    land(lake, PLAIN, load_file_name(2), L((2, 20)), load=True)
    third = land(lake, PLAIN, load_file_name(3), L((3, 30)), load=True)
    ingest(lake)
    land(lake, PLAIN, cdc(1), [{"Op": "U", "id": 2, "amount": 22}])
    ingest(lake)
    land(lake, PLAIN, load_file_name(7), L((7, 70)), load=True)
    _, runs = ingest(lake)
    assert [r.reload for r in runs[PLAIN].results] == [False]
    assert plain(lake) == [(2, 22), (3, 30), (7, 70)]
    land(lake, PLAIN, load_file_name(3), L((3, 33), (4, 40)), load=True)  # DMS reloads the table
    later(third)
    _, runs = ingest(lake)
    assert [r.reload for r in runs[PLAIN].results] == [True]
    assert plain(lake) == [(3, 33), (4, 40)]


def test_an_operator_reload_replaces_the_table_with_the_next_load_files(lake):
    land(lake, PLAIN, load_file_name(1), L((1, 10), (2, 20)), load=True)
    ingest(lake)
    _, runs = ingest(lake, reload=True)  # nothing to reload from yet: the request waits
    assert plain(lake) == [(1, 10), (2, 20)]
    land(lake, PLAIN, load_file_name(7), L((3, 30)), load=True)  # a name never seen: would only join
    _, runs = ingest(lake)
    assert [r.reload for r in runs[PLAIN].results] == [True]
    assert plain(lake) == [(3, 30)]
    land(lake, PLAIN, load_file_name(8), L((4, 40)), load=True)
    ingest(lake)
    assert plain(lake) == [(3, 30), (4, 40)]  # the request was used once


def test_a_reload_leaves_no_tombstone_of_the_old_load(lake):
    land(lake, PLAIN, cdc(1), [{"Op": "D", "id": 5, "amount": 0}])  # a delete of a key the table lacks: a tombstone
    ingest(lake)
    ingest(lake, reload=True)
    land(lake, PLAIN, load_file_name(1), L((1, 10)), load=True)
    _, runs = ingest(lake)
    assert [r.reload for r in runs[PLAIN].results] == [True]
    land(lake, PLAIN, load_file_name(2), L((5, 50)), load=True)  # the rest of the new load
    _, runs = ingest(lake)
    assert plain(lake) == [(1, 10), (5, 50)]  # nothing of the old load survives, its tombstones included
    assert [r.tombstone_rejected for r in runs[PLAIN].results] == [0]


# --- 2. sequences -------------------------------------------------------------------------------


def O(op, i, amount, seq):  # noqa: E743 - an order change, short so the histories read as rows
    return {"Op": op, "id": i, "amount": amount, "seq": seq}


def orders(lake):
    return rows(lake, ORDERS, "id", "amount")


@pytest.mark.parametrize("low, high", [("9", "10"), ("-2.00", "-1.00"), ("-10", "3"), ("99999999999999999999999999999999998",
                                                                                         "99999999999999999999999999999999999")])
def test_sequences_compare_as_numbers_within_and_across_batches(lake, low, high):
    # Within one batch, and with the file names contradicting the sequence.
    land(lake, ORDERS, cdc(1), [O("I", 1, 2, high)])
    land(lake, ORDERS, cdc(2), [O("I", 1, 1, low)])
    ingest(lake)
    assert orders(lake) == [(1, 2)]
    # Across batches: the older change arrives after the newer one is merged.
    land(lake, ORDERS, cdc(3), [O("I", 2, 2, high)])
    ingest(lake)
    land(lake, ORDERS, cdc(4), [O("U", 2, 1, low)])
    ingest(lake)
    assert orders(lake) == [(1, 2), (2, 2)]


def test_one_junk_sequence_value_is_a_bad_row_and_the_rest_still_compare_as_numbers(lake):
    land(lake, ORDERS, cdc(1), [O("I", 1, 10, "10"), O("I", 2, 20, "abc"), O("I", 3, 30, "")])
    land(lake, ORDERS, cdc(2), [O("U", 1, 9, "9")])
    ingest(lake)
    assert orders(lake) == [(1, 10)]
    q = quarantine(lake, ORDERS)
    assert [(r["row"], "not a number" in r["reason"]) for r in q] == [(2, True), (3, True)]


def test_a_null_sequence_is_a_bad_row_not_a_late_change(lake):
    land(lake, ORDERS, cdc(1), [O("I", 1, 10, "1"), O("I", 2, 20, "1")])
    ingest(lake)
    land(lake, ORDERS, cdc(2), [O("D", 1, 10, None), O("U", 2, 21, None)])
    ingest(lake)
    assert orders(lake) == [(1, 10), (2, 20)]
    assert [("null" in r["reason"], r["row"]) for r in quarantine(lake, ORDERS)] == [(True, 1), (True, 2)]


def test_a_file_without_the_sequence_by_column_fails_alone_with_the_reason(lake):
    land(lake, ORDERS, cdc(1), [O("I", 1, 10, "5")])
    bad = write_dms_file(lake.landing / "shop/app/orders" / cdc(2), [{"Op": "U", "id": 1, "amount": 99}],
                         [("id", "long"), ("amount", "long")], fmt="parquet", cdc=True)
    ingest(lake)
    assert orders(lake) == [(1, 10)]
    (failed,) = [e for e in lake.env.ledger.entries(ORDERS) if e.key.endswith(bad.name)]
    assert failed.status == FAILED and "sequence_by column 'seq' is missing" in failed.reason and ORDERS in failed.reason


def test_instants_with_time_zones_compare_as_instants(lake):
    # 10:30+02:00 is 08:30 UTC: older than 09:00Z although its text is larger.
    land(lake, EVENTS, cdc(1), [{"Op": "I", "id": 1, "label": "new", "at": "2026-11-21 09:00:00+00:00"}])
    land(lake, EVENTS, cdc(2), [{"Op": "U", "id": 1, "label": "old", "at": "2026-11-21 10:30:00+02:00"}])
    ingest(lake)
    assert rows(lake, EVENTS, "id", "label") == [(1, "new")]


LOOSE = """
source: shop
defaults: {format: parquet}
tables:
  - name: loose           # no declared columns: the sequence's kind comes from the files
    schema: app
    primary_key: [id]
    sequence_by: seq
"""


@pytest.mark.parametrize("same_batch", [False, True], ids=["table-kind", "first-file-kind"])
def test_a_file_ordering_by_another_kind_fails_alone_naming_both(tmp_path, same_batch):
    lake = make_lake(tmp_path, {"shop": LOOSE})
    folder = lake.landing / "shop/app/loose"
    numbers = [("seq", "long"), ("id", "long"), ("amount", "long")]
    write_dms_file(folder / cdc(1), [O("I", 1, 10, 5)], numbers, cdc=True)
    if not same_batch:
        ingest(lake)  # the table now orders by numbers
    write_dms_file(folder / cdc(2), [O("U", 1, 11, 6)], numbers, cdc=True)
    bad = write_dms_file(folder / cdc(3), [O("U", 1, 99, T0)], [("seq", "timestamp"), ("id", "long"), ("amount", "long")],
                         cdc=True)
    ingest(lake)
    assert rows(lake, "shop.loose", "id", "amount") == [(1, 11)]
    (failed,) = lake.env.ledger.entries("shop.loose", FAILED)
    assert failed.key.endswith(bad.name) and "shop.loose" in failed.reason
    assert "timestamp" in failed.reason and "orders its changes by numbers" in failed.reason


def test_a_late_change_is_rejected_by_a_tombstone_only_while_the_key_stays_deleted(lake):
    from lake_assets.core.naming import tombstone_identifier

    land(lake, ORDERS, cdc(1), [O("I", 1, 10, "1"), O("I", 2, 20, "1")])
    ingest(lake)
    land(lake, ORDERS, cdc(2), [O("D", 1, 10, "10"), O("D", 2, 20, "10")])
    ingest(lake)
    land(lake, ORDERS, cdc(3), [O("I", 2, 22, "20")])  # key 2 comes back: its row now guards it
    ingest(lake)
    tombstones = lake.rows(tombstone_identifier("shop", "orders"))
    assert [r["id"] for r in tombstones] == [1]
    land(lake, ORDERS, cdc(4), [O("U", 1, 11, "5"), O("U", 2, 21, "5")])  # both older than the delete
    _, runs = ingest(lake)
    assert orders(lake) == [(2, 22)]
    (r,) = runs[ORDERS].results
    assert (r.tombstone_rejected, r.stale_skipped, r.updated) == (1, 1, 0)


def _merger(lake):
    """merge(name, changes, batch_id, days): land one orders file and merge it alone, `days` after a fixed start."""
    from lake_assets.core.cdc.batch import LandedInput
    from lake_assets.core.cdc.dms import parse_landing_key

    table = lake.registry.get("shop", "orders")
    engine, t0 = InProcessEngine(), dt.datetime(2026, 11, 21, 12, tzinfo=dt.UTC)

    def merge(name, changes, batch_id, days):
        path = land(lake, ORDERS, name, changes)
        key = path.relative_to(lake.landing).as_posix()
        return engine.merge(lake.env.catalog, table, [LandedInput(parse_landing_key(key), path.read_bytes())], batch_id,
                            now=t0 + dt.timedelta(days=days))

    return merge


def test_a_tombstone_is_kept_for_the_retention_period_only(lake):
    """tombstone_retention_days (7 by default) bounds the tombstone table: a delete older than that
    no longer guards its key, so a change landing even later than that applies."""
    assert lake.registry.get("shop", "orders").tombstone_retention_days == 7
    merge = _merger(lake)
    merge(cdc(1), [O("I", 1, 10, "1"), O("I", 2, 20, "1")], "b0", 0)
    merge(cdc(2), [O("D", 1, 10, "10"), O("D", 2, 20, "10")], "b1", 0)
    merge(cdc(3), [O("I", 3, 30, "30")], "b2", 6)  # each batch drops the tombstones past the retention period
    assert merge(cdc(4), [O("I", 1, 11, "5")], "b3", 6).tombstone_rejected == 1  # not yet
    merge(cdc(5), [O("I", 4, 40, "40")], "b4", 8)
    late = merge(cdc(6), [O("I", 2, 21, "5")], "b5", 8)
    assert (late.tombstone_rejected, late.inserted) == (0, 1)
    assert orders(lake) == [(2, 21), (3, 30), (4, 40)]


def test_an_expired_tombstone_guards_nothing_even_before_a_batch_drops_it(lake):
    merge = _merger(lake)
    merge(cdc(1), [O("I", 1, 10, "1"), O("D", 1, 10, "10")], "b0", 0)
    late = merge(cdc(2), [O("I", 1, 11, "5")], "b1", 30)  # the first batch after the tombstone expired
    assert (late.tombstone_rejected, late.inserted) == (0, 1)
    assert orders(lake) == [(1, 11)]


def test_a_crash_between_commit_and_ledger_keeps_an_all_quarantined_file_quarantined(lake):
    class Died(BaseException):  # what SIGKILL does to the runner, without killing the test
        pass

    def die_after_commit(name):
        if name == "after_commit":
            raise Died()

    land(lake, ORDERS, cdc(1), [O("I", 1, 10, "1")])
    bad = land(lake, ORDERS, cdc(2), [O("I", 2, 20, None), O("I", 3, 30, "junk")])
    from lake_assets.core.arrivals import record_arrivals

    record_arrivals(lake.env.landing, lake.env.ledger, lake.registry)
    table = lake.registry.get("shop", "orders")
    with pytest.raises(Died):
        merge_pending(table, catalog=lake.env.catalog, ledger=lake.env.ledger, landing=lake.env.landing,
                      engine=InProcessEngine(), failpoint=die_after_commit)
    run = merge_pending(table, catalog=lake.env.catalog, ledger=lake.env.ledger, landing=lake.env.landing,
                        engine=InProcessEngine())
    assert [r.already_committed for r in run.results] == [True]
    statuses = {e.key.rsplit("/", 1)[1]: (e.status, e.rows_read, e.quarantined_rows) for e in lake.env.ledger.entries(ORDERS)}
    assert statuses == {cdc(1) + ".parquet": (COMMITTED, 1, 0), bad.name: ("quarantined", 2, 2)}


def test_a_35_digit_sequence_declared_long_is_a_bad_row_naming_the_column(tmp_path):
    source = SOURCE.replace("{name: seq, type: string}", "{name: seq, type: long}")
    lake = make_lake(tmp_path, {"shop": source})
    land(lake, ORDERS, cdc(1), [O("I", 1, 10, "20261121101500000000000000000000001")])
    ingest(lake)
    (q,) = quarantine(lake, ORDERS)
    assert "does not fit" in q["reason"] and "seq" in q["reason"]


# --- 3. file versions ---------------------------------------------------------------------------


def test_a_cdc_file_relanded_with_corrected_rows_applies_the_correction(lake):
    path = land(lake, PLAIN, cdc(1), [{"Op": "I", "id": 1, "amount": 10}, {"Op": "I", "id": 2, "amount": 20}])
    ingest(lake)
    land(lake, PLAIN, cdc(1), [{"Op": "I", "id": 1, "amount": 11}, {"Op": "I", "id": 2, "amount": 20}])
    later(path)
    ingest(lake)
    assert plain(lake) == [(1, 11), (2, 20)]
    assert sorted(e.file_version for e in lake.env.ledger.entries(PLAIN)) == [1, 2]
    # A newer file still wins over the corrected one.
    land(lake, PLAIN, cdc(2), [{"Op": "U", "id": 1, "amount": 12}])
    ingest(lake)
    assert plain(lake) == [(1, 12), (2, 20)]


def test_a_csv_read_while_still_being_written_is_corrected_by_the_full_file(lake):
    full = "\n".join(f"I,2026-11-21 09:0{i}:00.000000+00:00,{i},label {i}" for i in range(1, 4)) + "\n"
    key = "shop/app/events/" + cdc(1) + ".csv"
    write_raw(lake.landing / key, full[: full.index("label 2") + 3].encode())  # cut inside row 2
    ingest(lake)
    write_raw(lake.landing / key, full.encode())
    later(lake.landing / key)
    ingest(lake)
    assert rows(lake, EVENTS, "id", "label") == [(1, "label 1"), (2, "label 2"), (3, "label 3")]


def test_a_file_still_changing_is_not_read_before_it_settles(lake):
    from lake_assets.core.arrivals import record_arrivals

    land(lake, PLAIN, cdc(1), [{"Op": "I", "id": 1, "amount": 10}])
    report = record_arrivals(lake.env.landing, lake.env.ledger, lake.registry, settle_seconds=30)
    assert report.settling == 1 and lake.env.ledger.entries(PLAIN) == []
    report = record_arrivals(lake.env.landing, lake.env.ledger, lake.registry, settle_seconds=30, now=time.time() + 60)
    assert report.settling == 0 and len(lake.env.ledger.entries(PLAIN)) == 1


# --- 4. duplicate content -----------------------------------------------------------------------


def test_an_earlier_files_bytes_under_a_later_name_are_a_duplicate_and_not_merged(lake):
    first = land(lake, PLAIN, cdc(1), [{"Op": "I", "id": 1, "amount": 10}])
    ingest(lake)
    land(lake, PLAIN, cdc(2), [{"Op": "U", "id": 1, "amount": 11}])
    ingest(lake)
    copy = lake.landing / "shop/app/plain" / (cdc(3) + ".parquet")
    copy.write_bytes(first.read_bytes())
    report, _ = ingest(lake)
    assert plain(lake) == [(1, 11)]
    assert entries(lake, PLAIN)[copy.name] == [DUPLICATE]


# --- 5. wedged tables ---------------------------------------------------------------------------


def test_an_unexpected_error_on_one_file_fails_it_alone_and_the_others_merge(lake, monkeypatch):
    """A failure no reader anticipates (here: one file's rows blow up the engine) must not leave the
    batch processing: the batch is taken apart, the bad file fails with the reason, the rest merge."""
    from lake_assets.core.cdc import pipeline

    land(lake, PLAIN, cdc(1), [{"Op": "I", "id": 1, "amount": 10}])
    land(lake, PLAIN, cdc(2), [{"Op": "I", "id": 666, "amount": 0}])
    land(lake, PLAIN, cdc(3), [{"Op": "I", "id": 3, "amount": 30}])
    real = pipeline.winners

    def exploding(changes, keys):
        if 666 in changes.column("id").to_pylist():
            raise RuntimeError("boom on 666")
        return real(changes, keys)

    monkeypatch.setattr(pipeline, "winners", exploding)
    ingest(lake)
    assert plain(lake) == [(1, 10), (3, 30)]
    statuses = entries(lake, PLAIN)
    assert statuses[cdc(1) + ".parquet"] == [COMMITTED] and statuses[cdc(3) + ".parquet"] == [COMMITTED]
    assert statuses[cdc(2) + ".parquet"] == [FAILED]
    assert not lake.env.ledger.entries(PLAIN, PROCESSING)
    (bad,) = lake.env.ledger.entries(PLAIN, FAILED)
    assert "boom on 666" in bad.reason and PLAIN in bad.reason
    # Retrying the failed file does not wedge anything either.
    _, runs = ingest(lake, retry_failed=True)
    assert lake.env.ledger.entries(PLAIN, FAILED) and not lake.env.ledger.entries(PLAIN, PROCESSING)
    monkeypatch.setattr(pipeline, "winners", real)
    ingest(lake, retry_failed=True)
    assert plain(lake) == [(1, 10), (3, 30), (666, 0)]


def test_an_unexpected_error_ordering_one_file_fails_it_and_its_batch_goes_on(lake, monkeypatch):
    from lake_assets.core.cdc import batch

    land(lake, ORDERS, cdc(1), [O("I", 1, 10, "1")])
    land(lake, ORDERS, cdc(2), [O("I", 2, 20, "666")])
    land(lake, ORDERS, cdc(3), [O("I", 3, 30, "3")])
    real = batch.encode_sequence

    def exploding(values, kind, column):
        if "666" in values.to_pylist():
            raise RuntimeError("boom on 666")
        return real(values, kind, column)

    monkeypatch.setattr(batch, "encode_sequence", exploding)
    _, runs = ingest(lake)
    assert orders(lake) == [(1, 10), (3, 30)]
    assert len(runs[ORDERS].results) == 1  # one batch: the others were not merged again one by one
    (bad,) = lake.env.ledger.entries(ORDERS, FAILED)
    assert bad.key.endswith(cdc(2) + ".parquet")
    assert bad.key in bad.reason and ORDERS in bad.reason and "RuntimeError: boom on 666" in bad.reason
    assert len({e.batch_id for e in lake.env.ledger.entries(ORDERS)}) == 1


def test_a_file_that_kills_its_engine_is_resumed_once_then_fails_alone(lake, monkeypatch):
    """An engine that dies (OOM, lost node) leaves its batch claimed: the next run resumes it with
    the same id; interrupted again, it is taken apart so the poison file cannot wedge the table."""
    from lake_assets.core.cdc.pipeline import EngineInterrupted

    land(lake, PLAIN, cdc(1), [{"Op": "I", "id": 1, "amount": 10}])
    poison = land(lake, PLAIN, cdc(2), [{"Op": "I", "id": 666, "amount": 0}])
    real = InProcessEngine.merge

    def dying(self, catalog, table, files, batch_id, **kw):
        if any(f.key.endswith(poison.name) for f in files):
            raise EngineInterrupted("the engine's process was killed")
        return real(self, catalog, table, files, batch_id, **kw)

    monkeypatch.setattr(InProcessEngine, "merge", dying)
    with pytest.raises(EngineInterrupted):
        ingest(lake)
    claimed = lake.env.ledger.entries(PLAIN, PROCESSING)
    assert len(claimed) == 2 and len({e.batch_id for e in claimed}) == 1  # left to be resumed as it is
    for _ in range(3):
        try:
            ingest(lake)
        except EngineInterrupted:
            continue
        break
    assert plain(lake) == [(1, 10)]
    assert entries(lake, PLAIN) == {cdc(1) + ".parquet": [COMMITTED], poison.name: [FAILED]}
    (bad,) = lake.env.ledger.entries(PLAIN, FAILED)
    assert "killed" in bad.reason and PLAIN in bad.reason
    land(lake, PLAIN, cdc(3), [{"Op": "I", "id": 3, "amount": 30}])
    ingest(lake)
    assert plain(lake) == [(1, 10), (3, 30)]


def test_a_batch_abandoned_after_its_sidecar_writes_leaves_no_sidecar_rows(lake, monkeypatch):
    from lake_assets.core.cdc import inprocess

    land(lake, ORDERS, cdc(1), [O("I", 1, 10, "1"), O("I", None, 0, "2")])  # one bad row: a quarantine write
    land(lake, ORDERS, cdc(2), [O("I", 2, 20, "3")])
    real = inprocess.InProcessWriter.commit
    calls = []

    def failing_first(self, catalog, tbl, plan):
        calls.append(plan.batch_id)
        if len(calls) == 1:
            raise RuntimeError("disk full")
        return real(self, catalog, tbl, plan)

    monkeypatch.setattr(inprocess.InProcessWriter, "commit", failing_first)
    ingest(lake)
    assert orders(lake) == [(1, 10), (2, 20)]
    assert [(r["row"], r["reason"]) for r in quarantine(lake, ORDERS)] == [(2, "null primary key column id")]


def test_a_batch_abandoned_after_its_tombstone_writes_leaves_no_tombstone(lake, monkeypatch):
    """A delete whose file then fails must not leave its tombstone behind: it would reject later
    changes of a row the table still holds."""
    from lake_assets.core.cdc import inprocess
    from lake_assets.core.naming import tombstone_identifier

    land(lake, PLAIN, load_file_name(1), L((1, 10), (5, 50)), load=True)
    ingest(lake)
    land(lake, PLAIN, cdc(5), [{"Op": "D", "id": 5, "amount": 50}, {"Op": "I", "id": 666, "amount": 0}])
    land(lake, PLAIN, cdc(6), [{"Op": "U", "id": 1, "amount": 11}])
    real = inprocess.InProcessWriter.commit

    def failing_with_666(self, catalog, tbl, plan):
        if 666 in plan.rows.column("id").to_pylist():
            raise RuntimeError("disk full")
        return real(self, catalog, tbl, plan)

    monkeypatch.setattr(inprocess.InProcessWriter, "commit", failing_with_666)
    ingest(lake)
    assert plain(lake) == [(1, 11), (5, 50)]  # the delete's file failed; the other file merged
    assert entries(lake, PLAIN)[cdc(5) + ".parquet"] == [FAILED]
    tombstones = tombstone_identifier("shop", "plain")
    assert not lake.env.catalog.table_exists(tombstones) or lake.rows(tombstones) == []
    # A change whose name puts it before the failed file is still newer than the row the table holds.
    land(lake, PLAIN, cdc(4), [{"Op": "U", "id": 5, "amount": 55}])
    _, runs = ingest(lake)
    assert plain(lake) == [(1, 11), (5, 55)]
    assert [r.tombstone_rejected for r in runs[PLAIN].results] == [0]


class ProcessDied(BaseException):
    """The merging process ends right here (a SIGKILL, in-process): nothing below it runs."""


def test_a_batch_resumed_after_dying_before_its_commit_writes_its_sidecars_once(lake):
    from lake_assets.core.arrivals import record_arrivals
    from lake_assets.core.naming import tombstone_identifier

    land(lake, ORDERS, cdc(1), [O("I", 1, 10, "1"), O("I", 2, 20, "1")])
    ingest(lake)
    land(lake, ORDERS, cdc(2), [O("D", 1, 10, "2"), O("I", None, 0, "2"), O("U", 2, 21, "2")])
    record_arrivals(lake.env.landing, lake.env.ledger, lake.registry)

    def die(name):
        if name == "before_commit":  # the sidecars are written; the table's commit is not
            raise ProcessDied

    with pytest.raises(ProcessDied):
        merge_pending(lake.registry.get("shop", "orders"), catalog=lake.env.catalog, ledger=lake.env.ledger,
                      landing=lake.env.landing, engine=InProcessEngine(), failpoint=die)
    (claimed, *_) = lake.env.ledger.entries(ORDERS, PROCESSING)
    _, runs = ingest(lake)
    assert [r.batch_id for r in runs[ORDERS].results] == [claimed.batch_id]
    assert orders(lake) == [(2, 21)]
    assert [(r["row"], r["batch_id"]) for r in quarantine(lake, ORDERS)] == [(2, claimed.batch_id)]
    tombstones = lake.env.catalog.load_table(tombstone_identifier("shop", "orders"))
    assert [r["id"] for r in tombstones.scan().to_arrow().to_pylist()] == [1]
    # One write per batch id: rolling an abandoned batch back undoes exactly one snapshot.
    assert [s.summary.additional_properties.get("lake.batch-id") for s in tombstones.snapshots()] == [claimed.batch_id]


# --- 6. concurrency -----------------------------------------------------------------------------


def test_a_table_held_by_another_merge_is_reported_busy_not_resumed(lake):
    land(lake, PLAIN, cdc(1), [{"Op": "I", "id": 1, "amount": 10}])
    with lake.env.ledger.lock_table(PLAIN, wait_seconds=0):
        _, runs = ingest(lake, lock_wait_seconds=0.2)
        assert runs[PLAIN].busy and PLAIN in runs[PLAIN].busy
        assert [e.status for e in lake.env.ledger.entries(PLAIN)] == [LANDED]
    ingest(lake)
    assert plain(lake) == [(1, 10)]


def test_a_merge_that_lost_its_lock_does_not_commit_and_the_new_holder_resumes_it(lake, monkeypatch):
    """A process paused past its lease (GC, a stopped VM) finds its lock taken over: it must not
    commit; the batch stays claimed under its id for the lock's new holder."""
    import sqlite3

    from lake_assets.core.arrivals import record_arrivals
    from lake_assets.core.cdc.runner import LockLost
    from lake_assets.core.ledger import SqlFileLedger

    land(lake, PLAIN, load_file_name(1), L((1, 10)), load=True)
    ingest(lake)
    land(lake, PLAIN, cdc(1), [{"Op": "U", "id": 1, "amount": 11}])
    real_lock = SqlFileLedger.lock_table
    monkeypatch.setattr(SqlFileLedger, "lock_table", lambda self, table_id, *, wait_seconds, lease_seconds=60.0:
                        real_lock(self, table_id, wait_seconds=wait_seconds, lease_seconds=0.3))
    db = lake.home / "ledger.db"

    def taken_over(name):
        if name == "after_claim":
            with sqlite3.connect(db) as c:  # our lease lapsed and another process took the table
                c.execute("UPDATE table_locks SET owner = 'intruder', expires_at = ?", (time.time() + 600,))
            time.sleep(1.0)  # our heartbeat (every 0.1 s) finds the row taken

    snapshot = lake.env.catalog.load_table(PLAIN).current_snapshot().snapshot_id
    record_arrivals(lake.env.landing, lake.env.ledger, lake.registry)
    with pytest.raises(LockLost):
        merge_pending(lake.registry.get("shop", "plain"), catalog=lake.env.catalog, ledger=lake.env.ledger,
                      landing=lake.env.landing, engine=InProcessEngine(), failpoint=taken_over)
    assert lake.env.catalog.load_table(PLAIN).current_snapshot().snapshot_id == snapshot
    (claimed,) = lake.env.ledger.entries(PLAIN, PROCESSING)
    with sqlite3.connect(db) as c:  # the intruder dies
        c.execute("DELETE FROM table_locks")
    _, runs = ingest(lake)
    assert [r.batch_id for r in runs[PLAIN].results] == [claimed.batch_id]
    assert plain(lake) == [(1, 11)]
    assert entries(lake, PLAIN)[cdc(1) + ".parquet"] == [COMMITTED]


# --- 7. registry changes ------------------------------------------------------------------------


def test_a_changed_primary_key_is_refused_with_both_definitions_until_a_rebuild(lake, tmp_path):
    land(lake, PLAIN, load_file_name(1), L((1, 10), (2, 20)), load=True)
    ingest(lake)
    changed = make_lake(lake.home, {"shop": SOURCE.replace("primary_key: [id]\n    columns:\n      - {name: id, type: long}\n      - {name: amount",
                                                            "primary_key: [amount]\n    columns:\n      - {name: id, type: long}\n      - {name: amount")})
    table = changed.registry.get("shop", "plain")
    land(lake, PLAIN, cdc(1), [{"Op": "U", "id": 1, "amount": 10}])
    with pytest.raises(TableDefinitionError) as refused:
        changed.ingest()
    assert "primary_key [amount]" in str(refused.value) and "primary_key [id]" in str(refused.value)
    assert "--rebuild shop.plain" in str(refused.value)
    assert [e.status for e in changed.env.ledger.entries(PLAIN) if e.key.endswith(cdc(1) + ".parquet")] == [LANDED]
    run = merge_pending(table, catalog=changed.env.catalog, ledger=changed.env.ledger, landing=changed.env.landing,
                        engine=InProcessEngine(), options=MergeOptions(rebuild=True))
    assert run.notes and sorted((r["id"], r["amount"]) for r in changed.rows(PLAIN)) == [(1, 10), (2, 20)]


PLAIN_ENTRY = "  - name: plain           # no sequence_by: file order, version, row\n    schema: app\n"


@pytest.mark.parametrize("added, was, now", [
    ("    partition_by: [{column: id, transform: 'bucket[4]'}]\n", "partition_by [none]", "partition_by [id:bucket[4]]"),
    ("    sequence_by: amount\n", "sequence_by (none)", "sequence_by amount"),
], ids=["partition_by", "sequence_by"])
def test_a_changed_partitioning_or_ordering_is_refused_naming_both(lake, added, was, now):
    land(lake, PLAIN, load_file_name(1), L((1, 10)), load=True)
    ingest(lake)
    changed = make_lake(lake.home, {"shop": SOURCE.replace(PLAIN_ENTRY, PLAIN_ENTRY + added)})
    land(lake, PLAIN, cdc(1), [{"Op": "U", "id": 1, "amount": 11}])
    with pytest.raises(TableDefinitionError) as refused:
        changed.ingest()
    assert was in str(refused.value) and now in str(refused.value) and "--rebuild shop.plain" in str(refused.value)
    assert plain(lake) == [(1, 10)]
    assert [e.status for e in changed.env.ledger.entries(PLAIN) if e.key.endswith(cdc(1) + ".parquet")] == [LANDED]


def test_a_rebuild_derives_table_and_sidecars_from_the_landed_files_once(lake):
    land(lake, ORDERS, cdc(1), [O("I", 1, 10, "1"), O("I", None, 0, "2"), O("I", 2, 20, "3")])
    land(lake, ORDERS, cdc(2), [O("D", 2, 20, "4")])
    ingest(lake)
    before = [(r["file"], r["row"], r["reason"]) for r in quarantine(lake, ORDERS)]
    assert len(before) == 1
    _, runs = ingest(lake, rebuild=True)
    assert runs[ORDERS].notes and orders(lake) == [(1, 10)]
    assert [(r["file"], r["row"], r["reason"]) for r in quarantine(lake, ORDERS)] == before
    land(lake, ORDERS, cdc(3), [O("I", 2, 21, "2")])  # older than the delete: still rejected
    ingest(lake)
    assert orders(lake) == [(1, 10)]


def test_a_rebuild_missing_a_merged_file_is_refused_and_drops_nothing(lake):
    from lake_assets.core.cdc.runner import RebuildRefused

    land(lake, PLAIN, load_file_name(1), L((1, 10)), load=True)
    gone = land(lake, PLAIN, cdc(1), [{"Op": "U", "id": 1, "amount": 11}])
    ingest(lake)
    gone.unlink()  # a landing-zone lifecycle rule expired it
    with pytest.raises(RebuildRefused) as refused:
        ingest(lake, rebuild=True)
    assert gone.name in str(refused.value) and PLAIN in str(refused.value)
    assert plain(lake) == [(1, 11)]
    assert entries(lake, PLAIN) == {load_file_name(1) + ".parquet": [COMMITTED], gone.name: [COMMITTED]}


def test_a_switch_to_history_mode_is_refused(lake):
    land(lake, PLAIN, load_file_name(1), L((1, 10)), load=True)
    ingest(lake)
    changed = make_lake(lake.home, {"shop": SOURCE.replace("  - name: plain           # no sequence_by: file order, version, row\n    schema: app\n",
                                                            "  - name: plain\n    schema: app\n    mode: history\n")})
    land(lake, PLAIN, cdc(1), [{"Op": "U", "id": 1, "amount": 11}])
    with pytest.raises(TableDefinitionError, match="mode history"):
        changed.ingest()
    assert plain(lake) == [(1, 10)]


# --- 9. a bad registry file ---------------------------------------------------------------------

CRM = """
source: crm
tables:
  - name: contacts
    schema: dbo
    primary_key: [id]
    columns: [{name: id, type: long}, {name: amount, type: long}]
"""


def test_a_bad_registry_file_fails_its_own_source_and_its_files_wait_for_the_fix(tmp_path):
    broken = CRM.replace("type: long}]", "type: lng}]")
    lake = make_lake(tmp_path, {"shop": SOURCE, "crm": broken})
    contacts = write_dms_file(lake.landing / "crm/dbo/contacts" / cdc(1), [{"Op": "I", "id": 1, "amount": 5}], PLAIN_COLUMNS,
                              cdc=True)
    land(lake, PLAIN, cdc(1), [{"Op": "I", "id": 1, "amount": 10}])
    report, _ = ingest(lake)
    assert plain(lake) == [(1, 10)]  # the other source merges
    [(key, reason)] = report.unroutable
    assert key.endswith(contacts.name) and "crm.yaml" in reason and "registry file of source 'crm' is invalid" in reason
    assert "lng" in reason
    fixed = make_lake(tmp_path, {"shop": SOURCE, "crm": CRM})
    report, _ = fixed.ingest()
    assert report.rerouted == 1
    assert sorted((r["id"], r["amount"]) for r in fixed.rows("crm.contacts")) == [(1, 5)]


# --- 10. errors with names ----------------------------------------------------------------------


def test_a_truncated_warehouse_data_file_is_named_with_its_table(lake):
    land(lake, PLAIN, load_file_name(1), L((1, 10)), load=True)
    ingest(lake)
    (task,) = lake.env.catalog.load_table(PLAIN).scan().plan_files()
    path = Path(task.file.file_path.removeprefix("file://"))
    path.write_bytes(path.read_bytes()[:40])
    land(lake, PLAIN, cdc(1), [{"Op": "U", "id": 1, "amount": 11}])
    ingest(lake)
    (failed,) = lake.env.ledger.entries(PLAIN, FAILED)
    assert PLAIN in failed.reason and str(path) in failed.reason


def test_a_partition_column_missing_from_the_files_names_the_table(tmp_path):
    source = """
source: shop
tables:
  - name: nocols
    schema: app
    primary_key: [id]
    partition_by: [{column: created_at, transform: day}]
"""
    lake = make_lake(tmp_path, {"shop": source})
    write_dms_file(lake.landing / "shop/app/nocols" / load_file_name(1), [{"id": 1}], [("id", "long")], cdc=False)
    with pytest.raises(BatchFailed):
        lake.ingest()
    (failed,) = lake.env.ledger.entries("shop.nocols", FAILED)
    assert "shop.nocols" in failed.reason and "created_at" in failed.reason
    assert not lake.env.catalog.table_exists("shop.nocols")


