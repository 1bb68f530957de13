"""Snapshot loads (`load: snapshot`): the newest file is the table. Decided once for every engine,
as changes the rest of the pipeline applies like any other (snapshot-diff CDC):

- the batch's newest file (by name, then version: its position) is the snapshot; older files of
  the batch, and a batch whose newest file is not newer than the table's last snapshot
  (`lake.snapshot-file`, carried by every commit), change nothing (counted as stale);
- a row of the snapshot whose key the table lacks is an insert; one whose values differ from the
  table's row an update; one equal to it is dropped, so unchanged rows are not rewritten;
- a key the table holds that the snapshot lacks is deleted, at the snapshot's position, except a
  key that one of the snapshot's quarantined rows names: a corrupt row does not delete its row.
An empty snapshot never gets here unless the registry allows it (`drops.py`).

A SQL table (`format: sql`) mixes snapshots (its full extracts) with upserts (its delta extracts):
the newest full extract of the batch is diffed as above; the rows of older files (deltas before it
included) are superseded, since a full extract is a later reading of the whole source table; the
deltas after it keep their rows, ranking after the diff by their file position. This is the full
outer join of the daily dump with the lake table, followed by the deltas since the dump.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.table import Table

from lake_assets.core.cdc.batch import FILE, SEQ, ChangeBatch, deletes_at
from lake_assets.core.cdc.dms import OP, ROW, SourceFile
from lake_assets.core.cdc.extracts import is_full_extract
from lake_assets.core.cdc.iceberg import BATCH_ID, lake_snapshots
from lake_assets.core.cdc.position import file_positions
from lake_assets.core.cdc.semantics import WIN, quote, winners

SNAPSHOT_FILE = "lake.snapshot-file"
_HELD = "__held"


@dataclass
class SnapshotDiff:
    changes: pa.Table
    superseded: int = 0  # rows of files older than the snapshot that wins
    unchanged: int = 0
    summary: dict[str, str] = field(default_factory=dict)


def last_snapshot_file(tbl: Table) -> str | None:
    for snap in lake_snapshots(tbl):
        props = snap.summary.additional_properties if snap.summary else {}
        if BATCH_ID in props:
            return props.get(SNAPSHOT_FILE)
    return None


def is_snapshot_file(batch: ChangeBatch, f: SourceFile) -> bool:
    """Whether a file of the batch is a whole snapshot: every file of a load snapshot table, a SQL
    table's full extracts (its deltas are upserts)."""
    return batch.table.format != "sql" or is_full_extract(f.base)


def takes_snapshots(batch: ChangeBatch) -> bool:
    return batch.table.load == "snapshot" or batch.table.format == "sql"


def apply_snapshot(tbl: Table, batch: ChangeBatch) -> SnapshotDiff:
    """The batch's changes as the diff of its newest snapshot file against the table, followed by
    the upsert files after it (a SQL table's deltas)."""
    keys = batch.table.primary_key
    changes = batch.changes
    last = last_snapshot_file(tbl)
    carried = {SNAPSHOT_FILE: last} if last is not None else {}
    order = {f.key: _file_position(f.key, f.base, batch.versions.get(f.key, 1)) for f in batch.files}
    snapshots = [f.key for f in batch.files if is_snapshot_file(batch, f)]
    upserts = [k for k in order if k not in set(snapshots)]
    if not snapshots:  # only upserts (a SQL table's deltas): they change the table like any changes
        return SnapshotDiff(changes, summary=carried)
    newest = max(snapshots, key=lambda k: order[k])
    later = [k for k in upserts if order[k] > order[newest]]
    after = changes.filter(pc.is_in(changes.column(FILE), pa.array(later, pa.string()))) if later else changes.slice(0, 0)
    if last is not None and order[newest] <= last:
        kept_upserts = changes.filter(pc.is_in(changes.column(FILE), pa.array(upserts, pa.string())))
        return SnapshotDiff(kept_upserts, superseded=changes.num_rows - kept_upserts.num_rows, summary=carried)
    mine = changes.filter(pc.equal(changes.column(FILE), newest))
    superseded = changes.num_rows - mine.num_rows - after.num_rows
    mine = winners(mine, keys)
    summary = {SNAPSHOT_FILE: order[newest]}
    if tbl.current_snapshot() is None:
        return SnapshotDiff(pa.concat_tables([mine, after]), superseded, summary=summary)
    held = tbl.scan().to_arrow()
    data = [c for c in mine.column_names if c not in (OP, ROW, FILE, SEQ)]
    common = [c for c in data if c in held.column_names]
    new = [c for c in data if c not in held.column_names]
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("m", mine.select(data).append_column(WIN, pa.array(range(mine.num_rows), pa.int64())))
        con.register("h", held.select(common).append_column(_HELD, pa.array([True] * held.num_rows)))
        on = " AND ".join(f"m.{quote(k)} = h.{quote(k)}" for k in keys)
        same = " AND ".join([f"m.{quote(c)} IS NOT DISTINCT FROM h.{quote(c)}" for c in common]
                            + [f"m.{quote(c)} IS NULL" for c in new]) or "true"
        changed = con.execute(
            f"SELECT m.{WIN} FROM m LEFT JOIN h ON {on} WHERE h.{_HELD} IS NULL OR NOT ({same}) ORDER BY m.{WIN}"
        ).arrow().read_all().column(0)
        absent = con.execute(
            f"SELECT {', '.join('h.' + quote(k) for k in keys)} FROM h ANTI JOIN m ON {on}"
        ).arrow().read_all()
    finally:
        con.close()
    kept = mine.take(changed)
    absent = _unprotected(absent, batch, newest, keys)
    position = order[newest]
    deletes = deletes_at(mine.schema, absent, keys, seq=position, file=newest, row=0)
    return SnapshotDiff(pa.concat_tables([kept, deletes, after]), superseded, mine.num_rows - kept.num_rows, summary)


def _file_position(key: str, base: str, version: int) -> str:
    """The position of a snapshot file (its row 0): files compare by name, then version."""
    return file_positions(is_load=False, sequence=None, name=base, version=version, rows=pa.array([0], pa.int64()),
                          key=key)[0].as_py()


def _unprotected(absent: pa.Table, batch: ChangeBatch, newest: str, keys: tuple[str, ...]) -> pa.Table:
    """Absent keys without the ones a quarantined row of the snapshot names (compared as text)."""
    named = set()
    for file, q in batch.quarantined:
        if file != newest:
            continue
        try:
            raw = json.loads(q.raw)
        except ValueError:
            continue
        if isinstance(raw, dict) and all(raw.get(k) is not None for k in keys):
            named.add(tuple(str(raw[k]) for k in keys))
    if not named or absent.num_rows == 0:
        return absent
    texts = list(zip(*(absent.column(k).cast(pa.string()).to_pylist() for k in keys)))
    return absent.filter(pa.array([t not in named for t in texts]))

