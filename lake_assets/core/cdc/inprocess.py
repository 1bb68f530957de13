"""The in-process engine: DuckDB/Arrow compare, pyiceberg commits one copy-on-write snapshot.

Only data files whose partition and key range can hold a changed key are scanned, and only files
that really hold a replaced or deleted row are rewritten. This is not `Table.upsert` (see DESIGN.md:
it evaluates a huge `In` filter per file). What a batch does is decided by the shared pipeline
(`cdc/pipeline.py`); this module only compares winners with the table and writes the plan.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlparse

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.conversions import from_bytes
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files
from pyiceberg.table import FileScanTask, Table
from pyiceberg.types import PrimitiveType

from lake_assets.core.cdc.batch import SEQ, LandedInput
from lake_assets.core.cdc.deletes import (
    OverwriteWithDeletes,
    deleted_positions,
    only_for,
    partition_values,
    write_position_deletes,
)
from lake_assets.core.cdc.dms import OP
from lake_assets.core.cdc.iceberg import committed_batches, conform
from lake_assets.core.cdc.pipeline import CommitPlan, Committed, Held, MergeResult, merge_batch
from lake_assets.core.cdc.scd2 import IS_CURRENT
from lake_assets.core.cdc.semantics import WIN, Classification, outcome_sql, quote
from lake_assets.core.registry import TableConfig

POS = "__pos"  # position of an existing row in its data file
FILE_IX = "__file"  # index of the data file the existing row lives in


class DataFileError(RuntimeError):
    """A data file of the Iceberg table cannot be read (truncated, missing); names table and file."""


@dataclass
class _Touched:
    """What the commit needs from the classification: the scanned files, and the (file, position)
    of every existing row an update or delete replaces."""

    tasks: list
    removed: pa.Table  # FILE_IX, POS
    live: dict[int, int]  # FILE_IX -> live rows of the file before this batch
    gone: dict[int, pa.Array]  # FILE_IX -> positions its delete files already remove


def _as_comparable(col: pa.ChunkedArray | pa.Array) -> list:
    t = col.type
    if pa.types.is_date(t):
        col = col.cast(pa.int32())
    elif pa.types.is_timestamp(t):
        col = col.cast(pa.int64())
    return sorted(set(col.to_pylist()))


def _partition_filter(tbl: Table, win: pa.Table, keys: tuple[str, ...]) -> tuple[int, set[tuple]] | None:
    """Partition tuples the batch's keys live in, or None when partitions cannot prune.

    Only sound when every partition source column is part of the primary key: then a key can never
    move to another partition, so a file of any other partition cannot hold it.
    """
    spec = tbl.spec()
    if spec.is_unpartitioned():
        return None
    schema = tbl.schema()
    columns = []
    for pfield in spec.fields:
        source = schema.find_field(pfield.source_id)
        if source.name not in keys:
            return None
        columns.append(pfield.transform.pyarrow_transform(source.field_type)(win.column(source.name).combine_chunks()).to_pylist())
    return spec.spec_id, set(zip(*columns))


def candidate_tasks(tbl: Table, win: pa.Table, keys: tuple[str, ...]) -> tuple[list, int]:
    """Scan tasks of data files that may hold one of the batch's keys: partition, then key-range pruning."""
    if tbl.current_snapshot() is None or win.num_rows == 0:
        return [], 0
    first = tbl.schema().find_field(keys[0])
    wanted = _as_comparable(win.column(keys[0]))
    partitions = _partition_filter(tbl, win, keys)
    tasks = list(tbl.scan().plan_files())
    out = []
    for task in tasks:
        if partitions is not None and task.file.spec_id == partitions[0]:
            if partition_values(task.file.partition) not in partitions[1]:
                continue
        lo_b = task.file.lower_bounds.get(first.field_id) if task.file.lower_bounds else None
        hi_b = task.file.upper_bounds.get(first.field_id) if task.file.upper_bounds else None
        if lo_b is None or hi_b is None:
            out.append(task)
            continue
        key_type = cast(PrimitiveType, first.field_type)  # a primary-key column is a scalar
        lo, hi = from_bytes(key_type, lo_b), from_bytes(key_type, hi_b)
        i = bisect.bisect_left(wanted, lo)
        if i < len(wanted) and wanted[i] <= hi:
            out.append(task)
    return out, len(tasks)


