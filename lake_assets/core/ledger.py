"""The file ledger: every landed file, its checksum and where it is in landed → processing →
committed | failed | quarantined.

The Iceberg snapshot summary (batch id + file list) is the truth; the ledger is reconciled against it
after a crash. SQLite locally; the same SQL serves PostgreSQL in production.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

LANDED, PROCESSING, COMMITTED, FAILED, QUARANTINED = "landed", "processing", "committed", "failed", "quarantined"
STATUSES = (LANDED, PROCESSING, COMMITTED, FAILED, QUARANTINED)


@dataclass(frozen=True)
class LandedFile:
    key: str
    checksum: str
    size: int
    version: str  # cheap change marker from the listing (mtime+size locally, ETag on S3)
    table_id: str | None  # source.table, None when the file routes to no registry table
    reason: str | None = None  # why it could not be routed


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


class FileLedger(Protocol):
    def record(self, files: Iterable[LandedFile]) -> tuple[list[LedgerEntry], int]: ...
    def seen_versions(self) -> dict[str, set[str]]: ...
    def claim(self, table_id: str, limit: int | None = None) -> tuple[str, list[LedgerEntry]]: ...
    def processing_batches(self, table_id: str) -> dict[str, list[LedgerEntry]]: ...
    def finish_batch(self, batch_id: str, *, committed: dict[str, tuple[int, int]], failed: dict[str, str], snapshot_id: int | None, set_aside: dict[str, str] | None = None) -> None: ...
    def retry_failed(self, table_id: str) -> int: ...
    def unrouted(self) -> list[LedgerEntry]: ...
    def route(self, entry_id: int, table_id: str) -> None: ...
    def entries(self, table_id: str | None = None, status: str | None = None) -> list[LedgerEntry]: ...
    def status_counts(self, table_id: str) -> dict[str, int]: ...
    def tables_with_pending(self) -> dict[str, int]: ...
    def stalled_batches(self, older_than: dt.timedelta) -> dict[str, str]: ...
    def newest_landed(self) -> dict[str, int]: ...


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
    UNIQUE (key, checksum)
);
CREATE INDEX IF NOT EXISTS landed_files_table_status ON landed_files (table_id, status);
CREATE INDEX IF NOT EXISTS landed_files_batch ON landed_files (batch_id);
"""

