"""The file ledger's contract, on SQLite (local) and a real PostgreSQL server (production)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lake_assets.core.ledger import (
    COMMITTED,
    DUPLICATE,
    FAILED,
    LANDED,
    PROCESSING,
    QUARANTINED,
    STATUSES,
    SUPERSEDED,
    LandedFile,
    LedgerError,
    TableBusy,
    postgres_ledger,
    sqlite_ledger,
)
from tests.postgres_server import fresh_database

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", "postgres"])
def place(request, tmp_path) -> tuple[str, str]:
    """Where a ledger lives: ("sqlite", path) or ("postgres", dsn of a fresh database)."""
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "ledger.db")
    return "postgres", fresh_database(request.getfixturevalue("pg_server"))


def open_ledger(place, **kw):
    kind, where = place
    return sqlite_ledger(Path(where), **kw) if kind == "sqlite" else postgres_ledger(where, **kw)


@pytest.fixture
def ledger(place):
    return open_ledger(place)


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



# --- file versions, duplicates, superseded versions --------------------------------------------------


def test_each_new_content_under_a_key_is_its_next_file_version(ledger):
    ledger.record([f("k", "c1"), f("j", "c9")])
    ledger.record([f("k", "c2")])
    ledger.record([f("k", "c2"), f("k", "c3")])  # c2 again: identical, no version
    versions = {(e.key, e.checksum): e.file_version for e in ledger.entries()}
    assert versions == {("k", "c1"): 1, ("j", "c9"): 1, ("k", "c2"): 2, ("k", "c3"): 3}


def test_claimed_entries_come_ordered_by_key_and_only_the_newest_version_of_a_key(ledger):
    ledger.record([f("b", "b1"), f("c", "c1"), f("a", "a1")])
    ledger.record([f("b", "b2")])
    _, entries = ledger.claim("s.t", limit=2)
    assert [(e.key, e.file_version) for e in entries] == [("a", 1), ("b", 2)]
    assert [e.key for e in ledger.claim("s.t")[1]] == ["c"]
    [old] = ledger.entries("s.t", SUPERSEDED)
    assert (old.key, old.file_version) == ("b", 1)
    assert old.reason == "b: version 1 superseded by version 2 (checksum b2) landed under the same key for table s.t; " \
                         "only the newest version is merged"


def test_a_superseded_version_is_never_merged_again_not_even_by_retry_failed(ledger):
    ledger.record([f("k", "old")])
    ledger.record([f("k", "new")])
    batch, [new] = ledger.claim("s.t")
    ledger.finish_batch(batch, committed={}, failed={"k": "k: corrupt"}, snapshot_id=None)
    assert ledger.retry_failed("s.t") == 1
    _, entries = ledger.claim("s.t")
    assert [e.checksum for e in entries] == ["new"]
    assert ledger.status_counts("s.t")[SUPERSEDED] == 1


def test_a_failed_old_version_stays_failed_when_a_newer_version_lands(ledger):
    ledger.record([f("k", "bad")])
    batch, _ = ledger.claim("s.t")
    ledger.finish_batch(batch, committed={}, failed={"k": "k: not a readable Parquet file"}, snapshot_id=None)
    ledger.record([f("k", "good")])
    assert ledger.retry_failed("s.t") == 0  # the failed version has a newer one: it is not revived
    _, entries = ledger.claim("s.t")
    assert [e.checksum for e in entries] == ["good"]
    [old] = ledger.entries("s.t", FAILED)
    assert (old.checksum, old.reason) == ("bad", "k: not a readable Parquet file")


def test_a_landed_version_is_superseded_by_a_newer_version_of_any_status(ledger):
    ledger.record([f("a", "x")])
    ledger.record([f("k", "old")])
    ledger.record([f("k", "x")])  # the new version of k is a duplicate of a
    batch, entries = ledger.claim("s.t")
    assert [e.key for e in entries] == ["a"]
    assert {(e.key, e.file_version): e.status for e in ledger.entries()} == {("a", 1): PROCESSING, ("k", 1): SUPERSEDED,
                                                                             ("k", 2): DUPLICATE}


def test_a_committed_version_does_not_stop_its_newer_version_from_merging(ledger):
    ledger.record([f("k", "v1")])
    batch, _ = ledger.claim("s.t")
    ledger.finish_batch(batch, committed={"k": (1, 0)}, failed={}, snapshot_id=1)
    ledger.record([f("k", "v2")])
    _, [e] = ledger.claim("s.t")
    assert (e.checksum, e.file_version) == ("v2", 2)
    assert [x.status for x in ledger.entries("s.t")] == [COMMITTED, PROCESSING]


def test_content_of_another_key_of_the_same_table_is_a_duplicate_never_claimed(ledger):
    first = ledger.record([f("a", "x"), f("b", "x"), f("u", "x", table="s.u")])
    assert [e.key for e in first.entries] == ["a", "u"]  # another table's file with that content is its own
    [dup] = first.duplicates
    assert (dup.key, dup.status, dup.duplicate_of) == ("b", DUPLICATE, "a")
    assert dup.reason == "b: same content (checksum x) as a, already recorded for table s.t; not merged again"
    later = ledger.record([f("c", "x")])
    assert later.entries == [] and [(d.key, d.duplicate_of) for d in later.duplicates] == [("c", "a")]
    assert ledger.tables_with_pending() == {"s.t": 1, "s.u": 1}
    _, entries = ledger.claim("s.t")
    assert [e.key for e in entries] == ["a"]
    assert ledger.status_counts("s.t")[DUPLICATE] == 2
    assert ledger.retry_failed("s.t") == 0 and ledger.claim("s.t")[1] == []


def test_a_file_routed_late_to_a_table_holding_its_content_is_a_duplicate(ledger):
    ledger.record([f("a", "x"), f("x/b", "x", table=None, reason="no registry table")])
    [e] = ledger.unrouted()
    routed = ledger.route(e.id, "s.t")
    assert (routed.status, routed.duplicate_of, routed.table_id) == (DUPLICATE, "a", "s.t")
    assert [x.key for x in ledger.claim("s.t")[1]] == ["a"]


# --- release, rebuild, reload ------------------------------------------------------------------------


def test_release_batch_gives_an_abandoned_batch_back(ledger):
    ledger.record([f("a", "a"), f("b", "b")])
    batch, _ = ledger.claim("s.t", owner="me")
    assert {e.claimed_by for e in ledger.entries("s.t")} == {"me"}
    assert ledger.release_batch(batch) == 2
    assert [(e.status, e.batch_id, e.claimed_by) for e in ledger.entries("s.t")] == [(LANDED, None, None)] * 2
    assert ledger.processing_batches("s.t") == {}
    batch2, entries = ledger.claim("s.t")
    ledger.finish_batch(batch2, committed={"a": (1, 0), "b": (1, 0)}, failed={}, snapshot_id=7)
    assert ledger.release_batch(batch2) == 0  # a finished batch is not released


def test_reset_for_rebuild_lands_every_merged_file_again_but_not_duplicates_or_superseded(ledger):
    ledger.record([f("c", "c"), f("q", "q"), f("x", "x"), f("dup", "c"), f("old", "o1"), f("o", "o", table="s.u")])
    ledger.record([f("old", "o2")])
    b1, _ = ledger.claim("s.t")
    ledger.finish_batch(b1, committed={"c": (3, 0), "q": (2, 2), "old": (1, 0)}, failed={"x": "x: corrupt"}, snapshot_id=5)
    ledger.record([f("p", "p")])
    ledger.claim("s.t")  # p is still processing when the rebuild starts
    before = {(e.key, e.file_version): e.status for e in ledger.entries("s.t")}
    assert before == {("c", 1): COMMITTED, ("q", 1): QUARANTINED, ("x", 1): FAILED, ("dup", 1): DUPLICATE,
                      ("old", 1): SUPERSEDED, ("old", 2): COMMITTED, ("p", 1): PROCESSING}

    assert ledger.reset_for_rebuild("s.t") == 5

    after = {(e.key, e.file_version): e for e in ledger.entries("s.t")}
    assert {k: e.status for k, e in after.items()} == {
        ("c", 1): LANDED, ("q", 1): LANDED, ("x", 1): LANDED, ("dup", 1): DUPLICATE,
        ("old", 1): SUPERSEDED, ("old", 2): LANDED, ("p", 1): LANDED,
    }
    for e in after.values():
        if e.status == LANDED:
            assert (e.batch_id, e.claimed_by, e.snapshot_id, e.rows_read, e.quarantined_rows, e.reason) == (None,) * 6
    assert [e.status for e in ledger.entries("s.u")] == [LANDED]  # other tables are left alone
    assert [(e.key, e.file_version) for e in ledger.claim("s.t")[1]] == [("c", 1), ("old", 2), ("p", 1), ("q", 1), ("x", 1)]


def test_reload_requests_are_per_table_and_persist(place):
    ledger = open_ledger(place)
    assert ledger.reload_requested("s.t") is False
    ledger.request_reload("s.t", requested_by="alice")
    ledger.request_reload("s.t", requested_by="bob")  # asking twice is one request
    reopened = open_ledger(place)
    assert reopened.reload_requested("s.t") is True and reopened.reload_requested("s.u") is False
    reopened.clear_reload("s.t")
    assert ledger.reload_requested("s.t") is False


def test_statuses_are_exported_and_counted(ledger):
    assert STATUSES == (LANDED, PROCESSING, COMMITTED, FAILED, QUARANTINED, DUPLICATE, SUPERSEDED)
    assert set(ledger.status_counts("s.t")) == set(STATUSES)


# --- one lock per table ----------------------------------------------------------------------------

# A merging process in miniature: `hold` takes the lock and keeps it until told on stdin; `count`
# takes it `n` times, writing "<pid> in" / "<pid> out" around a short critical section.
WORKER = """
import os, sys, time
from pathlib import Path
from lake_assets.core.ledger import postgres_ledger, sqlite_ledger
kind, where, mode, table, arg = sys.argv[1:6]
ledger = sqlite_ledger(Path(where)) if kind == "sqlite" else postgres_ledger(where)
if mode == "hold":
    lock = ledger.lock_table(table, wait_seconds=30, lease_seconds=float(arg))
    with lock:
        print("locked", lock.owner, flush=True)
        sys.stdin.readline()
        print("held" if lock.held else "lost", flush=True)