def scan_files(tbl: Table, identifier: str, tasks: list, columns: list[str] | None = None) -> list[pa.Table]:
    """Read data files of the table, one table per task; a file that cannot be read names itself."""
    schema = tbl.schema() if columns is None else tbl.schema().select(*columns)
    scan = ArrowScan(tbl.metadata, tbl.io, schema, AlwaysTrue())
    out = []
    for task in tasks:
        try:
            out.append(scan.to_table([task]))
        except Exception as e:  # pyarrow names the buffer, not the file
            raise DataFileError(
                f"table {identifier}: data file {task.file.file_path} cannot be read ({type(e).__name__}: {str(e)[:300]}); "
                "the table's storage is damaged: restore the file or rebuild the table from its landed files"
            ) from e
    return out


# `write: auto`: a data file whose replaced rows are at most this share of its live rows gets a
# position-delete file instead of a rewrite (bench/merge.py measures where rewriting stops paying).
MERGE_ON_READ_SHARE = 0.2


def _deleted(tbl: Table, tasks: list[FileScanTask]) -> dict[int, pa.Array]:
    """Positions that the candidate files' delete files already remove, by file index: read once per merge."""
    return {i: deleted_positions(tbl.io, t) for i, t in enumerate(tasks) if t.delete_files}


def _original_positions(tbl: Table, identifier: str, task: FileScanTask, columns: list[str] | None,
                        gone: pa.Array | None) -> tuple[pa.Table, pa.Array]:
    """A data file's live rows with their original positions in the file (what position deletes
    name): read without its delete files, then the positions they remove (`gone`) dropped."""
    (data,) = scan_files(tbl, identifier, [FileScanTask(task.file)], columns)
    positions = pa.array(range(data.num_rows), pa.int64())
    if gone is not None and len(gone):
        keep = pc.invert(pc.is_in(positions, value_set=gone))
        data, positions = data.filter(keep), positions.filter(keep)
    return data, positions


def _local_path(path: str) -> str | None:
    """A data file's path on this machine's file system, or None for an object store."""
    parsed = urlparse(path)
    if parsed.scheme == "file":
        return parsed.path
    return path if parsed.scheme == "" else None


_DUCKDB_COLUMNS = ("filename", "file_row_number")


def _held_rows(con: duckdb.DuckDBPyConnection, tbl: Table, identifier: str, tasks: list[FileScanTask],
               keys: tuple[str, ...], win: pa.Table, gone: dict[int, pa.Array]) -> tuple[pa.Table, dict[int, int]]:
    """The live rows of the candidate files whose key is among the batch's (table `w` of `con`):
    keys, position, file index and original position; and each file's live row count.

    Local files are read by DuckDB, which streams them and keeps only the rows whose key matches:
    memory and time follow the matches, not the files (bench/scale.py). Files in an object store are
    read whole through the table's FileIO, one at a time."""
    columns = list(keys) + [SEQ]
    empty = pa.table({**{k: win.column(k).slice(0, 0) for k in keys}, SEQ: pa.array([], pa.string()),
                      FILE_IX: pa.array([], pa.int64()), POS: pa.array([], pa.int64())})
    if not tasks:
        return empty, {}
    paths = [_local_path(t.file.file_path) for t in tasks]
    # DuckDB adds `filename` and `file_row_number` columns: a table with a column of either name
    # would shadow them, so its files are read the other way.
    shadowed = {f.name.lower() for f in tbl.schema().fields} & set(_DUCKDB_COLUMNS)
    if all(paths) and not shadowed:
        con.register("f", pa.table({"path": paths, FILE_IX: pa.array(range(len(tasks)), pa.int64())}))
        listed = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"
        on = " AND ".join(f"d.{quote(k)} = w.{quote(k)}" for k in keys)
        picked = ", ".join(f"d.{quote(c)}" for c in columns)
        try:
            held = con.execute(
                f"SELECT {picked}, f.{FILE_IX}, d.file_row_number AS {POS} "
                f"FROM (SELECT * FROM read_parquet({listed}, file_row_number = true, filename = true, union_by_name = true) d "
                f"      SEMI JOIN w ON {on}) d JOIN f ON d.filename = f.path"
            ).arrow().read_all()
        except duckdb.Error as e:
            raise DataFileError(
                f"table {identifier}: a data file cannot be read ({type(e).__name__}: {str(e)[:300]}); the table's storage "
                "is damaged: restore the file or rebuild the table from its landed files") from e
        live = {i: t.file.record_count for i, t in enumerate(tasks)}
        if gone:  # rows that delete files already remove are not live
            dropped = pa.array([False] * held.num_rows)
            for i, positions in gone.items():
                live[i] -= len(positions)
                in_file = pc.equal(held.column(FILE_IX), i)
                dropped = pc.or_(dropped, pc.and_(in_file, pc.is_in(held.column(POS), value_set=positions)))
            held = held.filter(pc.invert(dropped))
        return held, live
    existing = []
    for i, task in enumerate(tasks):
        data, positions = _original_positions(tbl, identifier, task, columns, gone.get(i))
        existing.append(data.append_column(FILE_IX, pa.array([i] * data.num_rows, pa.int64())).append_column(POS, positions))
    # Files written by other engines may read back with other string widths (Spark: large_string).
    held = pa.concat_tables(existing, promote_options="permissive").select(columns + [FILE_IX, POS])
    return held, {i: t.num_rows for i, t in enumerate(existing)}


