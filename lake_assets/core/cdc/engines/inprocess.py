"""The in-process merge engine: DuckDB/Arrow decide, pyiceberg commits one copy-on-write snapshot.

Only data files whose key range can hold a changed key are scanned, and only files that really hold
a replaced or deleted row are rewritten. This is not `Table.upsert` (see DESIGN.md: it evaluates a
huge `In` filter per file).
"""

from __future__ import annotations

import bisect
import datetime as dt
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.conversions import from_bytes
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files
from pyiceberg.table import Table

from lake_assets.core.cdc.batch import FILE, SEQ, ChangeBatch, build_batch
from lake_assets.core.cdc.dms import OP, ROW, DmsFile, FileChanges, FileReadError, read_dms_file
from lake_assets.core.cdc.iceberg import (
    batch_summary,
    committed_batches,
    conform,
    current_load_max,
    evolve_schema,
    load_or_create,
    table_properties,
)
from lake_assets.core.cdc.semantics import FILE_IX, POS, plan_merge, reject_tombstoned, winners
from lake_assets.core.cdc.sidecars import load_tombstones, update_tombstones, write_quarantine
from lake_assets.core.registry import TableConfig

LAKE_OP = "_lake_op"
BATCH = "_lake_batch_id"
INGESTED_AT = "_lake_ingested_at"
LAKE_ROW = "_lake_row"

TS = pa.timestamp("us", tz="UTC")


