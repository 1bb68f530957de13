"""Merging a table's landed files exactly once: claim them in the ledger, merge, then record.

The Iceberg commit (batch id + file list in its summary) is the truth. A batch interrupted at any
point is resumed with the same batch id and files: if its commit exists, the ledger is brought up
to date; otherwise it is merged again. Re-running with nothing new changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from typing import Callable

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError

from lake_assets.core.cdc.batch import SequenceError
from lake_assets.core.cdc.dms import LandingKeyError, parse_landing_key
from lake_assets.core.cdc.iceberg import SchemaDriftError, committed_batches
from lake_assets.core.cdc.engines.inprocess import MergeResult
from lake_assets.core.landing import LandingZone
from lake_assets.core.ledger import FileLedger, LedgerEntry
from lake_assets.core.naming import quarantine_identifier
from lake_assets.core.registry import TableConfig

COMMIT_ATTEMPTS = 3


def env_failpoint(name: str) -> None:
    """Crash on purpose where LAKE_FAILPOINT names this point (crash-recovery tests)."""
    if os.environ.get("LAKE_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def merge_pending(
    table: TableConfig,
    *,
    catalog: Catalog,
    ledger: FileLedger,
    landing: LandingZone,
    engine,
    retry_failed: bool = False,
    max_files: int | None = None,
    failpoint: Callable[[str], None] = env_failpoint,
    log: Callable[[str], None] = lambda msg: None,
) -> list[MergeResult]:
    results = []
    for batch_id, entries in ledger.processing_batches(table.identifier).items():
        log(f"{table.identifier}: resuming interrupted batch {batch_id} ({len(entries)} files)")
        results.append(_run_batch(table, batch_id, entries, catalog, ledger, landing, engine, failpoint))
    if retry_failed:
        n = ledger.retry_failed(table.identifier)
        if n:
            log(f"{table.identifier}: retrying {n} failed files")
    batch_id, entries = ledger.claim(table.identifier, max_files)
    if entries:
        log(f"{table.identifier}: batch {batch_id} with {len(entries)} files")
        results.append(_run_batch(table, batch_id, entries, catalog, ledger, landing, engine, failpoint))
    return results


def _committed_summary(catalog: Catalog, table: TableConfig, batch_id: str) -> dict | None:
    try:
        tbl = catalog.load_table(table.identifier)
    except NoSuchTableError:
        return None
    return committed_batches(tbl).get(batch_id)


def _run_batch(table, batch_id, entries: list[LedgerEntry], catalog, ledger, landing, engine, failpoint) -> MergeResult:
    failpoint("after_claim")
    summary = _committed_summary(catalog, table, batch_id)
    if summary is not None:
        files = json.loads(summary.get("lake.files", "[]"))
        result = MergeResult(table.identifier, batch_id, files, already_committed=True,
                             snapshot_id=int(summary["snapshot-id"]))
        for k in ("rows-read", "inserted", "updated", "deleted", "appended", "quarantined"):
            setattr(result, k.replace("-", "_"), int(summary.get(f"lake.{k}", 0)))
        unlisted = {e.key: "not in the committed batch's file list" for e in entries if e.key not in files}
        ledger.finish_batch(batch_id, committed={k: (0, 0) for k in files}, failed=unlisted, snapshot_id=result.snapshot_id)
        return result

    files, failed = [], {}
    for e in entries:
        try:
            f = parse_landing_key(e.key)
            data = landing.read(e.key)
        except LandingKeyError as err:
            failed[e.key] = str(err)
            continue
        except OSError as err:
            failed[e.key] = f"{e.key}: cannot read from landing zone {landing.describe()}: {err}"
            continue
        if hashlib.md5(data, usedforsecurity=False).hexdigest() != e.checksum and "-" not in e.checksum:
            failed[e.key] = f"{e.key}: content changed since it landed (checksum {e.checksum}); the new version is recorded on its own"
            continue
        files.append((f, data))

    if not files:
        ledger.finish_batch(batch_id, committed={}, failed=failed, snapshot_id=None)
        return MergeResult(table.identifier, batch_id, [], failed_files=failed)
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            result = engine.merge(catalog, table, files, batch_id, failpoint=failpoint)
            break
        except CommitFailedException:
            if attempt == COMMIT_ATTEMPTS:
                raise
        except (SchemaDriftError, SequenceError) as err:
            # The batch cannot apply as is: its files stay in the ledger as failed (retryable), nothing committed.
            ledger.finish_batch(batch_id, committed={}, failed={f.key: str(err) for f, _ in files} | failed, snapshot_id=None)
            raise
    failed.update(result.failed_files)
    result.failed_files = failed
    per_file = _per_file_counts(files, result)
    set_aside = _set_aside(table, result)
    failpoint("before_ledger")
    ledger.finish_batch(batch_id, committed=per_file, failed=failed, snapshot_id=result.snapshot_id, set_aside=set_aside)
    failpoint("after_ledger")
    return result


def _set_aside(table: TableConfig, result: MergeResult) -> dict[str, str]:
    """Files the engine read that gave the table nothing, with the reason the ledger shows."""
    out = {}
    for key, (rows, quarantined) in result.per_file.items():
        if key in result.failed_files:
            continue
        if rows == 0:
            out[key] = f"{key}: file has no rows; nothing to merge"
        elif quarantined == rows:
            out[key] = f"{key}: all {rows} rows quarantined to {quarantine_identifier(table.source, table.name)}"
    return out


def _per_file_counts(files, result: MergeResult) -> dict[str, tuple[int, int]]:
    return {f.key: result.per_file.get(f.key, (0, 0)) for f, _ in files if f.key not in result.failed_files}