_COLUMNS = "id, key, checksum, size, table_id, status, batch_id, reason, attempts, arrived_at, rows_read, quarantined_rows, snapshot_id"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class SqlFileLedger:
    """The ledger over a DB-API connection; `placeholder` is '?' for SQLite and '%s' for PostgreSQL."""

    def __init__(self, connect, placeholder: str, autoinc: str):
        self._connect = connect
        self._ph = placeholder
        self._lock = threading.Lock()
        with self._tx() as cur:
            for stmt in _SCHEMA.format(autoinc=autoinc).split(";"):
                if stmt.strip():
                    cur.execute(stmt)

    def _tx(self):
        ledger = self

        class _Tx:
            def __enter__(self_inner):
                ledger._lock.acquire()
                self_inner.conn = ledger._connect()
                return self_inner.conn.cursor()

            def __exit__(self_inner, exc_type, exc, tb):
                try:
                    if exc_type is None:
                        self_inner.conn.commit()
                    else:
                        self_inner.conn.rollback()
                finally:
                    self_inner.conn.close()
                    ledger._lock.release()

        return _Tx()

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self._ph)

    def _rows(self, sql: str, params=()) -> list[LedgerEntry]:
        with self._tx() as cur:
            cur.execute(self._sql(sql), params)
            return [LedgerEntry(*r) for r in cur.fetchall()]

    def record(self, files: Iterable[LandedFile]) -> tuple[list[LedgerEntry], int]:
        """Record arrivals; identical re-deliveries (same key and checksum) are no-ops.

        Returns (newly recorded entries, number of duplicates ignored).
        """
        new_ids: list[int] = []
        dupes = 0
        now = _now()
        with self._tx() as cur:
            for f in files:
                cur.execute(self._sql("SELECT id FROM landed_files WHERE key = ? AND checksum = ?"), (f.key, f.checksum))
                row = cur.fetchone()
                if row:
                    dupes += 1
                    # Remember the new listing version so the next listing does not hash it again.
                    cur.execute(self._sql("UPDATE landed_files SET version = ? WHERE id = ?"), (f.version, row[0]))
                    continue
                status = LANDED if f.table_id else FAILED
                cur.execute(
                    self._sql(
                        "INSERT INTO landed_files (key, checksum, size, version, table_id, status, reason, arrived_at, updated_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    ),
                    (f.key, f.checksum, f.size, f.version, f.table_id, status, f.reason, now, now),
                )
                cur.execute(self._sql("SELECT id FROM landed_files WHERE key = ? AND checksum = ?"), (f.key, f.checksum))
                new_ids.append(cur.fetchone()[0])
        if not new_ids:
            return [], dupes
        entries = []
        for i in range(0, len(new_ids), 500):
            chunk = new_ids[i : i + 500]
            entries += self._rows(f"SELECT {_COLUMNS} FROM landed_files WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
        return entries, dupes

    def seen_versions(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        with self._tx() as cur:
            cur.execute("SELECT key, version FROM landed_files")
            for key, version in cur.fetchall():
                out.setdefault(key, set()).add(version)
        return out

    def claim(self, table_id: str, limit: int | None = None) -> tuple[str, list[LedgerEntry]]:
        batch_id = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
        now = _now()
        with self._tx() as cur:
            # A key landed again with new content: only its newest version is merged (ledger rows are
            # finished by key, so two versions of one key must never share a batch).
            cur.execute(
                self._sql(
                    "SELECT id, key FROM landed_files o WHERE table_id = ? AND status = ? "
                    "AND EXISTS (SELECT 1 FROM landed_files n WHERE n.key = o.key AND n.id > o.id)"
                ),
                (table_id, LANDED),
            )
            for i, key in cur.fetchall():
                cur.execute(
                    self._sql("UPDATE landed_files SET status = ?, reason = ?, updated_at = ? WHERE id = ?"),
                    (FAILED, f"{key}: superseded by a newer version landed under the same key; that version is merged instead", now, i),
                )
            cur.execute(
                self._sql("SELECT id FROM landed_files WHERE table_id = ? AND status = ? ORDER BY key, id"),
                (table_id, LANDED),
            )
            ids = [r[0] for r in cur.fetchall()]
            if limit is not None:
                ids = ids[:limit]
            for i in ids:
                cur.execute(
                    self._sql(
                        "UPDATE landed_files SET status = ?, batch_id = ?, attempts = attempts + 1, updated_at = ?, reason = NULL "
                        "WHERE id = ? AND status = ?"
                    ),
                    (PROCESSING, batch_id, now, i, LANDED),
                )
        if not ids:
            return batch_id, []
        return batch_id, self._rows(
            f"SELECT {_COLUMNS} FROM landed_files WHERE batch_id = ? AND status = ? ORDER BY key, id", (batch_id, PROCESSING)
        )

    def processing_batches(self, table_id: str) -> dict[str, list[LedgerEntry]]:
        out: dict[str, list[LedgerEntry]] = {}
        for e in self._rows(
            f"SELECT {_COLUMNS} FROM landed_files WHERE table_id = ? AND status = ? ORDER BY batch_id, key, id",
            (table_id, PROCESSING),
        ):
            out.setdefault(e.batch_id, []).append(e)
        return out

    def finish_batch(
        self, batch_id: str, *, committed: dict[str, tuple[int, int]], failed: dict[str, str], snapshot_id: int | None,
        set_aside: dict[str, str] | None = None,
    ) -> None:
        """committed: key -> (rows read, rows quarantined); failed: key -> reason (stays retryable);
        set_aside: key -> why a committed file gave the table nothing (no rows, or every row
        quarantined): such a file ends as 'quarantined' with that reason."""
        now = _now()
        set_aside = set_aside or {}
        with self._tx() as cur:
            for key, (rows, quarantined) in committed.items():
                status = QUARANTINED if key in set_aside or (rows and quarantined == rows) else COMMITTED
                cur.execute(
                    self._sql(
                        "UPDATE landed_files SET status = ?, reason = ?, rows_read = ?, quarantined_rows = ?, snapshot_id = ?, updated_at = ? "
                        "WHERE batch_id = ? AND key = ? AND status = ?"
                    ),
                    (status, set_aside.get(key), rows, quarantined, snapshot_id, now, batch_id, key, PROCESSING),
                )
            for key, reason in failed.items():
                cur.execute(
                    self._sql(
                        "UPDATE landed_files SET status = ?, reason = ?, updated_at = ? WHERE batch_id = ? AND key = ? AND status = ?"
                    ),
                    (FAILED, reason, now, batch_id, key, PROCESSING),
                )

    def retry_failed(self, table_id: str) -> int:
        with self._tx() as cur:
            cur.execute(
                self._sql("UPDATE landed_files SET status = ?, updated_at = ? WHERE table_id = ? AND status = ?"),
                (LANDED, _now(), table_id, FAILED),
            )
            return cur.rowcount

    def unrouted(self) -> list[LedgerEntry]:
        return self._rows(f"SELECT {_COLUMNS} FROM landed_files WHERE table_id IS NULL AND status = ? ORDER BY id", (FAILED,))

    def route(self, entry_id: int, table_id: str) -> None:
        with self._tx() as cur:
            cur.execute(
                self._sql("UPDATE landed_files SET table_id = ?, status = ?, reason = NULL, updated_at = ? WHERE id = ?"),
                (table_id, LANDED, _now(), entry_id),
            )

    def entries(self, table_id: str | None = None, status: str | None = None) -> list[LedgerEntry]:
        where, params = [], []
        if table_id is not None:
            where.append("table_id = ?")
            params.append(table_id)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        return self._rows(f"SELECT {_COLUMNS} FROM landed_files {clause} ORDER BY id", params)

    def status_counts(self, table_id: str) -> dict[str, int]:
        with self._tx() as cur:
            cur.execute(self._sql("SELECT status, count(*) FROM landed_files WHERE table_id = ? GROUP BY status"), (table_id,))
            return {s: 0 for s in STATUSES} | dict(cur.fetchall())

    def tables_with_pending(self) -> dict[str, int]:
        with self._tx() as cur:
            cur.execute(
                self._sql("SELECT table_id, count(*) FROM landed_files WHERE status IN (?, ?) AND table_id IS NOT NULL GROUP BY table_id"),
                (LANDED, PROCESSING),
            )
            return dict(cur.fetchall())


    def newest_landed(self) -> dict[str, int]:
        """table id -> id of its newest landed (not yet claimed) file: changes when new files arrive."""
        with self._tx() as cur:
            cur.execute(
                self._sql("SELECT table_id, max(id) FROM landed_files WHERE status = ? AND table_id IS NOT NULL GROUP BY table_id"),
                (LANDED,),
            )
            return dict(cur.fetchall())

    def stalled_batches(self, older_than: dt.timedelta) -> dict[str, str]:
        """table id -> batch id of batches claimed longer ago than older_than and never finished
        (the merging process died); the next merge of the table resumes them."""
        cutoff = (dt.datetime.now(dt.UTC) - older_than).isoformat(timespec="milliseconds")
        with self._tx() as cur:
            cur.execute(
                self._sql("SELECT table_id, min(batch_id) FROM landed_files WHERE status = ? AND updated_at < ? GROUP BY table_id"),
                (PROCESSING, cutoff),
            )
            return dict(cur.fetchall())


def sqlite_ledger(path: Path) -> SqlFileLedger:
    path.parent.mkdir(parents=True, exist_ok=True)

    def connect():
        conn = sqlite3.connect(path, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    return SqlFileLedger(connect, "?", "INTEGER PRIMARY KEY AUTOINCREMENT")


def postgres_ledger(dsn: str) -> SqlFileLedger:
    import psycopg2

    return SqlFileLedger(lambda: psycopg2.connect(dsn), "%s", "BIGSERIAL PRIMARY KEY")