else:
    out = os.open(arg, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    for _ in range(12):
        with ledger.lock_table(table, wait_seconds=60):
            os.write(out, f"{os.getpid()} in\\n".encode())
            time.sleep(0.02)
            os.write(out, f"{os.getpid()} out\\n".encode())
"""


def worker(place, mode, table, arg) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, *place, mode, table, str(arg)], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})


def holding(place, table="s.t", lease=60.0) -> tuple[subprocess.Popen, str]:
    p = worker(place, "hold", table, lease)
    line = p.stdout.readline().split()
    assert line[:1] == ["locked"], line
    return p, line[1]


def finish(p: subprocess.Popen) -> str:
    out, _ = p.communicate("\n", timeout=30)
    return out.strip()


def assert_never_overlapped(lines: list[str], expected: int) -> None:
    assert len(lines) == 2 * expected
    for start, end in zip(lines[::2], lines[1::2]):
        pid = start.split()[0]
        assert (start, end) == (f"{pid} in", f"{pid} out"), lines


def test_two_threads_take_turns(ledger):
    lines: list[str] = []
    errors: list[BaseException] = []

    def merge(name):
        try:
            for _ in range(8):
                with ledger.lock_table("s.t", wait_seconds=60) as lock:
                    assert lock.held
                    lines.append(f"{name} in")
                    time.sleep(0.01)
                    lines.append(f"{name} out")
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            errors.append(e)

    threads = [threading.Thread(target=merge, args=(n,)) for n in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert_never_overlapped(lines, 24)
    assert ledger.lock_holder("s.t") is None


def test_two_processes_take_turns(place, tmp_path):
    log = tmp_path / "turns.log"
    procs = [worker(place, "count", "s.t", log) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    assert_never_overlapped(log.read_text().splitlines(), 24)


def test_a_busy_table_names_its_holder_and_other_tables_are_free(place):
    ledger = open_ledger(place)
    p, owner = holding(place)
    try:
        with pytest.raises(TableBusy) as busy:
            with ledger.lock_table("s.t", wait_seconds=0.3):
                pass
        holder = ledger.lock_holder("s.t")
        assert (holder.owner, holder.pid) == (owner, p.pid)
        msg = str(busy.value)
        for part in ("s.t", owner, f"pid {p.pid}", f"host {holder.host}", f"since {holder.acquired_at}"):
            assert part in msg
        assert busy.value.waited >= 0.3
        with ledger.lock_table("s.u", wait_seconds=0):
            pass
    finally:
        assert finish(p) == "held"
    with ledger.lock_table("s.t", wait_seconds=0) as lock:  # released on exit
        assert ledger.lock_holder("s.t").owner == lock.owner


def test_the_lock_of_a_killed_process_is_free_at_once(place):
    ledger = open_ledger(place)
    p, _ = holding(place, lease=600)
    os.kill(p.pid, signal.SIGKILL)
    time.sleep(0.2)  # not reaped yet: a zombie is dead too
    start = time.monotonic()
    try:
        with ledger.lock_table("s.t", wait_seconds=10) as lock:
            assert time.monotonic() - start < 5  # nowhere near the 600 s lease
            assert ledger.lock_holder("s.t").owner == lock.owner
    finally:
        p.wait()


def test_an_expired_lease_is_taken_over_and_its_holder_finds_it_lost(tmp_path):
    place = ("sqlite", str(tmp_path / "ledger.db"))
    ledger = open_ledger(place)
    p, owner = holding(place, lease=0.6)
    os.kill(p.pid, signal.SIGSTOP)  # alive but not renewing: only the lease's expiry frees the table
    try:
        start = time.monotonic()
        with ledger.lock_table("s.t", wait_seconds=20) as lock:
            assert time.monotonic() - start >= 0.3
            os.kill(p.pid, signal.SIGCONT)
            time.sleep(0.6)  # the old holder's heartbeat notices
            assert finish(p) == "lost"
            assert ledger.lock_holder("s.t").owner == lock.owner and lock.held  # its exit did not free our lock
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_heartbeat_keeps_a_long_holders_lease(ledger):
    with ledger.lock_table("s.t", wait_seconds=0, lease_seconds=0.3) as lock:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            with pytest.raises(TableBusy):
                with ledger.lock_table("s.t", wait_seconds=0):
                    pass
            time.sleep(0.1)
        assert lock.held and ledger.lock_holder("s.t").expires_at > time.time()


def test_a_lease_of_another_host_is_not_taken_while_it_runs(tmp_path):
    ledger = sqlite_ledger(tmp_path / "ledger.db")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with sqlite3.connect(tmp_path / "ledger.db") as c:  # a pid that runs nowhere here, but on another host
        c.execute("INSERT INTO table_locks VALUES ('s.t', 'them', 'other-host', 'other-host|x', ?, '2026-01-01', ?)",
                  (dead.pid, time.time() + 600))
    with pytest.raises(TableBusy, match="them .host other-host"):
        with ledger.lock_table("s.t", wait_seconds=0.2):
            pass


def test_a_lock_taken_over_is_reported_lost(tmp_path):
    ledger = sqlite_ledger(tmp_path / "ledger.db")
    with ledger.lock_table("s.t", wait_seconds=0, lease_seconds=0.3) as lock:
        with sqlite3.connect(tmp_path / "ledger.db") as c:
            c.execute("UPDATE table_locks SET owner = 'intruder'")
        time.sleep(0.5)
        assert not lock.held
    assert ledger.lock_holder("s.t").owner == "intruder"  # releasing a lost lock leaves the new holder's row


def test_the_lock_owner_is_stored_on_the_batch(ledger):
    ledger.record([f("k")])
    with ledger.lock_table("s.t", wait_seconds=0) as lock:
        _, [e] = ledger.claim("s.t", owner=lock.owner)
    assert e.claimed_by == lock.owner and str(os.getpid()) in lock.owner


# --- a locked or broken database ---------------------------------------------------------------------


def hold_write_lock(place):
    """A second connection holding the write lock a ledger write needs."""
    kind, where = place
    if kind == "sqlite":
        conn = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN IMMEDIATE")
    else:
        import psycopg2

        conn = psycopg2.connect(where)
        conn.cursor().execute("LOCK TABLE landed_files IN ACCESS EXCLUSIVE MODE")
    return conn


def test_a_locked_database_is_retried_until_it_frees(place):
    ledger = open_ledger(place, busy_timeout=30)
    conn = hold_write_lock(place)
    threading.Timer(2.5, conn.rollback).start()  # longer than one attempt waits
    start = time.monotonic()
    r = ledger.record([f("k")])
    assert len(r.entries) == 1 and time.monotonic() - start >= 2
    conn.close()


def test_a_database_locked_too_long_fails_naming_the_ledger_and_the_operation(place):
    kind, where = place
    if kind == "postgres":  # the message never shows a password
        where = where + " password=s3cret"
    ledger = open_ledger((kind, where), busy_timeout=1.0)
    conn = hold_write_lock(place)
    try:
        start = time.monotonic()
        with pytest.raises(LedgerError) as err:
            ledger.record([f("k")])
        assert 1.0 <= time.monotonic() - start < 5
    finally:
        conn.rollback()
        conn.close()
    msg = str(err.value)
    assert "recording 1 landed files" in msg and "stayed locked for 1s" in msg and "s3cret" not in msg
    if kind == "sqlite":
        assert f"ledger {where} (SQLite)" in msg
    else:
        dbname = where.split("dbname=")[1].split()[0]
        assert "@127.0.0.1:" in msg and f"/{dbname} (PostgreSQL)" in msg


def test_other_database_errors_name_the_ledger(place):
    ledger = open_ledger(place)
    kind, where = place
    if kind == "sqlite":
        conn = sqlite3.connect(where)
    else:
        import psycopg2

        conn = psycopg2.connect(where)
    conn.cursor().execute("DROP TABLE landed_files")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match=r"^ledger .*(SQLite|PostgreSQL)\): listing entries of table s\.t: .*landed_files"):
        ledger.entries("s.t")


# --- a ledger created before file versions -------------------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE landed_files (
    id {autoinc}, key TEXT NOT NULL, checksum TEXT NOT NULL, size BIGINT NOT NULL, version TEXT NOT NULL, table_id TEXT,
    status TEXT NOT NULL, batch_id TEXT, reason TEXT, attempts INTEGER NOT NULL DEFAULT 0, arrived_at TEXT NOT NULL,
    updated_at TEXT NOT NULL, rows_read BIGINT, quarantined_rows BIGINT, snapshot_id BIGINT, UNIQUE (key, checksum)
);
CREATE INDEX landed_files_table_status ON landed_files (table_id, status);
CREATE INDEX landed_files_batch ON landed_files (batch_id);
INSERT INTO landed_files (key, checksum, size, version, table_id, status, attempts, arrived_at, updated_at, rows_read, snapshot_id)
    VALUES ('k', 'c1', 1, 'v1', 's.t', 'committed', 1, 't', 't', 3, 9);
INSERT INTO landed_files (key, checksum, size, version, table_id, status, arrived_at, updated_at)
    VALUES ('j', 'c3', 1, 'v3', 's.t', 'landed', 't', 't');
INSERT INTO landed_files (key, checksum, size, version, table_id, status, arrived_at, updated_at)
    VALUES ('k', 'c2', 1, 'v2', 's.t', 'landed', 't', 't');
INSERT INTO landed_files (key, checksum, size, version, table_id, status, arrived_at, updated_at)
    VALUES ('i', 'c4', 1, 'v4', 's.t', 'landed', 't', 't')
"""


def test_a_ledger_from_before_file_versions_is_upgraded_at_open(place):
    kind, where = place
    if kind == "sqlite":
        conn = sqlite3.connect(where)
        conn.executescript(OLD_SCHEMA.format(autoinc="INTEGER PRIMARY KEY AUTOINCREMENT"))
    else:
        import psycopg2

        conn = psycopg2.connect(where)
        conn.cursor().execute(OLD_SCHEMA.format(autoinc="BIGSERIAL PRIMARY KEY"))
    conn.commit()
    conn.close()

    ledger = open_ledger(place)
    open_ledger(place)  # opening again changes nothing
    assert [(e.key, e.file_version, e.duplicate_of, e.claimed_by) for e in ledger.entries()] == [
        ("k", 1, None, None), ("j", 1, None, None), ("k", 2, None, None), ("i", 1, None, None)]
    assert ledger.entries("s.t", COMMITTED)[0].rows_read == 3
    r = ledger.record([f("k", "c5"), f("h", "c4")])
    assert [(e.key, e.file_version) for e in r.entries] == [("k", 3)] and [d.duplicate_of for d in r.duplicates] == ["i"]
    _, entries = ledger.claim("s.t")
    assert [(e.key, e.file_version) for e in entries] == [("i", 1), ("j", 1), ("k", 3)]
    ledger.request_reload("s.t", "op")
    with ledger.lock_table("s.t", wait_seconds=0):
        assert ledger.reload_requested("s.t")


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
