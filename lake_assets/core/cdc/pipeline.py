"""The one merge pipeline: the steps a batch goes through and their order, for every engine.

    read files -> positions -> (table definition) -> load decision -> schema evolution planned ->
    winners -> tombstones -> classified against the table -> sidecars -> commit with the batch id

Everything that decides what a batch does lives here and in the modules it calls (`batch`,
`position`, `semantics`, `loads`, `iceberg`, `sidecars`). An engine is a `TableWriter`: it
classifies winners against the table with the shared rule (`semantics.outcome_sql`) and executes
the commit. The in-process engine does both with DuckDB/Arrow and pyiceberg; the Spark job runs
this same function on its driver with a writer that uses Spark (`core/spark/merge_job.py`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from lake_assets.core.cdc import scd2, snapshots, truncate
from lake_assets.core.cdc.batch import BATCH, FILE, INGESTED_AT, LAKE_OP, SEQ, ChangeBatch, LandedInput, read_batch
from lake_assets.core.cdc.dms import OP, ROW
from lake_assets.core.cdc.iceberg import (
    SchemaEvolution,
    batch_summary,
    check_definition,
    committed_batches,
    create_source_table,
    ensure_write_properties,
    load_table,
    plan_evolution,
    table_sequence_kind,
)
from lake_assets.core.cdc.loads import LoadDecision, current_load, decide_load
from lake_assets.core.cdc.position import SequenceKind
from lake_assets.core.cdc.semantics import (
    DELETE,
    INSERT,
    STALE,
    UPDATE,
    Classification,
    reject_tombstoned,
    reload_classification,
    winners,
)
from lake_assets.core.cdc.sidecars import load_tombstones, update_delete_events, update_tombstones, write_quarantine
from lake_assets.core.registry import TableConfig

LAKE_ROW = "_lake_row"

TS = pa.timestamp("us", tz="UTC")
Failpoint = Callable[[str], None]


class EngineInterrupted(RuntimeError):
    """The engine's process ended without reporting a result (killed, out of memory, lost node).
    Its batch stays claimed and is resumed with the same id; a resumed batch that is interrupted
    again is taken apart file by file, so a file that kills its engine cannot wedge the table."""


def env_failpoint(name: str) -> None:
    """Crash on purpose where LAKE_FAILPOINT names this point (the crash-recovery tests)."""
    if os.environ.get("LAKE_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


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
    stale_skipped: int = 0  # changes not newer than the table's row
    tombstone_rejected: int = 0  # changes older than a delete
    quarantined: int = 0
    reload: bool = False
    reload_reason: str | None = None
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


def with_lake_columns(changes: pa.Table, batch_id: str, now: dt.datetime) -> pa.Table:
    """Changes as rows of a current-mode table: data columns plus _lake_seq/_op/_batch_id/_ingested_at."""
    n = changes.num_rows
    out = changes.drop_columns([c for c in (OP, FILE, ROW) if c in changes.column_names])
    out = out.append_column(LAKE_OP, changes.column(OP))
    out = out.append_column(BATCH, pa.repeat(pa.scalar(batch_id, pa.string()), n))  # one value: no Python list of n
    return out.append_column(INGESTED_AT, pa.repeat(pa.scalar(now, TS), n))


def history_rows(changes: pa.Table, batch_id: str, now: dt.datetime) -> pa.Table:
    """Changes as rows of a history-mode table: every change, with its file and row."""
    out = with_lake_columns(changes, batch_id, now)
    out = out.append_column(FILE, changes.column(FILE))
    return out.append_column(LAKE_ROW, changes.column(ROW))


def table_schema_for(batch: ChangeBatch, mode: str) -> pa.Schema:
    """The Arrow schema a batch's table has (tables are created and evolved from it)."""
    sample = batch.changes.slice(0, 0)
    now = dt.datetime.now(dt.UTC)
    if mode == "history":
        return history_rows(sample, "", now).schema
    current = with_lake_columns(sample, "", now).schema
    if mode == "scd2":
        assert batch.table.sequence_by is not None  # the registry requires it for scd2
        return scd2.schema_of(current, sample.schema.field(batch.table.sequence_by).type)
    return current


def landing_columns(batch: ChangeBatch) -> ChangeBatch:
    """The batch without the source columns the registry keeps out (except_columns / include_columns)."""
    dropped = [c for c in batch.changes.column_names if c not in (OP, ROW, FILE, SEQ) and not batch.table.lands(c)]
    if dropped:
        batch.changes = batch.changes.drop_columns(dropped)
    return batch


