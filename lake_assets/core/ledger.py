"""The file ledger: every landed file, its checksum, its version and where it is in landed →
processing → committed | failed | quarantined | duplicate | superseded; plus the per-table merge
lock and operators' reload requests.

The Iceberg snapshot summary (batch id + file list) is the truth; the ledger is reconciled against it
after a crash. SQLite locally; the same SQL serves PostgreSQL in production.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import random
import socket
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from psycopg2.extensions import connection as PgConnection

LANDED, PROCESSING, COMMITTED, FAILED, QUARANTINED = "landed", "processing", "committed", "failed", "quarantined"
DUPLICATE, SUPERSEDED = "duplicate", "superseded"
STATUSES = (LANDED, PROCESSING, COMMITTED, FAILED, QUARANTINED, DUPLICATE, SUPERSEDED)
# What a rebuild re-derives from the landed files; duplicates and superseded versions stay set aside.
_REBUILT = (COMMITTED, QUARANTINED, FAILED, PROCESSING)

DEFAULT_BUSY_TIMEOUT = 60.0  # seconds a locked database is retried before LedgerError
_IN_CHUNK = 500  # keys per IN (...) list: under SQLite's 999 bound parameters

T = TypeVar("T")


class LedgerError(Exception):
    """A ledger operation failed in the database; the message names the ledger and the operation."""


class TableBusy(Exception):
    """Another process holds a table's merge lock."""

    def __init__(self, table_id: str, holder: LockHolder | None, waited: float):
        self.table_id, self.holder, self.waited = table_id, holder, waited
        who = (
            f"{holder.owner} (host {holder.host}, pid {holder.pid}) since {holder.acquired_at}, "
            f"lease until {_iso(holder.expires_at)}"
            if holder else "a holder that left no holder row"
        )
        super().__init__(f"table {table_id} is being merged by {who}; gave up after waiting {waited:.1f}s")


@dataclass(frozen=True)
class LandedFile:
    key: str
    checksum: str
    size: int
    version: str  # cheap change marker from the listing (mtime+size locally, ETag on S3)
    table_id: str | None  # source.table, None when the file routes to no registry table
    reason: str | None = None  # why it could not be routed
    # Whether content equal to another file of the table is a duplicate delivery; not for snapshot
    # loads, where a file equal to an older one is the newest state of the table all the same.
    dedupe: bool = True


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    key: str
    checksum: str
    size: int
    table_id: str | None
    status: str
    batch_id: str | None
    reason: str | None
    attempts: int
    arrived_at: str
    rows_read: int | None
    quarantined_rows: int | None
    snapshot_id: int | None
    file_version: int  # 1 for the first content under a key, +1 for each new content under it
    duplicate_of: str | None  # for a duplicate: the key of the file with the same content
    claimed_by: str | None  # owner (TableLock.owner) of the batch that claimed it
    archived_to: str | None = None  # where the file went after its merge (`archive: true` tables)


@dataclass(frozen=True)
class Recorded:
    """What `record` did: new rows (landed, or failed when unroutable), duplicates of other files'
    content (status duplicate, never merged) and identical re-deliveries (no new row)."""

    entries: list[LedgerEntry]
    duplicates: list[LedgerEntry]
    identical: int


@dataclass(frozen=True)
class TableFiles:
    """What the ledger holds for one table's landing folder: every file recorded, by status."""

    table_id: str
    files: int  # recorded files of any status
    bytes: int
    by_status: dict[str, int]
    newest_id: int  # changes whenever a file lands: the landing's version
    newest_arrival: str  # ISO time the newest file was recorded
    oldest_pending_arrival: str | None  # oldest file landed or processing (not merged yet)
    last_merged_at: str | None  # newest file that a merge finished (committed or quarantined)


@dataclass(frozen=True)
class LockHolder:
    owner: str
    host: str
    pid: int
    acquired_at: str
    expires_at: float  # epoch seconds