def _sorted_by(rows: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """Rows in primary-key order: files then hold narrow key ranges, which the next merges prune on."""
    return rows.sort_by([(k, "ascending") for k in keys]) if rows.num_rows > 1 else rows


class InProcessWriter:
    """Compares winners with the live rows of the candidate data files in DuckDB, and commits one
    snapshot with pyiceberg: touched files rewritten one at a time (copy-on-write), or left in place
    with a position-delete file naming the replaced rows (merge-on-read), as the table's `write` says."""

    name = "inprocess"

    def classify(self, tbl: Table, win: pa.Table, keys: tuple[str, ...], result: MergeResult) -> Classification:
        identifier = result.table
        tasks, result.files_in_table = candidate_tasks(tbl, win, keys)
        result.files_read = len(tasks)
        w = pa.table({**{k: win.column(k) for k in keys}, SEQ: win.column(SEQ), OP: win.column(OP)}).append_column(
            WIN, pa.array(range(win.num_rows), pa.int64()))
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")  # timestamps compare as the UTC instants they hold
            con.register("w", w)
            gone = _deleted(tbl, tasks)
            held, live = _held_rows(con, tbl, identifier, tasks, keys, win, gone)
            con.register("e", held)
            on = " AND ".join(f"w.{quote(k)} = e.{quote(k)}" for k in keys)
            rule = outcome_sql(op=f"w.{OP}", change_seq=f"w.{SEQ}", held_seq=f"e.{SEQ}", held=f"e.{POS} IS NOT NULL")
            con.execute(f"CREATE TEMP TABLE j AS SELECT w.{WIN} AS wi, {rule} AS outcome, e.{FILE_IX} AS fi, e.{POS} AS pos "
                        f"FROM w LEFT JOIN e ON {on}")
            outcome = con.execute("SELECT outcome FROM j ORDER BY wi").arrow().read_all().column(0).combine_chunks()
            removed = con.execute(
                f"SELECT fi AS {FILE_IX}, pos AS {POS} FROM j WHERE outcome IN ('update', 'delete') ORDER BY fi, pos"
            ).arrow().read_all()
        finally:
            con.close()
        return Classification(outcome, _Touched(tasks, removed, live, gone))

    def hold(self, tbl: Table, wanted: pa.Table | None, keys: tuple[str, ...], result: MergeResult) -> Held:
        """Whole rows of the candidate files (every file when `wanted` is None: a reload of an scd2
        table, which needs every current version), read one file at a time and filtered by key."""
        identifier = result.table
        empty_schema = tbl.schema().as_arrow()
        if tbl.current_snapshot() is None:
            return Held(empty_schema.empty_table(), _Touched([], pa.table({FILE_IX: pa.array([], pa.int64()),
                                                                         POS: pa.array([], pa.int64())}), {}, {}))
        if wanted is None:
            tasks = list(tbl.scan().plan_files())
            result.files_in_table = len(tasks)
        else:
            tasks, result.files_in_table = candidate_tasks(tbl, wanted, keys)
        result.files_read = len(tasks)
        gone = _deleted(tbl, tasks)
        parts, live = [], {}
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            if wanted is not None:
                con.register("w", pa.table({k: wanted.column(k) for k in keys}))
            for i, task in enumerate(tasks):
                data, positions = _original_positions(tbl, identifier, task, None, gone.get(i))
                live[i] = data.num_rows
                data = data.append_column(FILE_IX, pa.array([i] * data.num_rows, pa.int64())).append_column(POS, positions)
                con.register("d", data)
                if wanted is None:
                    picked = con.execute(f"SELECT * FROM d WHERE {quote(IS_CURRENT)}").arrow().read_all()
                else:
                    on = " AND ".join(f"d.{quote(k)} = w.{quote(k)}" for k in keys)
                    picked = con.execute(f"SELECT * FROM d SEMI JOIN w ON {on}").arrow().read_all()
                con.unregister("d")
                parts.append(picked)
        finally:
            con.close()
        rows = pa.concat_tables(parts, promote_options="permissive") if parts else empty_schema.empty_table()
        if not parts:
            rows = rows.append_column(FILE_IX, pa.array([], pa.int64())).append_column(POS, pa.array([], pa.int64()))
        located = rows.select([FILE_IX, POS])
        return Held(rows.drop_columns([FILE_IX, POS]), _Touched(tasks, located, live, gone))

    def removing(self, held: Held, removed: pa.Array) -> object:
        touched = held.private
        assert isinstance(touched, _Touched)
        return _Touched(touched.tasks, touched.removed.take(removed).sort_by([(FILE_IX, "ascending"), (POS, "ascending")]),
                        touched.live, touched.gone)

    def commit(self, catalog: Catalog, tbl: Table, plan: CommitPlan) -> Committed:
        txn = tbl.transaction()
        plan.evolution.apply(txn)
        meta = txn.table_metadata  # rebuilt from the pending updates on every access: read it once
        target = meta.schema().as_arrow()
        identifier = plan.table.identifier
        keys = plan.table.primary_key
        commit = OverwriteWithDeletes(txn, tbl.io, plan.summary)
        rewritten = 0
        names = itertools.count()  # one sequence for every file of the commit: names never repeat

        def write(rows: pa.Table) -> None:
            if rows.num_rows:
                for data_file in _dataframe_to_data_files(meta, rows, tbl.io, commit.commit_uuid, names):
                    commit.append_data_file(data_file)

        if plan.history:
            write(conform(plan.rows, target))
        else:
            c = plan.classification
            assert c is not None
            if plan.reload:
                for task in (tbl.scan().plan_files() if tbl.current_snapshot() else []):
                    commit.delete_data_file(task.file)
                    rewritten += 1
            elif isinstance(c.private, _Touched):
                removed = c.private.removed
                deletes = []
                for i in sorted(set(removed.column(FILE_IX).to_pylist())):
                    task = c.private.tasks[i]
                    gone = pc.filter(removed.column(POS), pc.equal(removed.column(FILE_IX), i)).combine_chunks()
                    if _merge_on_read(plan.table.write, len(gone), c.private.live.get(i, 0)):
                        # One delete file per data file, replaced by each merge (as Iceberg v3's deletion
                        # vectors are): a reader opens one delete file per data file, however many
                        # merges touched it. Delete files naming other data files too stay as they are.
                        earlier = c.private.gone.get(i)
                        own = [d for d in task.delete_files if only_for(d, task.file.file_path)]
                        if earlier is not None and own and len(own) == len(task.delete_files):
                            gone = pc.unique(pa.concat_arrays([earlier.cast(pa.int64()), gone.cast(pa.int64())])).sort()
                            for d in own:
                                commit.delete_data_file(d)
                        deletes.append((task.file, gone))
                        continue
                    # Copy-on-write, one file at a time: memory follows the largest file, not the table.
                    data, positions = _original_positions(tbl, identifier, task, None, c.private.gone.get(i))
                    write(conform(data.filter(pc.invert(pc.is_in(positions, value_set=gone))), target))
                    commit.delete_data_file(task.file)
                    rewritten += 1
                for delete_file in write_position_deletes(tbl, deletes):
                    commit.append_delete_file(delete_file)
            write(_sorted_by(conform(plan.rows.take(c.written), target), keys))
        commit.commit()
        committed = txn.commit_transaction()
        done = committed_batches(committed).get(plan.batch_id)
        assert done is not None, f"table {identifier}: the commit of batch {plan.batch_id} carries no batch id"
        return Committed(int(done["snapshot-id"]), files_rewritten=rewritten)


def _merge_on_read(write: str, replaced: int, live: int) -> bool:
    if write == "merge_on_read":
        return True
    if write == "copy_on_write":
        return False
    return live > 0 and replaced <= MERGE_ON_READ_SHARE * live


class InProcessEngine:
    """The engine the exactly-once runner calls: the shared pipeline with the in-process writer."""

    name = "inprocess"

    def merge(
        self,
        catalog: Catalog,
        table: TableConfig,
        files: list[LandedInput],
        batch_id: str,
        *,
        now: dt.datetime | None = None,
        reload_requested: bool = False,
        failpoint: Callable[[str], None] = lambda name: None,
    ) -> MergeResult:
        return merge_batch(InProcessWriter(), catalog, table, files, batch_id, now=now,
                           reload_requested=reload_requested, failpoint=failpoint)