@dataclass
class CommitPlan:
    """What the engine commits in one snapshot (the in-process engine) or one Spark write plus a
    metadata commit for the schema (Spark): everything is decided already."""

    table: TableConfig
    batch_id: str
    evolution: SchemaEvolution
    summary: dict[str, str]
    reload: bool
    history: bool
    rows: pa.Table  # history: every change; current: the winners, their lake columns included;
    # scd2: the versions written and the held versions removed (classification.outcome says which)
    classification: Classification | None = None  # current and scd2 modes


@dataclass
class Committed:
    snapshot_id: int
    files_rewritten: int = 0


@dataclass
class Held:
    """Rows the table holds for some keys (all its columns), and what the engine needs to remove them."""

    rows: pa.Table
    private: object = None


class TableWriter(Protocol):
    """An engine: how winners are compared with the table and how the plan is written."""

    name: str

    def hold(self, tbl: Table, wanted: pa.Table | None, keys: tuple[str, ...], result: MergeResult) -> Held:
        """Every row of the table whose key is in `wanted` (None: every current scd2 version)."""
        ...

    def removing(self, held: Held, removed: pa.Array) -> object:
        """The Classification.private that makes the commit remove these held rows (indices)."""
        ...

    def classify(self, tbl: Table, win: pa.Table, keys: tuple[str, ...], result: MergeResult) -> Classification:
        """Each winner's outcome by `semantics.outcome_sql` against the rows the table holds."""
        ...

    def commit(self, catalog: Catalog, tbl: Table, plan: CommitPlan) -> Committed:
        """Apply plan.evolution and write plan.rows as classified, with plan.summary on the snapshot."""
        ...


def merge_batch(
    writer: TableWriter,
    catalog: Catalog,
    table: TableConfig,
    inputs: list[LandedInput],
    batch_id: str,
    *,
    now: dt.datetime | None = None,
    reload_requested: bool = False,
    failpoint: Failpoint = lambda name: None,
) -> MergeResult:
    """Merge one batch of a table's landed files. Files that cannot be read are reported in
    `failed_files` and left out; SchemaDriftError / TableDefinitionError fail the whole batch
    before anything is written."""
    started = time.perf_counter()
    now = now or dt.datetime.now(dt.UTC)
    tbl = load_table(catalog, table.identifier)
    if tbl is not None:
        check_definition(tbl, table)
    kind = table_sequence_kind(tbl) if tbl is not None else None
    batch, failed = read_batch(table, inputs, sequence_kind=SequenceKind(kind) if kind else None)
    result = MergeResult(table.identifier, batch_id, [f.key for f in batch.files], rows_read=batch.rows_read,
                         failed_files=failed, per_file=batch.per_file)
    if not batch.files:  # nothing readable: nothing to commit, the files stay failed and retryable
        result.seconds = time.perf_counter() - started
        return result
    if tbl is not None:
        done = committed_batches(tbl).get(batch_id)
        if done is not None:  # resumed after a crash that came after the commit
            result.already_committed = True
            result.snapshot_id = int(done["snapshot-id"])
            return result

    batch = landing_columns(batch)
    history = table.mode == "history"
    schema = table_schema_for(batch, table.mode)
    if tbl is None:
        tbl = create_source_table(catalog, table, schema, sequence_kind=batch.sequence_kind.value if batch.sequence_kind else None,
                                  files=result.files)
    tbl = ensure_write_properties(tbl, table)
    loads = decide_load(current_load(tbl), batch.load_numbers, reload_requested=reload_requested)
    result.reload, result.reload_reason = loads.reload, loads.reason
    evolution = plan_evolution(tbl, table.identifier, schema, result.files)
    result.schema_changes = list(evolution.changes)

    tombstones = None
    deletes = None
    extra: dict[str, str] = {}
    if history:
        rows = history_rows(batch.changes, batch_id, now)
        result.appended = rows.num_rows
        classification = None
    elif table.mode == "scd2":
        tombstones = None if loads.reload else load_tombstones(catalog, table, now=now)
        era = scd2.table_era(tbl) + (1 if loads.reload else 0)
        rows, classification, deletes = _scd2(writer, tbl, batch, batch_id, now, loads, tombstones, era, schema, result)
        extra = {scd2.ERA: str(era)}
    else:
        tombstones = None if loads.reload else load_tombstones(catalog, table, now=now)
        truncation = truncate.apply_truncates(tbl, batch.changes, table.primary_key, reload=loads.reload)
        batch.changes, extra = truncation.changes, truncation.summary
        diff = snapshots.apply_snapshot(tbl, batch) if snapshots.takes_snapshots(batch) else None
        if diff is not None:
            batch.changes, extra = diff.changes, extra | diff.summary
        rows, classification = _current(writer, tbl, batch, batch_id, now, loads, tombstones, result)
        result.tombstone_rejected += truncation.rejected
        result.stale_skipped += diff.superseded if diff is not None else 0

    # Sidecars before the commit that makes the batch visible; each is idempotent by batch id.
    result.quarantined = write_quarantine(catalog, table, batch_id, batch.quarantined, now, batch.versions)
    if deletes is not None:
        update_delete_events(catalog, table, batch_id, old=tombstones, deletes=deletes, reload=loads.reload, now=now)
    elif classification is not None:
        keys = list(table.primary_key)
        update_tombstones(
            catalog, table, batch_id, old=tombstones,
            deleted=rows.take(classification.tombstoned).select(keys + [SEQ]),
            rewritten_keys=rows.take(classification.written).select(keys), reload=loads.reload, now=now,
        )
    # Per-file counts travel with the commit: a ledger reconciled after a crash still knows which
    # files gave the table nothing (no rows, or every row quarantined).
    per_file = {"lake.per-file": json.dumps({k: list(v) for k, v in batch.per_file.items()}, separators=(",", ":"))}
    summary = batch_summary(batch_id, result.files, result.counts(), loads.summary() | per_file | extra)
    # scd2 keeps the history before a reload: its commit removes and writes versions like any batch.
    replaces = loads.reload and table.mode != "scd2"
    plan = CommitPlan(table, batch_id, evolution, summary, replaces, history, rows, classification)
    failpoint("before_commit")
    committed = writer.commit(catalog, tbl, plan)
    failpoint("after_commit")
    result.snapshot_id = committed.snapshot_id
    result.files_rewritten = committed.files_rewritten
    result.seconds = time.perf_counter() - started
    return result