@dataclass
class MergeResult:
    table: str
    batch_id: str
    files: list[str]
    rows_read: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    appended: int = 0  # history mode
    stale_skipped: int = 0  # changes older than the table's row
    tombstone_rejected: int = 0  # changes older than a delete
    quarantined: int = 0
    reload: bool = False
    snapshot_id: int | None = None
    schema_changes: list[str] = field(default_factory=list)
    failed_files: dict[str, str] = field(default_factory=dict)
    files_rewritten: int = 0
    files_read: int = 0  # data files whose keys were read (after pruning)
    files_in_table: int = 0
    seconds: float = 0.0
    already_committed: bool = False
    per_file: dict[str, tuple[int, int]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {
            "rows-read": self.rows_read,
            "inserted": self.inserted,
            "updated": self.updated,
            "deleted": self.deleted,
            "appended": self.appended,
            "stale-skipped": self.stale_skipped,
            "tombstone-rejected": self.tombstone_rejected,
            "quarantined": self.quarantined,
        }


def read_batch(table: TableConfig, files: list[tuple[DmsFile, bytes]]) -> tuple[ChangeBatch, dict[str, str]]:
    """Read every file; a file that cannot be read is reported and left out, the rest go on."""
    reads: list[FileChanges] = []
    failed: dict[str, str] = {}
    for f, data in files:
        try:
            reads.append(read_dms_file(f, data, table))
        except FileReadError as e:
            failed[f.key] = str(e)
    return build_batch(table, reads), failed


def with_lake_columns(win: pa.Table, batch_id: str, now: dt.datetime) -> pa.Table:
    """Changes as table rows of a current-mode table: data columns plus _lake_seq/_op/_batch_id/_ingested_at."""
    n = win.num_rows
    out = win.drop_columns([c for c in (OP, FILE, ROW) if c in win.column_names])
    out = out.append_column(LAKE_OP, win.column(OP))
    out = out.append_column(BATCH, pa.array([batch_id] * n, pa.string()))
    return out.append_column(INGESTED_AT, pa.array([now] * n, TS))


def history_rows(changes: pa.Table, batch_id: str, now: dt.datetime) -> pa.Table:
    """Changes as rows of a history-mode table: every change, with its file and row."""
    out = with_lake_columns(changes, batch_id, now)
    out = out.append_column("_lake_file", changes.column(FILE))
    return out.append_column(LAKE_ROW, changes.column(ROW))


def table_schema_for(batch: ChangeBatch, history: bool) -> pa.Schema:
    """The Arrow schema a batch's table has (both engines create and evolve tables from it)."""
    sample = batch.changes.slice(0, 0)
    return (history_rows(sample, "", dt.datetime.now(dt.UTC)) if history else with_lake_columns(sample, "", dt.datetime.now(dt.UTC))).schema


def _as_comparable(col: pa.ChunkedArray | pa.Array) -> list:
    t = col.type
    if pa.types.is_date(t):
        col = col.cast(pa.int32())
    elif pa.types.is_timestamp(t):
        col = col.cast(pa.int64())
    return sorted(set(col.to_pylist()))


def _partition_filter(tbl: Table, win: pa.Table, keys: tuple[str, ...]):
    """Partition tuples the batch's keys live in, or None when partitions cannot prune.

    Only sound when every partition source column is part of the primary key: then a key can never
    move to another partition, so a file of any other partition cannot hold it.
    """
    spec = tbl.spec()
    if spec.is_unpartitioned():
        return None
    schema = tbl.schema()
    columns = []
    for field in spec.fields:
        source = schema.find_field(field.source_id)
        if source.name not in keys:
            return None
        columns.append(field.transform.pyarrow_transform(source.field_type)(win.column(source.name).combine_chunks()).to_pylist())
    return spec.spec_id, set(zip(*columns))


def _candidate_tasks(tbl: Table, win: pa.Table, keys: tuple[str, ...]) -> tuple[list, int]:
    """Scan tasks of data files that may hold one of the batch's keys: partition, then key-range pruning."""
    snap = tbl.current_snapshot()
    if snap is None or win.num_rows == 0:
        return [], 0
    schema = tbl.schema()
    first = schema.find_field(keys[0])
    wanted = _as_comparable(win.column(keys[0]))
    partitions = _partition_filter(tbl, win, keys)
    tasks = list(tbl.scan().plan_files())
    out = []
    for task in tasks:
        if partitions is not None and task.file.spec_id == partitions[0]:
            if tuple(task.file.partition) not in partitions[1]:
                continue
        lo_b = task.file.lower_bounds.get(first.field_id) if task.file.lower_bounds else None
        hi_b = task.file.upper_bounds.get(first.field_id) if task.file.upper_bounds else None
        if lo_b is None or hi_b is None:
            out.append(task)
            continue
        lo, hi = from_bytes(first.field_type, lo_b), from_bytes(first.field_type, hi_b)
        i = bisect.bisect_left(wanted, lo)
        if i < len(wanted) and wanted[i] <= hi:
            out.append(task)
    return out, len(tasks)


def _no_existing_rows(win: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """The key table plan_merge compares winners with, for a table that holds none of their keys."""
    return pa.table({**{k: win.column(k).slice(0, 0) for k in keys}, SEQ: pa.array([], pa.string()),
                     FILE_IX: pa.array([], pa.int64()), POS: pa.array([], pa.int64())})


def _scan(tbl: Table, tasks: list, columns: list[str] | None = None) -> list[pa.Table]:
    schema = tbl.schema() if columns is None else tbl.schema().select(*columns)
    scan = ArrowScan(tbl.metadata, tbl.io, schema, AlwaysTrue())
    return [scan.to_table([t]) for t in tasks]


class InProcessEngine:
    name = "inprocess"

    def merge(
        self,
        catalog: Catalog,
        table: TableConfig,
        files: list[tuple[DmsFile, bytes]],
        batch_id: str,
        *,
        now: dt.datetime | None = None,
        failpoint=lambda name: None,
    ) -> MergeResult:
        started = time.perf_counter()
        now = now or dt.datetime.now(dt.UTC)
        batch, failed = read_batch(table, files)
        if not batch.files:  # nothing readable: nothing to commit, the files stay failed and retryable
            return MergeResult(table.identifier, batch_id, [], failed_files=failed, seconds=time.perf_counter() - started)
        result = self.apply(catalog, batch, batch_id, now=now, failpoint=failpoint)
        result.failed_files = failed
        result.per_file = batch.per_file
        result.seconds = time.perf_counter() - started
        return result

    def apply(self, catalog: Catalog, batch: ChangeBatch, batch_id: str, *, now: dt.datetime, failpoint=lambda name: None) -> MergeResult:
        table = batch.table
        keys = table.primary_key
        file_keys = [f.key for f in batch.files]
        result = MergeResult(table.identifier, batch_id, file_keys, rows_read=batch.rows_read)
        history = table.mode == "history"
        schema = table_schema_for(batch, history)
        tbl = load_or_create(
            catalog, table.identifier, schema, partition_by=table.partition_by, properties=table_properties(table)
        )
        done = committed_batches(tbl)
        if batch_id in done:  # resumed after a crash that came after the commit
            result.already_committed = True
            result.snapshot_id = int(done[batch_id]["snapshot-id"])
            return result

        load_max = current_load_max(tbl)
        loads = batch.load_numbers
        result.reload = bool(loads) and loads[0] <= load_max
        new_load_max = max([load_max] + loads) if not result.reload else max(loads)

        txn = tbl.transaction()
        result.schema_changes = evolve_schema(txn, table.identifier, schema, file_keys)
        # Only now: a batch that fails on drift must not leave quarantined rows behind (its retry has a new batch id).
        result.quarantined = write_quarantine(catalog, table, batch_id, batch.quarantined, now)
        target = txn.table_metadata.schema().as_arrow()
        to_delete: list = []
        if history:
            rows = history_rows(batch.changes, batch_id, now)
            result.appended = rows.num_rows
            new_rows = conform(rows, target)
        else:
            new_rows, to_delete = self._plan_current(catalog, tbl, batch, batch_id, now, result, target)
        summary = batch_summary(batch_id, file_keys, new_load_max, result.counts())
        with txn.update_snapshot(snapshot_properties=summary).overwrite() as ow:
            for data_file in to_delete:
                ow.delete_data_file(data_file)
            if new_rows.num_rows:
                for data_file in _dataframe_to_data_files(txn.table_metadata, new_rows, tbl.io, ow.commit_uuid):
                    ow.append_data_file(data_file)
        result.files_rewritten = len(to_delete)
        failpoint("before_commit")
        committed = txn.commit_transaction()
        failpoint("after_commit")
        result.snapshot_id = committed.current_snapshot().snapshot_id
        return result

    def _plan_current(self, catalog, tbl: Table, batch: ChangeBatch, batch_id, now, result: MergeResult, target: pa.Schema):
        table = batch.table
        keys = table.primary_key
        win = winners(batch.changes, keys)
        tombstones = load_tombstones(catalog, table)
        win, result.tombstone_rejected = reject_tombstoned(win, None if result.reload else tombstones, keys)

        if result.reload:
            tasks = list(tbl.scan().plan_files()) if tbl.current_snapshot() else []
            result.files_in_table = len(tasks)
            plan = plan_merge(_no_existing_rows(win, keys), win, keys)
            touched_ix: list[int] = list(range(len(tasks)))
            kept_parts: list[pa.Table] = []
        else:
            tasks, result.files_in_table = _candidate_tasks(tbl, win, keys)
            result.files_read = len(tasks)
            key_tables = _scan(tbl, tasks, list(keys) + [SEQ])
            existing = [
                t.append_column(FILE_IX, pa.array([i] * t.num_rows, pa.int64())).append_column(
                    POS, pa.array(range(t.num_rows), pa.int64())
                )
                for i, t in enumerate(key_tables)
            ]
            if existing:
                existing_all = pa.concat_tables(existing)
            else:
                existing_all = _no_existing_rows(win, keys)
            existing_all = existing_all.select(list(keys) + [SEQ, FILE_IX, POS])
            plan = plan_merge(existing_all, win, keys)
            removed = plan.removed
            touched_ix = sorted(set(removed.column(FILE_IX).to_pylist()))
            kept_parts = []
            full = _scan(tbl, [tasks[i] for i in touched_ix])
            for i, data in zip(touched_ix, full):
                gone = pc.filter(removed.column(POS), pc.equal(removed.column(FILE_IX), i))
                mask = pc.invert(pc.is_in(pa.array(range(data.num_rows), pa.int64()), value_set=gone.combine_chunks()))
                kept_parts.append(data.filter(mask))

        result.inserted = len(plan.inserts)
        result.updated = len(plan.updates)
        result.deleted = len(plan.deletes)
        result.stale_skipped = plan.stale
        written = win.take(plan.written)
        deleted = win.take(plan.tombstoned)
        update_tombstones(
            catalog, table, batch_id, old=tombstones, deleted=deleted, rewritten_keys=written.select(list(keys)),
            reload=result.reload, now=now,
        )
        parts = [conform(p, target) for p in kept_parts] + [conform(with_lake_columns(written, batch_id, now), target)]
        new_rows = pa.concat_tables(parts) if parts else target.empty_table()
        return new_rows, [tasks[i].file for i in touched_ix]
