"""Asset checks of the source-aligned tables, evaluated against the table as it is and the ledger.

They run after every merge, alone (the UI's "Execute" on a check runs the merge op with only the
check selected: nothing is merged), and freshness also on every landing-sensor tick where it changes,
so a stalled table turns red without anybody running anything.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetKey, MetadataValue
from dagster._utils.schedules import get_latest_completed_cron_tick  # the cron arithmetic schedules use

from lake_assets.core.ledger import COMMITTED, FAILED, PROCESSING, QUARANTINED, LedgerEntry
from lake_assets.core.registry import TableConfig
from lake_assets.table_metadata import SCD2_CURRENT, SCD2_FROM
from resources.lake import LakeResource

if TYPE_CHECKING:  # imported by the runs that evaluate checks, not to load the definitions
    from pyiceberg.table import Table

UNIQUE_KEYS = "unique_primary_key"
LEDGER_RECONCILED = "ledger_reconciled"
QUARANTINE_RATE = "quarantine_rate"
FRESHNESS = "freshness"
TABLE_HEALTH = "table_health"
CHECK_NAMES = (UNIQUE_KEYS, LEDGER_RECONCILED, QUARANTINE_RATE, FRESHNESS, TABLE_HEALTH)

# How long a landed file may wait for its merge. On-arrival tables: the sensor asks for a merge within
# seconds, so a file still unmerged after this is stuck (sensor off, runs failing, a lock held).
# Scheduled tables: the first scheduled run after the file landed, plus this grace.
ON_ARRIVAL_MAX_WAIT = dt.timedelta(minutes=15)
SCHEDULE_GRACE = dt.timedelta(minutes=15)
FAILED_FILES_SHOWN = 50  # a check's metadata lists at most this many files (the ledger has them all)


def check_specs(key: AssetKey, table: TableConfig) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(UNIQUE_KEYS, asset=key, description=f"No two rows share ({', '.join(table.primary_key)})"),
        AssetCheckSpec(LEDGER_RECONCILED, asset=key, description="Every landed file reached the table: each file the ledger "
                       "calls committed is in a snapshot's file list, none is left processing by a merge that is gone, none "
                       "failed (error: its changes are missing until it is fixed and retried), none was set aside with all "
                       "its rows quarantined (warning)"),
        AssetCheckSpec(QUARANTINE_RATE, asset=key, description=f"Quarantined rows of the last merge stay under "
                       f"{table.quarantine_max_rate:.1%} of the rows it read"),
        AssetCheckSpec(FRESHNESS, asset=key, description=f"Every landed file is merged within {describe_allowance(table)}"),
        AssetCheckSpec(TABLE_HEALTH, asset=key, description=f"Warns when the table has more than "
                       f"{table.maintenance.small_files_warn} small data files or {table.maintenance.snapshots_warn} snapshots "
                       f"(maintenance: {table.maintenance.schedule or 'not scheduled'})"),
    ]


def describe_allowance(table: TableConfig) -> str:
    if table.refresh in (None, "on_arrival"):
        return f"{_minutes(ON_ARRIVAL_MAX_WAIT)} of its arrival (refresh: on_arrival)"
    return f"{_minutes(SCHEDULE_GRACE)} of the first scheduled refresh after its arrival (refresh: '{table.refresh}')"


def _minutes(delta: dt.timedelta) -> str:
    return f"{delta.total_seconds() / 60:g} minutes"


def _parse(ts: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(ts) if ts else None


@dataclass(frozen=True)
class Freshness:
    passed: bool
    metadata: dict[str, MetadataValue]


def freshness(table: TableConfig, oldest_pending: str | None, *, newest_arrival: str | None = None,
              last_merged_at: str | None = None, now: dt.datetime | None = None) -> Freshness:
    """Whether the table keeps up with its landing zone: stale when a file not yet merged has waited
    longer than the cadence allows (the oldest such file decides: a stream of new files does not hide
    a stuck one). A table with nothing pending is fresh, however old its last commit: no change in the
    source means no file, not a stall."""
    now = now or dt.datetime.now(dt.UTC)
    waiting = _parse(oldest_pending)
    if table.refresh in (None, "on_arrival"):
        deadline_passed = waiting is not None and now - waiting > ON_ARRIVAL_MAX_WAIT
    else:
        # The refresh that should have merged it: the latest cron tick at least the grace ago.
        last_due = get_latest_completed_cron_tick(table.refresh, now - SCHEDULE_GRACE, "UTC")
        deadline_passed = waiting is not None and waiting < last_due
    metadata: dict[str, MetadataValue] = {
        "allowed_wait": MetadataValue.text(describe_allowance(table)),
        "oldest_unmerged_file_landed_at": MetadataValue.text(oldest_pending or "-"),
        "waiting_minutes": MetadataValue.float(round((now - waiting).total_seconds() / 60, 1) if waiting else 0.0),
        "newest_file_landed_at": MetadataValue.text(newest_arrival or "-"),
        "last_merge_at": MetadataValue.text(last_merged_at or "-"),
    }
    return Freshness(not deadline_passed, metadata)


def freshness_result(table: TableConfig, key: AssetKey, result: Freshness) -> AssetCheckResult:
    return AssetCheckResult(asset_key=key, check_name=FRESHNESS, passed=result.passed, metadata=result.metadata,
                            severity=AssetCheckSeverity.ERROR,
                            description=None if result.passed else f"{table.identifier}: landed files wait longer than "
                            f"{describe_allowance(table)}; is the landing sensor running, or are its runs failing?")


def _load(lake: LakeResource, table: TableConfig) -> Table | None:
    from pyiceberg.exceptions import NoSuchTableError

    try:
        return lake.catalog.load_table(table.identifier)
    except NoSuchTableError:
        return None


def evaluate(table: TableConfig, lake: LakeResource, names: Iterable[str], *, merged_rows: tuple[int, int] | None = None,
             now: dt.datetime | None = None) -> list[AssetCheckResult]:
    """The results of the checks `names` of one table, on the table and ledger as they are now.
    `merged_rows` (rows read, rows quarantined) of the merge that just ran; otherwise the quarantine
    rate is the one of the table's newest batch in the ledger."""
    names = set(names)
    if not names:
        return []
    key = AssetKey(table.asset_key_path)
    tbl = _load(lake, table) if names & {UNIQUE_KEYS, LEDGER_RECONCILED, TABLE_HEALTH} else None
    entries = lake.ledger.entries(table.identifier) if names & {LEDGER_RECONCILED, QUARANTINE_RATE, FRESHNESS} else []
    out = []
    if UNIQUE_KEYS in names:
        out.append(unique_keys(table, key, tbl))
    if TABLE_HEALTH in names:
        out.append(table_health_result(table, key, tbl))
    if LEDGER_RECONCILED in names:
        out.append(ledger_reconciled(table, key, tbl, entries, lake))
    if QUARANTINE_RATE in names:
        out.append(quarantine_rate(table, key, merged_rows if merged_rows is not None else newest_batch_rows(entries)))
    if FRESHNESS in names:
        pending = [e.arrived_at for e in entries if e.status in ("landed", PROCESSING)]
        merged = [e.arrived_at for e in entries if e.status in (COMMITTED, QUARANTINED)]
        out.append(freshness_result(table, key, freshness(
            table, min(pending) if pending else None, newest_arrival=max((e.arrived_at for e in entries), default=None),
            last_merged_at=max(merged) if merged else None, now=now)))
    return out