class FileLedger(Protocol):
    def describe(self) -> str: ...
    def record(self, files: Iterable[LandedFile]) -> Recorded: ...
    def seen_versions(self, keys: Iterable[str] | None = None) -> dict[str, set[str]]: ...
    def claim(self, table_id: str, limit: int | None = None, *, owner: str | None = None) -> tuple[str, list[LedgerEntry]]: ...
    def processing_batches(self, table_id: str) -> dict[str, list[LedgerEntry]]: ...
    def finish_batch(self, batch_id: str, *, committed: dict[str, tuple[int, int]], failed: dict[str, str], snapshot_id: int | None, set_aside: dict[str, str] | None = None) -> None: ...
    def release_batch(self, batch_id: str) -> int: ...
    def retry_failed(self, table_id: str) -> int: ...
    def reset_for_rebuild(self, table_id: str) -> int: ...
    def unrouted(self) -> list[LedgerEntry]: ...
    def route(self, entry_id: int, table_id: str) -> LedgerEntry: ...
    def entries(self, table_id: str | None = None, status: str | None = None) -> list[LedgerEntry]: ...
    def status_counts(self, table_id: str) -> dict[str, int]: ...
    def tables_with_pending(self) -> dict[str, int]: ...
    def stalled_batches(self, older_than: dt.timedelta) -> dict[str, str]: ...
    def newest_landed(self) -> dict[str, int]: ...
    def table_files(self, table_ids: Iterable[str] | None = None) -> dict[str, TableFiles]: ...
    def oldest_pending(self) -> dict[str, str]: ...
    def request_reload(self, table_id: str, requested_by: str) -> None: ...
    def reload_requested(self, table_id: str) -> bool: ...
    def clear_reload(self, table_id: str) -> None: ...
    def lock_table(self, table_id: str, *, wait_seconds: float, lease_seconds: float = 60.0) -> TableLock: ...
    def lock_holder(self, table_id: str) -> LockHolder | None: ...
    def keep_batches(self, table_id: str, records: dict[str, dict[str, str]]) -> None: ...
    def kept_batches(self, table_id: str) -> dict[str, dict[str, str]]: ...
    def record_archived(self, entry_id: int, location: str) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS landed_files (
    id {autoinc},
    key TEXT NOT NULL,
    checksum TEXT NOT NULL,
    size BIGINT NOT NULL,
    version TEXT NOT NULL,
    table_id TEXT,
    status TEXT NOT NULL,
    batch_id TEXT,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    arrived_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    rows_read BIGINT,
    quarantined_rows BIGINT,
    snapshot_id BIGINT,
    file_version INTEGER,
    duplicate_of TEXT,
    claimed_by TEXT,
    archived_to TEXT,
    UNIQUE (key, checksum)
);
CREATE TABLE IF NOT EXISTS table_locks (
    table_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    host_id TEXT NOT NULL,
    pid INTEGER NOT NULL,
    acquired_at TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS reload_requests (
    table_id TEXT PRIMARY KEY,
    requested_by TEXT NOT NULL,
    requested_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS kept_batches (
    table_id TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    snapshot_id BIGINT NOT NULL,
    summary TEXT NOT NULL,
    kept_at TEXT NOT NULL,
    PRIMARY KEY (table_id, batch_id)
)
"""

# Columns added after the first release; a ledger created before them gets them at open.
_ADDED_COLUMNS = {"file_version": "INTEGER", "duplicate_of": "TEXT", "claimed_by": "TEXT", "archived_to": "TEXT"}

_INDEXES = """
CREATE INDEX IF NOT EXISTS landed_files_table_status ON landed_files (table_id, status);
CREATE INDEX IF NOT EXISTS landed_files_batch ON landed_files (batch_id);
CREATE INDEX IF NOT EXISTS landed_files_table_checksum ON landed_files (table_id, checksum);
CREATE UNIQUE INDEX IF NOT EXISTS landed_files_key_version ON landed_files (key, file_version)
"""

_COLUMNS = (
    "id, key, checksum, size, table_id, status, batch_id, reason, attempts, arrived_at, rows_read, quarantined_rows, "
    "snapshot_id, file_version, duplicate_of, claimed_by, archived_to"
)
_HOLDER = "owner, host, pid, acquired_at, expires_at"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="milliseconds")


@functools.cache
def _host() -> tuple[str, str]:
    """(host name for messages, identity under which pids are comparable). Containers can share a
    host name with separate pid namespaces, so the identity adds the boot id and the pid namespace."""
    name = socket.gethostname()
    parts = [name]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass
    return name, "|".join(parts)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process its parent has not reaped yet is a zombie: dead for our purpose
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


class SqlFileLedger:
    """The ledger over a DB-API backend (SQLite or PostgreSQL): same SQL, '?' placeholders."""

    def __init__(self, backend: _Backend, busy_timeout: float = DEFAULT_BUSY_TIMEOUT):
        self._b = backend
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._run("opening the ledger", self._b.prepare, write=None)
        self._run("creating or upgrading the ledger schema", self._migrate)

    def describe(self) -> str:
        return self._b.describe()

    # --- plumbing -----------------------------------------------------------------------------

    def _run(self, what: str, fn: Callable[..., T], *, write: bool | None = True) -> T:
        """Run fn(cursor) in one transaction (write: take the write lock at once; None: no
        transaction). A locked database is retried with backoff for busy_timeout seconds."""
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.02
        while True:
            try:
                with self._lock:
                    remaining = deadline - time.monotonic()
                    conn = self._b.connect(max(0.05, min(1.0, remaining)))
                    try:
                        cur = conn.cursor()
                        if write is not None:
                            self._b.begin(cur, write)
                        out = fn(cur)
                        if write is not None:
                            self._b.commit(conn, cur)
                        return out
                    except BaseException:
                        self._b.rollback(conn)
                        raise
                    finally:
                        conn.close()
            except self._b.errors as err:
                busy = self._b.is_busy(err)
                if busy and time.monotonic() < deadline:
                    time.sleep(min(delay * random.uniform(0.5, 1.0), max(0.0, deadline - time.monotonic())))
                    delay = min(delay * 2, 1.0)
                    continue
                if busy:
                    raise LedgerError(
                        f"ledger {self.describe()}: {what}: the database stayed locked for {self.busy_timeout:g}s ({err})"
                    ) from err
                raise LedgerError(f"ledger {self.describe()}: {what}: {type(err).__name__}: {err}".strip()) from err

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self._b.placeholder)

    def _exec(self, cur, sql: str, params=()) -> None:
        cur.execute(self._sql(sql), params)

    def _fetch(self, cur, sql: str, params=()) -> list[LedgerEntry]:
        cur.execute(self._sql(sql), params)
        return [LedgerEntry(*r) for r in cur.fetchall()]

    def _rows(self, what: str, sql: str, params=()) -> list[LedgerEntry]:
        return self._run(what, lambda cur: self._fetch(cur, sql, params), write=False)

    def _migrate(self, cur) -> None:
        self._b.serialize(cur, "schema")
        for stmt in _SCHEMA.format(autoinc=self._b.autoinc).split(";"):
            cur.execute(stmt)
        have = self._b.columns(cur, "landed_files")
        for name, typ in _ADDED_COLUMNS.items():
            if name not in have:
                cur.execute(f"ALTER TABLE landed_files ADD COLUMN {name} {typ}")
        # Rows from before file versions: number each key's contents in arrival order.
        cur.execute(
            "UPDATE landed_files SET file_version = (SELECT count(*) FROM landed_files o "
            "WHERE o.key = landed_files.key AND o.id <= landed_files.id) WHERE file_version IS NULL"
        )
        for stmt in _INDEXES.split(";"):
            cur.execute(stmt)

    # --- arrivals -------------------------------------------------------------------------------

    def _duplicate_of(self, cur, table_id: str, checksum: str, key: str) -> str | None:
        """The key of a file already recorded for the table with this content, under another key."""
        self._exec(
            cur,
            "SELECT key FROM landed_files WHERE table_id = ? AND checksum = ? AND key <> ? "
            "ORDER BY CASE WHEN status = ? THEN 1 ELSE 0 END, id LIMIT 1",
            (table_id, checksum, key, DUPLICATE),
        )
        row = cur.fetchone()
        return row[0] if row else None

    @staticmethod
    def _duplicate_reason(key: str, checksum: str, table_id: str, other: str) -> str:
        return f"{key}: same content (checksum {checksum}) as {other}, already recorded for table {table_id}; not merged again"

    def record(self, files: Iterable[LandedFile]) -> Recorded:
        """Record arrivals. Same key and checksum: an identical re-delivery, no new row (its listing
        version is remembered). New content under a known key: the next file version. Content equal
        to another key's file of the same table: recorded as a duplicate, never claimed."""
        files = list(files)
        if not files:  # most sensor ticks: no write transaction at all
            return Recorded([], [], 0)

        def run(cur) -> Recorded:
            self._b.serialize(cur, "record")  # file versions are numbered per key: one writer at a time
            new: list[LedgerEntry] = []
            dupes: list[LedgerEntry] = []
            identical = 0
            now = _now()
            for f in files:
                self._exec(cur, "SELECT id FROM landed_files WHERE key = ? AND checksum = ?", (f.key, f.checksum))
                row = cur.fetchone()
                if row:
                    identical += 1
                    # Remember the new listing version so the next listing does not hash it again.
                    self._exec(cur, "UPDATE landed_files SET version = ? WHERE id = ?", (f.version, row[0]))
                    continue
                self._exec(cur, "SELECT COALESCE(MAX(file_version), 0) FROM landed_files WHERE key = ?", (f.key,))
                file_version = cur.fetchone()[0] + 1
                other = self._duplicate_of(cur, f.table_id, f.checksum, f.key) if f.table_id and f.dedupe else None
                reason: str | None
                if f.table_id and other is not None:
                    status, reason = DUPLICATE, self._duplicate_reason(f.key, f.checksum, f.table_id, other)
                else:
                    status, reason = (LANDED, f.reason) if f.table_id else (FAILED, f.reason)
                self._exec(
                    cur,
                    "INSERT INTO landed_files (key, checksum, size, version, table_id, status, reason, arrived_at, updated_at, "
                    "file_version, duplicate_of) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (f.key, f.checksum, f.size, f.version, f.table_id, status, reason, now, now, file_version, other),
                )
                [entry] = self._fetch(cur, f"SELECT {_COLUMNS} FROM landed_files WHERE key = ? AND checksum = ?", (f.key, f.checksum))
                (dupes if status == DUPLICATE else new).append(entry)
            return Recorded(new, dupes, identical)

        return self._run(f"recording {len(files)} landed files", run)

    def seen_versions(self, keys: Iterable[str] | None = None) -> dict[str, set[str]]:
        """Listing versions recorded per key: of every file, or only of `keys` (what one
        incremental listing returned, so a tick does not load the whole ledger)."""
        wanted = None if keys is None else sorted(set(keys))

        def run(cur):
            out: dict[str, set[str]] = {}
            if wanted is None:
                cur.execute("SELECT key, version FROM landed_files")
                rows = cur.fetchall()
            else:
                rows = []
                for i in range(0, len(wanted), _IN_CHUNK):
                    chunk = wanted[i : i + _IN_CHUNK]
                    self._exec(cur, f"SELECT key, version FROM landed_files WHERE key IN ({', '.join('?' * len(chunk))})", chunk)
                    rows += cur.fetchall()
            for key, version in rows:
                out.setdefault(key, set()).add(version)
            return out

        if wanted == []:
            return {}
        return self._run("listing known file versions", run, write=False)

    def unrouted(self) -> list[LedgerEntry]:
        return self._rows("listing unroutable files",
                          f"SELECT {_COLUMNS} FROM landed_files WHERE table_id IS NULL AND status = ? ORDER BY id", (FAILED,))

    def route(self, entry_id: int, table_id: str) -> LedgerEntry:
        """Route a file that routed nowhere when it landed; a copy of a file the table already has
        becomes a duplicate."""

        def run(cur) -> LedgerEntry:
            self._b.serialize(cur, "record")
            [e] = self._fetch(cur, f"SELECT {_COLUMNS} FROM landed_files WHERE id = ?", (entry_id,))
            other = self._duplicate_of(cur, table_id, e.checksum, e.key)
            status, reason = (DUPLICATE, self._duplicate_reason(e.key, e.checksum, table_id, other)) if other else (LANDED, None)
            self._exec(
                cur,
                "UPDATE landed_files SET table_id = ?, status = ?, reason = ?, duplicate_of = ?, updated_at = ? WHERE id = ?",
                (table_id, status, reason, other, _now(), entry_id),
            )
            [e] = self._fetch(cur, f"SELECT {_COLUMNS} FROM landed_files WHERE id = ?", (entry_id,))
            return e

        return self._run(f"routing ledger entry {entry_id} to table {table_id}", run)

    # --- batches --------------------------------------------------------------------------------

    def claim(self, table_id: str, limit: int | None = None, *, owner: str | None = None) -> tuple[str, list[LedgerEntry]]:
        """Claim the table's landed files as a new batch (owner: the TableLock.owner of the merge),
        ordered by key then file version. A landed file with a newer version under its key is
        superseded instead: only the newest version of a key is merged."""
        batch_id = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"

        def run(cur) -> list[LedgerEntry]:
            now = _now()
            self._exec(
                cur,
                "SELECT o.id, o.key, o.file_version, n.file_version, n.checksum FROM landed_files o "
                "JOIN landed_files n ON n.key = o.key AND n.file_version = "
                "(SELECT MAX(m.file_version) FROM landed_files m WHERE m.key = o.key) "
                "WHERE o.table_id = ? AND o.status = ? AND n.file_version > o.file_version",
                (table_id, LANDED),
            )
            for i, key, version, newest, checksum in cur.fetchall():
                self._exec(
                    cur,
                    "UPDATE landed_files SET status = ?, reason = ?, updated_at = ? WHERE id = ?",
                    (SUPERSEDED, f"{key}: version {version} superseded by version {newest} (checksum {checksum}) "
                                 f"landed under the same key for table {table_id}; only the newest version is merged", now, i),
                )
            self._exec(cur, "SELECT id FROM landed_files WHERE table_id = ? AND status = ? ORDER BY key, file_version",
                       (table_id, LANDED))
            ids = [r[0] for r in cur.fetchall()][:limit]
            cur.executemany(
                self._sql(
                    "UPDATE landed_files SET status = ?, batch_id = ?, claimed_by = ?, attempts = attempts + 1, updated_at = ?, "
                    "reason = NULL WHERE id = ? AND status = ?"
                ),
                [(PROCESSING, batch_id, owner, now, i, LANDED) for i in ids],
            )
            if not ids:
                return []
            return self._fetch(
                cur, f"SELECT {_COLUMNS} FROM landed_files WHERE batch_id = ? AND status = ? ORDER BY key, file_version",
                (batch_id, PROCESSING),
            )

        return batch_id, self._run(f"claiming landed files of table {table_id}", run)

    def processing_batches(self, table_id: str) -> dict[str, list[LedgerEntry]]:
        out: dict[str, list[LedgerEntry]] = {}
        for e in self._rows(
            f"listing unfinished batches of table {table_id}",
            f"SELECT {_COLUMNS} FROM landed_files WHERE table_id = ? AND status = ? ORDER BY batch_id, key, file_version",
            (table_id, PROCESSING),
        ):
            assert e.batch_id is not None, f"{e.key}: processing without a batch id"  # claiming sets both at once
            out.setdefault(e.batch_id, []).append(e)
        return out

    def finish_batch(
        self, batch_id: str, *, committed: dict[str, tuple[int, int]], failed: dict[str, str], snapshot_id: int | None,
        set_aside: dict[str, str] | None = None,
    ) -> None:
        """committed: key -> (rows read, rows quarantined); failed: key -> reason (stays retryable);
        set_aside: key -> why a committed file gave the table nothing (no rows, or every row
        quarantined): such a file ends as 'quarantined' with that reason."""
        set_aside = set_aside or {}

        def run(cur) -> None:
            now = _now()
            for key, (rows, quarantined) in committed.items():
                status = QUARANTINED if key in set_aside or (rows and quarantined == rows) else COMMITTED
                self._exec(
                    cur,
                    "UPDATE landed_files SET status = ?, reason = ?, rows_read = ?, quarantined_rows = ?, snapshot_id = ?, updated_at = ? "
                    "WHERE batch_id = ? AND key = ? AND status = ?",
                    (status, set_aside.get(key), rows, quarantined, snapshot_id, now, batch_id, key, PROCESSING),
                )
            for key, reason in failed.items():
                self._exec(
                    cur,
                    "UPDATE landed_files SET status = ?, reason = ?, updated_at = ? WHERE batch_id = ? AND key = ? AND status = ?",
                    (FAILED, reason, now, batch_id, key, PROCESSING),
                )

        self._run(f"finishing batch {batch_id}", run)

    def release_batch(self, batch_id: str) -> int:
        """Give a batch the merge abandons unfinished back: its files are landed again, claimable by
        the next merge. Returns how many files were released."""

        def run(cur) -> int:
            self._exec(
                cur,
                "UPDATE landed_files SET status = ?, batch_id = NULL, claimed_by = NULL, updated_at = ? WHERE batch_id = ? AND status = ?",
                (LANDED, _now(), batch_id, PROCESSING),
            )
            return cur.rowcount

        return self._run(f"releasing batch {batch_id}", run)

    def retry_failed(self, table_id: str) -> int:
        """Failed files are landed again, except a failed version of a key that has a newer version:
        that one is never merged and keeps the reason it failed."""

        def run(cur) -> int:
            self._exec(
                cur,
                "UPDATE landed_files SET status = ?, updated_at = ? WHERE table_id = ? AND status = ? AND NOT EXISTS "
                "(SELECT 1 FROM landed_files n WHERE n.key = landed_files.key AND n.file_version > landed_files.file_version)",
                (LANDED, _now(), table_id, FAILED),
            )
            return cur.rowcount

        return self._run(f"retrying failed files of table {table_id}", run)

    def reset_for_rebuild(self, table_id: str) -> int:
        """Every file the table merged, set aside, failed or is merging is landed again, for a rebuild
        from the landing zone; duplicates and superseded versions stay as they are."""

        def run(cur) -> int:
            self._exec(
                cur,
                "UPDATE landed_files SET status = ?, batch_id = NULL, claimed_by = NULL, snapshot_id = NULL, rows_read = NULL, "
                f"quarantined_rows = NULL, reason = NULL, updated_at = ? WHERE table_id = ? AND status IN ({', '.join('?' * len(_REBUILT))})",
                (LANDED, _now(), table_id, *_REBUILT),
            )
            return cur.rowcount

        return self._run(f"resetting table {table_id} for a rebuild", run)

    def record_archived(self, entry_id: int, location: str) -> None:
        """Where a merged file went when it was archived (a location, or why it could not be)."""
        self._run(f"recording where ledger entry {entry_id} was archived",
                  lambda cur: self._exec(cur, "UPDATE landed_files SET archived_to = ?, updated_at = ? WHERE id = ?",
                                         (location, _now(), entry_id)))

    # --- queries --------------------------------------------------------------------------------

    def entries(self, table_id: str | None = None, status: str | None = None) -> list[LedgerEntry]:
        where, params = [], []
        if table_id is not None:
            where.append("table_id = ?")
            params.append(table_id)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        return self._rows(f"listing entries{f' of table {table_id}' if table_id else ''}",
                          f"SELECT {_COLUMNS} FROM landed_files {clause} ORDER BY id", params)

    def status_counts(self, table_id: str) -> dict[str, int]:
        def run(cur):
            self._exec(cur, "SELECT status, count(*) FROM landed_files WHERE table_id = ? GROUP BY status", (table_id,))
            return {s: 0 for s in STATUSES} | dict(cur.fetchall())

        return self._run(f"counting files of table {table_id}", run, write=False)

    def tables_with_pending(self) -> dict[str, int]:
        def run(cur):
            self._exec(cur, "SELECT table_id, count(*) FROM landed_files WHERE status IN (?, ?) AND table_id IS NOT NULL "
                            "GROUP BY table_id", (LANDED, PROCESSING))
            return dict(cur.fetchall())

        return self._run("listing tables with pending files", run, write=False)

    def newest_landed(self) -> dict[str, int]:
        """table id -> id of its newest landed (not yet claimed) file: changes when new files arrive."""

        def run(cur):
            self._exec(cur, "SELECT table_id, max(id) FROM landed_files WHERE status = ? AND table_id IS NOT NULL GROUP BY table_id",
                       (LANDED,))
            return dict(cur.fetchall())

        return self._run("listing newest landed files", run, write=False)

    def oldest_pending(self) -> dict[str, str]:
        """table id -> arrival (ISO) of its oldest file not merged yet (landed or processing): how long
        the table has been behind its landing zone. Tables with nothing pending are absent."""

        def run(cur):
            self._exec(cur, "SELECT table_id, min(arrived_at) FROM landed_files WHERE status IN (?, ?) AND table_id IS NOT NULL "
                            "GROUP BY table_id", (LANDED, PROCESSING))
            return dict(cur.fetchall())

        return self._run("listing the oldest pending files", run, write=False)

    def table_files(self, table_ids: Iterable[str] | None = None) -> dict[str, TableFiles]:
        """table id -> what is recorded for it (default: every table with a file), in one query."""
        wanted = None if table_ids is None else sorted(set(table_ids))
        if wanted == []:
            return {}

        def run(cur):
            where = "table_id IS NOT NULL"
            if wanted is not None:
                where += f" AND table_id IN ({', '.join('?' * len(wanted))})"
            self._exec(cur, "SELECT table_id, status, count(*), sum(size), max(id), max(arrived_at), min(arrived_at), "
                            f"max(updated_at) FROM landed_files WHERE {where} GROUP BY table_id, status", wanted or ())
            return cur.fetchall()

        groups: dict[str, list[tuple]] = {}
        for row in self._run("summarizing landed files", run, write=False):
            groups.setdefault(row[0], []).append(row[1:])
        out = {}
        for table_id, rows in groups.items():
            pending = [r[5] for r in rows if r[0] in (LANDED, PROCESSING)]
            merged = [r[6] for r in rows if r[0] in (COMMITTED, QUARANTINED)]
            out[table_id] = TableFiles(
                table_id=table_id,
                files=sum(r[1] for r in rows),
                bytes=sum(int(r[2] or 0) for r in rows),
                by_status={st: 0 for st in STATUSES} | {r[0]: r[1] for r in rows},
                newest_id=max(r[3] for r in rows),
                newest_arrival=max(r[4] for r in rows),
                oldest_pending_arrival=min(pending) if pending else None,
                last_merged_at=max(merged) if merged else None,
            )
        return out

    def stalled_batches(self, older_than: dt.timedelta) -> dict[str, str]:
        """table id -> batch id of batches claimed longer ago than older_than and never finished
        (the merging process died); the next merge of the table resumes them."""
        cutoff = (dt.datetime.now(dt.UTC) - older_than).isoformat(timespec="milliseconds")

        def run(cur):
            self._exec(cur, "SELECT table_id, min(batch_id) FROM landed_files WHERE status = ? AND updated_at < ? GROUP BY table_id",
                       (PROCESSING, cutoff))
            return dict(cur.fetchall())

        return self._run("listing stalled batches", run, write=False)

    # --- reload requests ------------------------------------------------------------------------

    def request_reload(self, table_id: str, requested_by: str) -> None:
        """An operator asks that the table's next batch with full-load files replaces the table."""
        self._run(
            f"requesting a reload of table {table_id}",
            lambda cur: self._exec(
                cur,
                "INSERT INTO reload_requests (table_id, requested_by, requested_at) VALUES (?, ?, ?) "
                "ON CONFLICT (table_id) DO UPDATE SET requested_by = excluded.requested_by, requested_at = excluded.requested_at",
                (table_id, requested_by, _now()),
            ),
        )

    def reload_requested(self, table_id: str) -> bool:
        def run(cur) -> bool:
            self._exec(cur, "SELECT 1 FROM reload_requests WHERE table_id = ?", (table_id,))
            return cur.fetchone() is not None

        return self._run(f"reading the reload request of table {table_id}", run, write=False)

    def clear_reload(self, table_id: str) -> None:
        self._run(f"clearing the reload request of table {table_id}",
                  lambda cur: self._exec(cur, "DELETE FROM reload_requests WHERE table_id = ?", (table_id,)))

    # --- table locks ----------------------------------------------------------------------------

    def keep_batches(self, table_id: str, records: dict[str, dict[str, str]]) -> None:
        """Keep the snapshot summaries of committed batches whose snapshots maintenance expires: the
        record that proves them committed outlives the snapshot (`kept_batches`)."""
        def run(cur) -> None:
            for batch_id, summary in records.items():
                self._exec(cur, "INSERT INTO kept_batches (table_id, batch_id, snapshot_id, summary, kept_at) VALUES (?, ?, ?, ?, ?) "
                                "ON CONFLICT (table_id, batch_id) DO NOTHING",
                           (table_id, batch_id, int(summary["snapshot-id"]), json.dumps(summary, sort_keys=True), _now()))
        self._run(f"keeping {len(records)} batch records of table {table_id}", run)

    def kept_batches(self, table_id: str) -> dict[str, dict[str, str]]:
        """batch id -> snapshot summary of the table's batches whose snapshots have expired."""
        def run(cur) -> dict[str, dict[str, str]]:
            self._exec(cur, "SELECT batch_id, summary FROM kept_batches WHERE table_id = ?", (table_id,))
            return {b: json.loads(s) for b, s in cur.fetchall()}
        return self._run(f"reading the kept batch records of table {table_id}", run, write=False)

    def lock_table(self, table_id: str, *, wait_seconds: float, lease_seconds: float = 60.0) -> TableLock:
        """The one lock a merge of the table holds, whoever merges (ingest command, Dagster run,
        Spark driver). Use as a context manager; entering raises TableBusy after wait_seconds."""
        return TableLock(self, table_id, wait_seconds=wait_seconds, lease_seconds=lease_seconds)

    def lock_holder(self, table_id: str) -> LockHolder | None:
        def run(cur):
            self._exec(cur, f"SELECT {_HOLDER} FROM table_locks WHERE table_id = ?", (table_id,))
            row = cur.fetchone()
            return LockHolder(*row) if row else None

        return self._run(f"reading the lock holder of table {table_id}", run, write=False)

    def _write_holder(self, lock: TableLock, *, takeover_owner: str | None, unconditional: bool) -> bool:
        """Take (or refresh) the holder row in one conditional statement: free, expired, ours, or
        takeover_owner's (a holder found dead). Returns whether the row is now ours."""
        host, host_id = _host()
        now = time.time()
        cond = "" if unconditional else " WHERE table_locks.expires_at < ? OR table_locks.owner = ? OR table_locks.owner = ?"
        params = [lock.table_id, lock.owner, host, host_id, os.getpid(), _now(), now + lock.lease_seconds]
        if not unconditional:
            params += [now, lock.owner, takeover_owner or lock.owner]

        def run(cur) -> bool:
            self._exec(
                cur,
                "INSERT INTO table_locks (table_id, owner, host, host_id, pid, acquired_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (table_id) DO UPDATE SET owner = excluded.owner, host = excluded.host, host_id = excluded.host_id, "
                "pid = excluded.pid, acquired_at = excluded.acquired_at, expires_at = excluded.expires_at" + cond,
                params,
            )
            return cur.rowcount == 1

        return self._run(f"taking the lock of table {lock.table_id}", run)

    def _dead_holder(self, table_id: str) -> str | None:
        """The owner of the table's lock row when it is a process of this host that no longer runs."""

        def run(cur):
            self._exec(cur, "SELECT owner, host_id, pid FROM table_locks WHERE table_id = ?", (table_id,))
            return cur.fetchone()

        row = self._run(f"reading the lock holder of table {table_id}", run, write=False)
        if row and row[1] == _host()[1] and not _pid_alive(int(row[2])):
            return row[0]
        return None

    def _renew(self, lock: TableLock) -> bool:
        def run(cur) -> bool:
            self._exec(cur, "UPDATE table_locks SET expires_at = ? WHERE table_id = ? AND owner = ?",
                       (time.time() + lock.lease_seconds, lock.table_id, lock.owner))
            return cur.rowcount == 1

        return self._run(f"renewing the lock of table {lock.table_id}", run)

    def _drop_holder(self, lock: TableLock) -> None:
        self._run(f"releasing the lock of table {lock.table_id}",
                  lambda cur: self._exec(cur, "DELETE FROM table_locks WHERE table_id = ? AND owner = ?", (lock.table_id, lock.owner)))


class TableLock:
    """A held per-table merge lock (see FileLedger.lock_table). On SQLite a lease row renewed by a
    heartbeat; on PostgreSQL an advisory lock on a connection of its own (freed when the process
    dies), with the same row naming the holder. `owner` is what the merge stores on its batch."""

    def __init__(self, ledger: SqlFileLedger, table_id: str, *, wait_seconds: float, lease_seconds: float):
        self.ledger, self.table_id = ledger, table_id
        self.wait_seconds, self.lease_seconds = wait_seconds, lease_seconds
        host, _ = _host()
        self.owner = f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._held = False
        self._lost = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._session: _LockSession | None = None  # PostgreSQL: the connection holding the advisory lock

    @property
    def held(self) -> bool:
        """False once released, or once the heartbeat found the lock taken over (the lease expired
        while this process was not renewing it)."""
        return self._held and not self._lost

    def __enter__(self) -> TableLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        start = time.monotonic()
        deadline = start + self.wait_seconds
        try:
            while not self._try_acquire():
                if time.monotonic() >= deadline:
                    raise TableBusy(self.table_id, self.ledger.lock_holder(self.table_id), time.monotonic() - start)
                time.sleep(min(random.uniform(0.05, 0.15), max(0.0, deadline - time.monotonic())))
        except BaseException:
            self._close_session()
            raise
        self._held, self._lost = True, False
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lake-lock-{self.table_id}", daemon=True)
        self._beat.start()

    def _try_acquire(self) -> bool:
        ledger = self.ledger
        if ledger._b.advisory:
            if self._session is None:
                self._session = ledger._b.lock_session(self.table_id)
            if not ledger._b.try_advisory(self._session, self.table_id):
                return False
            ledger._write_holder(self, takeover_owner=None, unconditional=True)
            return True
        if ledger._write_holder(self, takeover_owner=None, unconditional=False):
            return True
        dead = ledger._dead_holder(self.table_id)
        return dead is not None and ledger._write_holder(self, takeover_owner=dead, unconditional=False)

    def _heartbeat(self) -> None:
        interval = max(0.05, self.lease_seconds / 3)
        while not self._stop.wait(interval):
            try:
                if self._session is not None and not self.ledger._b.session_alive(self._session):
                    self._lost = True
                    return
                if not self.ledger._renew(self) and self._session is None:
                    self._lost = True
                    return
            except LedgerError:
                continue  # a locked ledger: try again next beat; the lease outlives a few misses

    def release(self) -> None:
        if self._beat is not None:
            self._stop.set()
            self._beat.join()
            self._beat = None
        try:
            if self._held:
                self.ledger._drop_holder(self)
        finally:
            self._held = False
            self._close_session()

    def _close_session(self) -> None:
        if self._session is not None:
            self.ledger._b.close_session(self._session, self.table_id)
            self._session = None


# --- backends -----------------------------------------------------------------------------------


class _Backend(ABC):
    placeholder = "?"
    autoinc = ""
    errors: tuple[type[BaseException], ...] = ()
    advisory = False  # whether table locks are database advisory locks

    @abstractmethod
    def describe(self) -> str: ...
    @abstractmethod
    def connect(self, timeout: float): ...
    @abstractmethod
    def prepare(self, cur) -> None: ...
    @abstractmethod
    def begin(self, cur, write: bool) -> None: ...
    @abstractmethod
    def commit(self, conn, cur) -> None: ...
    @abstractmethod
    def rollback(self, conn) -> None: ...
    @abstractmethod
    def is_busy(self, err: BaseException) -> bool: ...
    @abstractmethod
    def columns(self, cur, table: str) -> set[str]: ...
    @abstractmethod
    def serialize(self, cur, what: str) -> None: ...

    # Advisory table locks: only a backend with `advisory = True` has them.

    def lock_session(self, table_id: str) -> _LockSession:
        raise NotImplementedError(f"{type(self).__name__} has no advisory locks")

    def try_advisory(self, session: _LockSession, table_id: str) -> bool:
        raise NotImplementedError(f"{type(self).__name__} has no advisory locks")

    def session_alive(self, session: _LockSession) -> bool:
        raise NotImplementedError(f"{type(self).__name__} has no advisory locks")

    def close_session(self, session: _LockSession, table_id: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no advisory locks")


class _Sqlite(_Backend):
    placeholder = "?"
    autoinc = "INTEGER PRIMARY KEY AUTOINCREMENT"
    errors = (sqlite3.Error,)

    def __init__(self, path: Path):
        self.path = Path(path)

    def describe(self) -> str:
        return f"{self.path} (SQLite)"

    def connect(self, timeout: float):
        # Transactions are explicit (BEGIN IMMEDIATE for writes, so a writer waits for the write lock
        # up front instead of failing to upgrade a read snapshot later).
        return sqlite3.connect(self.path, timeout=timeout, isolation_level=None)

    def prepare(self, cur) -> None:
        cur.execute("PRAGMA journal_mode=WAL")

    def begin(self, cur, write: bool) -> None:
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def commit(self, conn, cur) -> None:
        cur.execute("COMMIT")

    def rollback(self, conn) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def is_busy(self, err: BaseException) -> bool:
        msg = str(err).lower()
        return isinstance(err, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg)

    def columns(self, cur, table: str) -> set[str]:
        cur.execute(f"PRAGMA table_info({table})")
        return {r[1] for r in cur.fetchall()}

    def serialize(self, cur, what: str) -> None:
        pass  # BEGIN IMMEDIATE already admits one writer at a time


def _advisory_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"lake.ledger:{name}".encode()).digest()[:8], "big", signed=True)


class _Postgres(_Backend):
    placeholder = "%s"
    autoinc = "BIGSERIAL PRIMARY KEY"
    advisory = True

    def __init__(self, dsn: str):
        import psycopg2
        import psycopg2.errors
        from psycopg2.extensions import parse_dsn

        self.dsn = dsn
        self._pg = psycopg2
        self.errors = (psycopg2.Error,)
        self._busy = (psycopg2.errors.LockNotAvailable, psycopg2.errors.DeadlockDetected, psycopg2.errors.SerializationFailure)
        try:
            p = parse_dsn(dsn)
        except psycopg2.ProgrammingError:
            p = {}
        self._options = p.get("options", "")
        user = f"{p['user']}@" if p.get("user") else ""
        port = f":{p['port']}" if p.get("port") else ""
        self._desc = f"postgresql://{user}{p.get('host', 'localhost')}{port}/{p.get('dbname', '?')} (PostgreSQL)"

    def describe(self) -> str:
        return self._desc

    def connect(self, timeout: float):
        # lock_timeout turns a wait on a locked row or table into an error the ledger retries.
        return self._pg.connect(self.dsn, options=f"{self._options} -c lock_timeout={max(50, int(timeout * 1000))}".strip())

    def prepare(self, cur) -> None:
        pass

    def begin(self, cur, write: bool) -> None:
        pass  # psycopg2 opens a transaction at the first statement

    def commit(self, conn, cur) -> None:
        conn.commit()

    def rollback(self, conn) -> None:
        try:
            conn.rollback()
        except self._pg.Error:
            pass

    def is_busy(self, err: BaseException) -> bool:
        return isinstance(err, self._busy)

    def columns(self, cur, table: str) -> set[str]:
        cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s",
                    (table,))
        return {r[0] for r in cur.fetchall()}

    def serialize(self, cur, what: str) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_advisory_key(what),))

    # The table lock: a session-level advisory lock on a connection of its own.

    def lock_session(self, table_id: str) -> _LockSession:
        try:
            conn = self._pg.connect(self.dsn, application_name=f"lake table lock {table_id}"[:63])
            conn.autocommit = True
            # A holder that vanishes without closing its socket frees the lock within about a minute.
            conn.cursor().execute("SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3")
        except self._pg.Error as err:
            raise LedgerError(f"ledger {self._desc}: opening the lock session of table {table_id}: {err}") from err
        return _LockSession(conn, threading.Lock())

    def try_advisory(self, session: _LockSession, table_id: str) -> bool:
        try:
            with session.guard:
                cur = session.conn.cursor()
                cur.execute("SELECT pg_try_advisory_lock(%s)", (_advisory_key(f"table:{table_id}"),))
                row = cur.fetchone()
                assert row is not None  # a SELECT without FROM returns one row
                return bool(row[0])
        except self._pg.Error as err:
            raise LedgerError(f"ledger {self._desc}: taking the lock of table {table_id}: {err}") from err

    def session_alive(self, session: _LockSession) -> bool:
        try:
            with session.guard:
                session.conn.cursor().execute("SELECT 1")
            return True
        except self._pg.Error:
            return False

    def close_session(self, session: _LockSession, table_id: str) -> None:
        try:
            with session.guard:
                session.conn.cursor().execute("SELECT pg_advisory_unlock(%s)", (_advisory_key(f"table:{table_id}"),))
        except self._pg.Error:
            pass  # closing the connection frees the lock anyway
        finally:
            session.conn.close()


@dataclass
class _LockSession:
    """The PostgreSQL connection that holds a table's advisory lock (heartbeat and owner share it)."""

    conn: PgConnection
    guard: threading.Lock


def sqlite_ledger(path: Path, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> SqlFileLedger:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqlFileLedger(_Sqlite(path), busy_timeout)


def postgres_ledger(dsn: str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> SqlFileLedger:
    return SqlFileLedger(_Postgres(dsn), busy_timeout)