def _scd2(writer: TableWriter, tbl: Table, batch: ChangeBatch, batch_id: str, now: dt.datetime, loads: LoadDecision,
          tombstones: pa.Table | None, era: int, schema: pa.Schema,
          result: MergeResult) -> tuple[pa.Table, Classification, pa.Table]:
    """The versions a batch writes and removes in an scd2 table, rebuilt per key by `scd2.rebuild`."""
    table = batch.table
    keys = table.primary_key
    assert table.sequence_by is not None
    changes = scd2.with_era(batch.changes, era)
    wanted = None if loads.reload else pa.table({k: changes.column(k) for k in keys})
    held = writer.hold(tbl, wanted, keys, result)
    rows_schema = pa.unify_schemas([schema, held.rows.schema], promote_options="permissive")
    rebuilt = scd2.rebuild(held.rows, changes, tombstones, keys=keys, sequence_by=table.sequence_by,
                           track_history_on=table.track_history_on, era=era, reload=loads.reload,
                           batch_id=batch_id, now=now, schema=rows_schema)
    if rebuilt.quarantined:  # late changes that cannot be placed exactly: counted like bad rows
        for file, q in scd2.quarantine_rows(changes, rebuilt.quarantined):
            batch.quarantined.append((file, q))
            n, bad = batch.per_file.get(file, (0, 0))
            batch.per_file[file] = (n, bad + 1)
    classification = Classification(rebuilt.outcome, writer.removing(held, rebuilt.removed))
    result.inserted = classification.count(INSERT)
    result.updated = classification.count(UPDATE)
    result.deleted = rebuilt.closed_by_delete
    return rebuilt.rows, classification, rebuilt.deletes


def _current(writer: TableWriter, tbl: Table, batch: ChangeBatch, batch_id: str, now: dt.datetime,
             loads: LoadDecision, tombstones: pa.Table | None, result: MergeResult) -> tuple[pa.Table, Classification]:
    """Winners of a current-mode batch and what each does to the table."""
    keys = batch.table.primary_key
    win = winners(batch.changes, keys)
    if loads.reload:
        classification = reload_classification(win)
    else:
        win, result.tombstone_rejected = reject_tombstoned(win, tombstones, keys)
        classification = writer.classify(tbl, win, keys, result) if win.num_rows else reload_classification(win)
    result.inserted = classification.count(INSERT)
    result.updated = classification.count(UPDATE)
    result.deleted = classification.count(DELETE)
    result.stale_skipped = classification.count(STALE)
    assert len(classification.outcome) == win.num_rows, "an engine classified another number of winners"
    return with_lake_columns(win, batch_id, now), classification