def unique_keys(table: TableConfig, key: AssetKey, tbl: Table | None) -> AssetCheckResult:
    if tbl is None or table.mode == "history":
        return AssetCheckResult(asset_key=key, check_name=UNIQUE_KEYS, passed=True,
                                metadata={"note": "history mode: keys repeat by design" if tbl is not None else "no table yet"})
    import duckdb

    # scd2: a key has many versions, but one per opening position and at most one current
    unique = (*table.primary_key, SCD2_FROM) if table.mode == "scd2" else table.primary_key
    fields = (*unique, SCD2_CURRENT) if table.mode == "scd2" else unique
    keys = tbl.scan(selected_fields=fields).to_arrow()
    con = duckdb.connect()
    try:
        con.register("k", keys)
        cols = ", ".join(f'"{k}"' for k in unique)
        pk = ", ".join(f'"{k}"' for k in table.primary_key)
        two_current = (f" UNION ALL SELECT {pk} FROM k WHERE \"{SCD2_CURRENT}\" GROUP BY {pk} HAVING count(*) > 1"
                       if table.mode == "scd2" else "")
        row = con.execute(f"SELECT count(*) FROM (SELECT {pk} FROM k GROUP BY {cols} HAVING count(*) > 1{two_current})").fetchone()
    finally:
        con.close()
    dupes = row[0] if row else 0
    return AssetCheckResult(asset_key=key, check_name=UNIQUE_KEYS, passed=dupes == 0,
                            metadata={"duplicate_keys": dupes, "rows": keys.num_rows})


def table_health_result(table: TableConfig, key: AssetKey, tbl: Table | None) -> AssetCheckResult:
    """Small files and snapshots against the table's thresholds: a warning that maintenance is not
    keeping up (not scheduled, failing, or the thresholds are lower than what it keeps)."""
    from lake_assets.core.maintenance import table_health
    from lake_assets.maintenance import health_metadata

    if tbl is None:
        return AssetCheckResult(asset_key=key, check_name=TABLE_HEALTH, passed=True, metadata={"note": "no table yet"})
    spec = table.maintenance
    health = table_health(tbl, spec)
    problems = []
    if health.small_files is not None and health.small_files > spec.small_files_warn:
        problems.append(f"{health.small_files} small data files (more than {spec.small_files_warn})")
    if health.snapshots > spec.snapshots_warn:
        problems.append(f"{health.snapshots} snapshots (more than {spec.snapshots_warn})")
    description = (f"{table.identifier}: {' and '.join(problems)}; run the maintain_{table.source} job or check its "
                   "schedule") if problems else None
    return AssetCheckResult(asset_key=key, check_name=TABLE_HEALTH, passed=not problems, severity=AssetCheckSeverity.WARN,
                            metadata=health_metadata(health), description=description)


