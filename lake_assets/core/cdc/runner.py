"""Merging a table's landed files exactly once: lock the table, claim its files, merge, record.

Every entry point (the ingest command, Dagster runs, the Spark engine's launcher) merges through
`merge_pending`, which first takes the table's lock in the ledger: only one process merges a table
at a time, and a batch left `processing` is resumed only by the next holder of the lock (its owner
died). The Iceberg commit (batch id + file list in its summary) is the truth: a resumed batch whose
commit exists only brings the ledger up to date; otherwise it is merged again with the same id, and
its sidecar writes (idempotent by batch id) are not repeated.

No file can wedge a table: a file that cannot be read fails alone; a batch that fails for a reason
no file explains is taken apart and its files merged one by one, so the bad one fails alone and the
others merge; a batch whose table disagrees with the registry is released untouched.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException

from lake_assets.core.cdc.batch import LandedInput
from lake_assets.core.cdc.dms import LandingKeyError
from lake_assets.core.cdc.formats import parse_table_key
from lake_assets.core.cdc.iceberg import SchemaDriftError, TableDefinitionError, check_definition, committed_batches, load_table
from lake_assets.core.cdc.pipeline import EngineInterrupted, MergeResult, env_failpoint
from lake_assets.core.cdc.sidecars import drop_sidecars, rollback_sidecars
from lake_assets.core.landing import LandingZone
from lake_assets.core.ledger import (
    COMMITTED,
    DUPLICATE,
    FAILED,
    PROCESSING,
    QUARANTINED,
    FileLedger,
    LedgerEntry,
    TableBusy,
    TableLock,
)
from lake_assets.core.registry import TableConfig

COMMIT_ATTEMPTS = 3  # an Iceberg commit conflict (another writer committed first) is retried


class BatchFailed(RuntimeError):
    """A whole batch could not apply (schema drift); its files are failed in the ledger and retryable."""


class RebuildRefused(RuntimeError):
    """A rebuild would lose changes: landed files it needs are gone."""


@dataclass(frozen=True)
class MergeOptions:
    retry_failed: bool = False  # failed files of the table are merged again
    max_files: int | None = None  # cap on files per batch
    reload: bool = False  # the table's next batch with LOAD files replaces the table
    rebuild: bool = False  # drop the table and merge every landed file again
    lock_wait_seconds: float = 120.0  # how long to wait for another process merging the table


@dataclass
class TableRun:
    """What merging one table's pending files did."""

    table: str
    results: list[MergeResult] = field(default_factory=list)
    busy: str | None = None  # another process held the table's lock for longer than the wait
    notes: list[str] = field(default_factory=list)

    @property
    def failed_files(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for r in self.results:
            out.update(r.failed_files)
        return out


class MergeEngine(Protocol):
    """What the runner merges a batch with: the in-process engine or the Spark engine."""

    def merge(
        self,
        catalog: Catalog,
        table: TableConfig,
        files: list[LandedInput],
        batch_id: str,
        *,
        now: dt.datetime | None = None,
        reload_requested: bool = False,
        failpoint: Callable[[str], None] = ...,
    ) -> MergeResult: ...


def merge_pending(
    table: TableConfig,
    *,
    catalog: Catalog,
    ledger: FileLedger,
    landing: LandingZone,
    engine: MergeEngine,
    options: MergeOptions = MergeOptions(),
    failpoint: Callable[[str], None] = env_failpoint,
    log: Callable[[str], None] = lambda msg: None,
) -> TableRun:
    """Merge what is pending for one table. Raises TableDefinitionError (registry and table
    disagree: nothing claimed), BatchFailed (schema drift: the batch's files failed, retryable) and
    RebuildRefused; returns with `busy` set when another process holds the table."""
    run = TableRun(table.identifier)
    lock = ledger.lock_table(table.identifier, wait_seconds=options.lock_wait_seconds)
    try:
        lock.acquire()
    except TableBusy as e:
        run.busy = str(e)
        log(f"{table.identifier}: {e}; its files wait for the next run")
        return run
    try:
        if options.rebuild:
            run.notes.append(rebuild(table, catalog=catalog, ledger=ledger, landing=landing, log=log))
        if options.reload:
            ledger.request_reload(table.identifier, requested_by=lock.owner)
            run.notes.append(f"{table.identifier}: reload requested; the next batch with full-load files replaces the table")
        tbl = load_table(catalog, table.identifier)
        if tbl is not None:
            check_definition(tbl, table)  # before anything is claimed: refused tables keep their files landed
        runner = _BatchRunner(table, catalog, ledger, landing, engine, _guarded(failpoint, lock, table), log, lock.owner)
        for batch_id, entries in ledger.processing_batches(table.identifier).items():
            log(f"{table.identifier}: resuming batch {batch_id} ({len(entries)} files) left by a process that is gone")
            run.results += runner.run(batch_id, entries, resumed=True)
        if options.retry_failed:
            n = ledger.retry_failed(table.identifier)
            if n:
                log(f"{table.identifier}: retrying {n} failed files")
        batch_id, entries = ledger.claim(table.identifier, options.max_files, owner=lock.owner)
        if entries:
            log(f"{table.identifier}: batch {batch_id} with {len(entries)} files")
            run.results += runner.run(batch_id, entries)
        if table.archive:  # after the commits, still under the lock; also what a crash left unarchived
            run.notes += archive_merged(table, ledger=ledger, landing=landing, log=log)
    finally:
        lock.release()
    return run


def archive_merged(table: TableConfig, *, ledger: FileLedger, landing: LandingZone,
                   log: Callable[[str], None] = lambda msg: None) -> list[str]:
    """Move the table's merged files (committed, set aside, duplicates) to the landing zone's archive,
    recording in the ledger where each went. Only the newest version of a key moves, and only while
    its content is the one merged: a newer version landing under the key stays to be merged."""
    entries = ledger.entries(table.identifier)
    newest: dict[str, int] = {}
    for e in entries:
        newest[e.key] = max(newest.get(e.key, 0), e.file_version)
    notes = []
    for e in entries:
        if e.archived_to is not None or e.status not in (COMMITTED, QUARANTINED, DUPLICATE) or e.file_version != newest[e.key]:
            continue
        try:
            location = landing.archive(e.key, e.checksum)
        except FileNotFoundError:
            location = f"not archived: {e.key} was gone from the landing zone {landing.describe()} after its merge"
        except OSError as err:  # the next run tries again
            notes.append(f"{table.identifier}: could not archive {e.key}: {err}")
            continue
        if location is None:
            continue  # new content under the key: it is merged (and archived) as a new version
        ledger.record_archived(e.id, location)
        log(f"{table.identifier}: archived {e.key} to {location}")
    return notes


def rebuild(
    table: TableConfig, *, catalog: Catalog, ledger: FileLedger, landing: LandingZone, log: Callable[[str], None] = lambda msg: None
) -> str:
    """Drop the table and its sidecars and put every landed file of the table back to be merged again.

    Refused (nothing dropped) when a file the table was built from is no longer in the landing zone."""
    entries = [e for e in ledger.entries(table.identifier) if e.status in (COMMITTED, QUARANTINED, FAILED, PROCESSING)]
    newest: dict[str, LedgerEntry] = {}
    for e in entries:
        if e.key not in newest or e.file_version > newest[e.key].file_version:
            newest[e.key] = e
    present = {o.key for o in landing.list(table.landing_prefix)}  # the table's folder, not the whole landing zone
    missing = sorted(k for k, e in newest.items() if e.status in (COMMITTED, QUARANTINED) and k not in present)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise RebuildRefused(
            f"{table.identifier}: cannot rebuild from the landing zone {landing.describe()}: {len(missing)} merged "
            f"file(s) are gone ({shown}); nothing was dropped"
        )
    if load_table(catalog, table.identifier) is not None:
        catalog.drop_table(table.identifier)
    drop_sidecars(catalog, table)
    n = ledger.reset_for_rebuild(table.identifier)
    message = f"{table.identifier}: rebuilding from {n} landed files (table and sidecars dropped)"
    log(message)
    return message


class LockLost(RuntimeError):
    """The table's lock lapsed while this process merged it (it was paused longer than its lease)."""


def _guarded(failpoint: Callable[[str], None], lock: TableLock, table: TableConfig) -> Callable[[str], None]:
    """The failpoint hook, plus the check that the lock is still ours right before the commit."""

    def hook(name: str) -> None:
        failpoint(name)
        if name == "before_commit" and not lock.held:
            raise LockLost(f"{table.identifier}: this process lost the table's lock before committing "
                           "(its lease lapsed); the batch is left for the lock's new holder")

    return hook


class _BatchRunner:
    def __init__(self, table: TableConfig, catalog: Catalog, ledger: FileLedger, landing: LandingZone, engine: MergeEngine,
                 failpoint: Callable[[str], None], log: Callable[[str], None], owner: str):
        self.table, self.catalog, self.ledger, self.landing = table, catalog, ledger, landing
        self.engine, self.failpoint, self.log, self.owner = engine, failpoint, log, owner

    def run(self, batch_id: str, entries: list[LedgerEntry], *, resumed: bool = False) -> list[MergeResult]:
        table = self.table
        self.failpoint("after_claim")
        summary = self._committed_summary(batch_id)
        if summary is not None:
            return [self._reconcile(batch_id, entries, summary)]
        inputs, failed = self._read(entries)
        if not inputs:
            self.ledger.finish_batch(batch_id, committed={}, failed=failed, snapshot_id=None)
            return [MergeResult(table.identifier, batch_id, [], failed_files=failed)]
        reload_requested = self.ledger.reload_requested(table.identifier)
        try:
            result = self._merge(inputs, batch_id, reload_requested)
        except TableDefinitionError:
            self.ledger.release_batch(batch_id)
            raise
        except LockLost:
            raise  # the batch stays processing, with the same id: the lock's new holder resumes it
        except EngineInterrupted as err:
            if not resumed:
                raise  # the batch stays processing; the next run resumes it with the same id
            return self._take_apart(batch_id, inputs, failed, err)
        except SchemaDriftError as err:
            # The batch cannot apply as it is: nothing was written; its files stay failed (retryable).
            rollback_sidecars(self.catalog, table, batch_id)
            self.ledger.finish_batch(batch_id, committed={}, failed={i.key: str(err) for i in inputs} | failed, snapshot_id=None)
            raise BatchFailed(str(err)) from err
        except Exception as err:  # noqa: BLE001 - no file explains it: find the one that does
            return self._take_apart(batch_id, inputs, failed, err)
        failed.update(result.failed_files)
        result.failed_files = failed
        per_file = {i.key: result.per_file.get(i.key, (0, 0)) for i in inputs if i.key not in failed}
        self.failpoint("before_ledger")
        self.ledger.finish_batch(batch_id, committed=per_file, failed=failed, snapshot_id=result.snapshot_id,
                                 set_aside=self._set_aside(result))
        if reload_requested and result.reload:
            self.ledger.clear_reload(table.identifier)
        self.failpoint("after_ledger")
        return [result]

    def _merge(self, inputs: list[LandedInput], batch_id: str, reload_requested: bool) -> MergeResult:
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                return self.engine.merge(self.catalog, self.table, inputs, batch_id, reload_requested=reload_requested,
                                         failpoint=self.failpoint)
            except CommitFailedException:
                if attempt == COMMIT_ATTEMPTS:
                    raise
                time.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    def _take_apart(self, batch_id: str, inputs: list[LandedInput], failed: dict[str, str], err: Exception) -> list[MergeResult]:
        table = self.table
        reason = f"{type(err).__name__}: {str(err)[:500]}"
        summary = self._committed_summary(batch_id)
        if summary is not None:  # it failed after its commit: the batch is done
            return [self._reconcile(batch_id, [e for e in self.ledger.processing_batches(table.identifier).get(batch_id, [])], summary)]
        undone = rollback_sidecars(self.catalog, table, batch_id)
        if len(inputs) == 1:
            key = inputs[0].key
            failed[key] = f"{key} (table {table.identifier}): the merge failed: {reason}"
            self.ledger.finish_batch(batch_id, committed={}, failed=failed, snapshot_id=None)
            self.log(f"{table.identifier}: {failed[key]}")
            return [MergeResult(table.identifier, batch_id, [], failed_files=failed)]
        self.log(f"{table.identifier}: batch {batch_id} of {len(inputs)} files failed ({reason})"
                 + (f"; undid {', '.join(undone)}" if undone else "") + "; merging its files one by one")
        self.ledger.finish_batch(batch_id, committed={}, failed=failed, snapshot_id=None)
        self.ledger.release_batch(batch_id)
        results = []
        for _ in range(len(inputs)):
            one_id, one = self.ledger.claim(table.identifier, 1, owner=self.owner)
            if not one:
                break
            try:
                results += self.run(one_id, one)
            except BatchFailed as drift:  # that file alone cannot apply; it is failed, the others go on
                results.append(MergeResult(table.identifier, one_id, [], failed_files={e.key: str(drift) for e in one}))
        return results

    def _committed_summary(self, batch_id: str) -> dict | None:
        tbl = load_table(self.catalog, self.table.identifier)
        return None if tbl is None else committed_batches(tbl).get(batch_id)

    def _reconcile(self, batch_id: str, entries: list[LedgerEntry], summary: dict) -> MergeResult:
        """The batch committed before its process died: bring the ledger up to date from the commit."""
        table = self.table
        files = json.loads(summary.get("lake.files", "[]"))
        result = MergeResult(table.identifier, batch_id, files, already_committed=True, snapshot_id=int(summary["snapshot-id"]))
        for k in ("rows-read", "inserted", "updated", "deleted", "appended", "quarantined"):
            setattr(result, k.replace("-", "_"), int(summary.get(f"lake.{k}", 0)))
        unlisted = {e.key: f"{e.key} (table {table.identifier}): not in the committed batch's file list (it could not be read)"
                    for e in entries if e.key not in files}
        per_file = {k: (int(v[0]), int(v[1])) for k, v in json.loads(summary.get("lake.per-file", "{}")).items()}
        result.per_file = per_file
        self.ledger.finish_batch(batch_id, committed={k: per_file.get(k, (0, 0)) for k in files}, failed=unlisted,
                                 snapshot_id=result.snapshot_id, set_aside=self._set_aside(result))
        if summary.get("lake.reload") == "true":
            self.ledger.clear_reload(table.identifier)
        result.failed_files = unlisted
        return result

    def _read(self, entries: list[LedgerEntry]) -> tuple[list[LandedInput], dict[str, str]]:
        inputs, failed = [], {}
        where = f"(table {self.table.identifier})"
        for e in entries:
            try:
                f = parse_table_key(e.key, self.table)
                data = self.landing.read(e.key)
            except LandingKeyError as err:
                failed[e.key] = str(err)
                continue
            except OSError as err:
                failed[e.key] = f"{e.key} {where}: cannot read from landing zone {self.landing.describe()}: {err}"
                continue
            if "-" not in e.checksum and hashlib.md5(data, usedforsecurity=False).hexdigest() != e.checksum:
                failed[e.key] = (f"{e.key} {where}: content changed since it landed (checksum {e.checksum}); "
                                 "the new content is recorded as a new version of the file")
                continue
            inputs.append(LandedInput(f, data, e.file_version))
        return inputs, failed

    def _set_aside(self, result: MergeResult) -> dict[str, str]:
        """Files the engine read that gave the table nothing, with the reason the ledger shows."""
        out = {}
        for key, (rows, quarantined) in result.per_file.items():
            if key in result.failed_files:
                continue
            if rows == 0:
                out[key] = f"{key}: file has no rows; nothing to merge"
            elif quarantined == rows:
                out[key] = f"{key}: all {rows} rows quarantined to {self.table.quarantine_identifier}"
        return out