def ledger_reconciled(table: TableConfig, key: AssetKey, tbl: Table | None, entries: list[LedgerEntry],
                      lake: LakeResource) -> AssetCheckResult:
    """Fails (error) while a file the ledger calls committed is in no snapshot, a batch is left
    processing by a merge that is gone, or a file failed (its changes are missing from the table);
    fails as a warning while a file was set aside (committed, but every row quarantined, or none).
    The metadata lists the failed and set-aside files with their reasons."""
    from lake_assets.core.cdc.iceberg import committed_batches

    committed_files: set[str] = set()
    if tbl is not None:
        # Batches whose snapshots maintenance expired are proven by the records the ledger kept.
        kept = lake.ledger.kept_batches(table.identifier)
        for summary in [*committed_batches(tbl).values(), *kept.values()]:
            committed_files.update(json.loads(summary.get("lake.files", "[]")))
    ledger_committed = {e.key for e in entries if e.status in (COMMITTED, QUARANTINED)}
    missing = sorted(ledger_committed - committed_files)
    processing = sum(1 for e in entries if e.status == PROCESSING)
    # Files a live merge holds are in flight, not stuck: only a batch whose merge is gone is.
    holder = lake.ledger.lock_holder(table.identifier) if processing else None
    stuck = processing if processing and (holder is None or holder.expires_at < dt.datetime.now(dt.UTC).timestamp()) else 0
    failed = [e for e in entries if e.status == FAILED]
    set_aside = [e for e in entries if e.status == QUARANTINED]
    metadata: dict[str, MetadataValue] = {
        "committed_files": MetadataValue.int(len(ledger_committed)),
        "missing_from_snapshots": MetadataValue.int(len(missing)),
        "stuck_processing": MetadataValue.int(stuck),
        "in_flight": MetadataValue.int(processing - stuck),
        "examples": MetadataValue.text(", ".join(missing[:5]) or "-"),
        "failed_files": MetadataValue.int(len(failed)),
        "quarantined_files": MetadataValue.int(len(set_aside)),
    }
    shown = (failed + set_aside)[:FAILED_FILES_SHOWN]
    if shown:
        rows = ["| file | status | reason |", "|---|---|---|"] + [
            f"| `{e.key}` | {e.status} | {(e.reason or '-').replace('|', '/').replace(chr(10), ' ')} |" for e in shown]
        more = len(failed) + len(set_aside) - len(shown)
        metadata["files"] = MetadataValue.md("\n".join(rows) + (f"\n\n... and {more} more (see the ledger)" if more > 0 else ""))
        metadata["reasons"] = MetadataValue.json({e.key: e.reason or "" for e in shown})
    broken = bool(missing or stuck or failed)
    if failed:
        description = (f"{len(failed)} file(s) failed and stay retryable (python -m lake_assets.ingest --retry-failed, "
                       f"or run tag lake/retry_failed=true)")
    elif missing or stuck:
        description = f"{len(missing)} committed file(s) in no snapshot, {stuck} left processing"
    elif set_aside:
        description = f"{len(set_aside)} file(s) gave the table nothing: every row quarantined, or no rows"
    else:
        description = None
    return AssetCheckResult(asset_key=key, check_name=LEDGER_RECONCILED, passed=not (broken or set_aside), metadata=metadata,
                            severity=AssetCheckSeverity.ERROR if broken else AssetCheckSeverity.WARN, description=description)


def newest_batch_rows(entries: list[LedgerEntry]) -> tuple[int, int]:
    """(rows read, rows quarantined) of the table's newest finished batch (batch ids sort by time)."""
    done = [e for e in entries if e.status in (COMMITTED, QUARANTINED) and e.batch_id]
    if not done:
        return 0, 0
    newest = max(e.batch_id for e in done if e.batch_id)
    batch = [e for e in done if e.batch_id == newest]
    return sum(e.rows_read or 0 for e in batch), sum(e.quarantined_rows or 0 for e in batch)


def quarantine_rate(table: TableConfig, key: AssetKey, rows: tuple[int, int]) -> AssetCheckResult:
    read, quarantined = rows
    rate = quarantined / read if read else 0.0
    return AssetCheckResult(
        asset_key=key, check_name=QUARANTINE_RATE, passed=rate <= table.quarantine_max_rate, severity=AssetCheckSeverity.ERROR,
        metadata={"quarantined": quarantined, "rows_read": read, "rate": float(rate), "max_rate": table.quarantine_max_rate},
    )
