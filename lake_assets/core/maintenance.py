"""Table maintenance: a source-aligned table stays fast and bounded however many merges it takes.

Under the table's merge lock (the one every merge holds, so no merge commits in between and none
is undone), one run:

- **compacts**: small data files, and files whose position deletes remove more than
  `max_deleted_share` of their rows (or that carry more than `max_delete_files` delete files), are bin-packed per partition into files of the target size, sorted by the primary key
  (narrow key ranges: the merge's pruning reads fewer files afterwards); delete files left
  applying to no live data file go with them;
- **rewrites the manifests** into one data and one delete manifest per partition spec, in the
  same commit (every merge adds a manifest, and every merge and scan reads all of them);
- **expires snapshots** older than `max_snapshot_age_hours` beyond the newest `keep_snapshots`,
  never the chain back to the newest lake commit (what load and era decisions read), and only
  after their batch records are kept in the ledger (`FileLedger.keep_batches`), so reconciliation
  still proves every committed batch;
- **removes orphan files**: files under the table's location that no remaining snapshot or
  metadata file references, older than `orphan_age_hours`;
- **expires tombstones and quarantined rows** past their retention, and the sidecars' snapshots;
- **expires raw event files** (`load: events`, `events.raw_retention_days`): merged files that
  arrived longer ago than the retention are deleted from the landing zone, and the ledger records
  it (`landed_files.archived_to`); failed or unmerged files are never touched.

pyiceberg 0.12 has no compaction: the rewrite is a snapshot written here on pyiceberg's own
snapshot-producer path (`_Rewrite`). Nothing runs while the table has an unfinished batch (it is
resumed by the next merge, which may need the snapshots and sidecar commits it made).
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
import uuid
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import AlwaysTrue, LessThan
from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files
from pyiceberg.manifest import DataFile, DataFileContent, ManifestEntry, ManifestEntryStatus, ManifestFile
from pyiceberg.table import FileScanTask, Table, Transaction
from pyiceberg.table.snapshots import Operation
from pyiceberg.table.update.snapshot import _SnapshotProducer

from lake_assets.core.cdc.deletes import _DeleteManifestWriter, partition_values
from lake_assets.core.cdc.iceberg import BATCH_ID, conform, load_table
from lake_assets.core.landing import LandingZone
from lake_assets.core.ledger import COMMITTED, DUPLICATE, QUARANTINED, FileLedger
from lake_assets.core.naming import tombstone_identifier
from lake_assets.core.registry import MaintenanceSpec, TableConfig

MAINTENANCE = "lake.maintenance"  # snapshot summary of a maintenance commit (never a lake batch)
MIB = 1024 * 1024


@dataclass(frozen=True)
class Health:
    """What a table's reads and merges cost, from its metadata (no data is read)."""

    data_files: int = 0
    data_bytes: int = 0
    small_files: int | None = 0  # None: not counted (summary_health)
    delete_files: int = 0
    records: int = 0
    snapshots: int = 0
    manifests: int = 0
    metadata_bytes: int = 0  # the current metadata file and the current snapshot's manifests

    @property
    def average_file_bytes(self) -> int:
        return self.data_bytes // self.data_files if self.data_files else 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self) | {"average_file_bytes": self.average_file_bytes}


def summary_health(tbl: Table) -> Health:
    """The health a merge reports, from the snapshot summary and the manifest list alone (no manifest
    is read): small files need every file's size, so only maintenance and the check count them."""
    snap = tbl.current_snapshot()
    if snap is None:
        return Health(snapshots=len(tbl.metadata.snapshots))
    props = snap.summary.additional_properties if snap.summary else {}
    manifests = snap.manifests(tbl.io)
    try:
        metadata_bytes = len(tbl.io.new_input(tbl.metadata_location))
    except Exception:  # noqa: BLE001 - the size is a figure, not a reason to fail
        metadata_bytes = 0
    return Health(
        data_files=int(props.get("total-data-files", 0)), data_bytes=int(props.get("total-files-size", 0)),
        small_files=None, delete_files=int(props.get("total-delete-files", 0)), records=int(props.get("total-records", 0)),
        snapshots=len(tbl.metadata.snapshots), manifests=len(manifests),
        metadata_bytes=metadata_bytes + sum(m.manifest_length for m in manifests))


def table_health(tbl: Table, spec: MaintenanceSpec) -> Health:
    snap = tbl.current_snapshot()
    if snap is None:
        return Health(snapshots=len(tbl.metadata.snapshots))
    tasks = list(tbl.scan().plan_files())
    small = small_test(tbl, tasks, spec)
    manifests = snap.manifests(tbl.io)
    deletes = {d.file_path for t in tasks for d in t.delete_files}
    try:
        metadata_bytes = len(tbl.io.new_input(tbl.metadata_location))
    except Exception:  # noqa: BLE001 - the size is a figure, not a reason to fail
        metadata_bytes = 0
    return Health(
        data_files=len(tasks),
        data_bytes=sum(t.file.file_size_in_bytes for t in tasks),
        small_files=sum(1 for t in tasks if small(t)),
        delete_files=len(deletes),
        records=sum(t.file.record_count for t in tasks),
        snapshots=len(tbl.metadata.snapshots),
        manifests=len(manifests),
        metadata_bytes=metadata_bytes + sum(m.manifest_length for m in manifests),
    )


@dataclass
class MaintenanceReport:
    table: str
    skipped: str | None = None  # why nothing ran
    files_compacted: int = 0
    files_written: int = 0
    delete_files_removed: int = 0
    manifests_before: int = 0
    manifests_after: int = 0
    snapshots_expired: int = 0
    batches_kept: int = 0
    orphans_removed: int = 0
    tombstones_expired: int = 0
    quarantine_expired: int = 0
    raw_files_expired: int = 0
    seconds: float = 0.0
    before: Health = field(default_factory=Health)
    after: Health = field(default_factory=Health)

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if isinstance(v, int) and not isinstance(v, bool)}


class _Rewrite(_SnapshotProducer["_Rewrite"]):
    """One snapshot that replaces data files by compacted ones and writes the table's manifests
    anew: the kept files keep their snapshot and sequence numbers (so the delete files that apply
    to them still do), the compacted files are added (their rows have the deletes applied)."""

    def __init__(self, tbl: Table, txn: Transaction, kept: list[ManifestEntry], removed: list[DataFile], added: list[DataFile],
                 properties: dict[str, str]):
        super().__init__(operation=Operation.OVERWRITE, transaction=txn, io=tbl.io, snapshot_properties=properties)
        self._kept = kept
        for f in removed:
            self.delete_data_file(f)
        for f in added:
            self.append_data_file(f)

    def _existing_manifests(self) -> list[ManifestFile]:
        return []

    def _deleted_entries(self) -> list[ManifestEntry]:
        return []

    def _manifests(self) -> list[ManifestFile]:
        by_spec: dict[tuple[int, bool], list[ManifestEntry]] = defaultdict(list)
        for e in self._kept:
            by_spec[(e.data_file.spec_id, e.data_file.content != DataFileContent.DATA)].append(e)
        out = []
        for (spec_id, deletes), entries in sorted(by_spec.items()):
            writer = (_DeleteManifestWriter(self.spec(spec_id), self.schema(), self.new_manifest_output(), self._snapshot_id,
                                            self._compression) if deletes else self.new_manifest_writer(self.spec(spec_id)))
            with writer:
                for e in entries:
                    writer.add_entry(ManifestEntry.from_args(
                        status=ManifestEntryStatus.EXISTING, snapshot_id=e.snapshot_id, sequence_number=e.sequence_number,
                        file_sequence_number=e.file_sequence_number, data_file=e.data_file))
            out.append(writer.to_manifest_file())
        if self._added_data_files:
            with self.new_manifest_writer(self._transaction.table_metadata.spec()) as writer:
                for f in self._added_data_files:
                    writer.add(ManifestEntry.from_args(status=ManifestEntryStatus.ADDED, snapshot_id=self._snapshot_id,
                                                       sequence_number=None, file_sequence_number=None, data_file=f))
            out.append(writer.to_manifest_file())
        return out


def _live_entries(tbl: Table) -> list[ManifestEntry]:
    snap = tbl.current_snapshot()
    if snap is None:
        return []
    return [e for m in snap.manifests(tbl.io) for e in m.fetch_manifest_entry(tbl.io, discard_deleted=True)]


def small_test(tbl: Table, tasks: list[FileScanTask], spec: MaintenanceSpec) -> Callable[[FileScanTask], bool]:
    """Which files are small: under `small_file_share` of the rows a target-size file holds. By rows,
    not bytes: pyiceberg cuts files at the target size of their Arrow data, so a full file is far
    under the target on disk, and a size test would rewrite every full file on every run."""
    full_rows = spec.small_file_share * spec.target_file_mb * MIB / _arrow_bytes_per_row(tbl, tasks)
    return lambda t: t.file.record_count < full_rows


def _arrow_bytes_per_row(tbl: Table, tasks: list[FileScanTask]) -> float:
    """The table's rows' Arrow size, from the first row group of its smallest non-empty file (cheap to
    read): what the writer measures when it cuts files at the target size."""
    sample = min((t for t in tasks if t.file.record_count), key=lambda t: t.file.file_size_in_bytes, default=None)
    if sample is None:
        return 1.0
    with tbl.io.new_input(sample.file.file_path).open() as f:
        parquet = pq.ParquetFile(f)
        rows = parquet.read_row_group(0) if parquet.num_row_groups else None
    return max(rows.nbytes / rows.num_rows, 1.0) if rows is not None and rows.num_rows else 1.0


def _bins(tasks: list[FileScanTask], target: int) -> list[list[FileScanTask]]:
    """Files packed into groups of about the target size (what one rewrite holds in memory)."""
    out: list[list[FileScanTask]] = []
    size = 0
    for t in sorted(tasks, key=lambda t: t.file.file_path):
        if not out or size + t.file.file_size_in_bytes > target:
            out.append([])
            size = 0
        out[-1].append(t)
        size += t.file.file_size_in_bytes
    return out


def compact(tbl: Table, table: TableConfig, spec: MaintenanceSpec) -> tuple[Table, MaintenanceReport]:
    """Compaction and the manifest rewrite, in one snapshot (none when nothing needs doing)."""
    report = MaintenanceReport(table.identifier)
    snap = tbl.current_snapshot()
    if snap is None:
        return tbl, report
    target = spec.target_file_mb * MIB
    tasks = list(tbl.scan().plan_files())
    report.manifests_before = len(snap.manifests(tbl.io))
    groups: dict[tuple, list[FileScanTask]] = defaultdict(list)
    def heavy(t: FileScanTask) -> bool:  # reads pay for its deletes: rewrite it without them
        deleted = sum(d.record_count for d in t.delete_files)
        return len(t.delete_files) > spec.max_delete_files or deleted > spec.max_deleted_share * max(t.file.record_count, 1)

    small = small_test(tbl, tasks, spec)
    for t in tasks:
        if small(t) or heavy(t):
            groups[(t.file.spec_id, partition_values(t.file.partition))].append(t)
    groups = {part: g for part, g in groups.items() if len(g) >= spec.min_files_to_compact or any(heavy(t) for t in g)}
    chosen = [t for g in groups.values() for t in g]
    live_deletes = {d.file_path for t in tasks for d in t.delete_files}
    entries = _live_entries(tbl)
    dangling = [e for e in entries if e.data_file.content != DataFileContent.DATA and e.data_file.file_path not in live_deletes]
    if not chosen and not dangling and report.manifests_before <= spec.max_manifests:
        report.manifests_after = report.manifests_before
        return tbl, report

    txn = tbl.transaction()
    meta = txn.table_metadata
    target_schema = meta.schema().as_arrow()
    scan = ArrowScan(meta, tbl.io, meta.schema(), AlwaysTrue())
    commit_uuid = uuid.uuid4()
    names = itertools.count()
    added: list[DataFile] = []
    keys = [(k, "ascending") for k in table.primary_key]
    for _, group in sorted(groups.items(), key=lambda kv: repr(kv[0])):
        for chunk in _bins(group, target):
            rows = scan.to_table(chunk)  # the delete files applied: the compacted files need none
            if rows.num_rows:
                rows = conform(rows, target_schema).sort_by(keys)
                added.extend(_dataframe_to_data_files(meta, rows, tbl.io, commit_uuid, names))
    rewritten = {t.file.file_path for t in chosen}
    still_applying = {d.file_path for t in tasks if t.file.file_path not in rewritten for d in t.delete_files}
    removed = [e.data_file for e in entries if e.data_file.file_path in rewritten
               or (e.data_file.content != DataFileContent.DATA and e.data_file.file_path not in still_applying)]
    gone = {f.file_path for f in removed}
    kept = [e for e in entries if e.data_file.file_path not in gone]
    report.files_compacted = len(rewritten)
    report.files_written = len(added)
    report.delete_files_removed = sum(1 for f in removed if f.content != DataFileContent.DATA)
    _Rewrite(tbl, txn, kept, removed, added, {MAINTENANCE: "compaction"}).commit()
    tbl = txn.commit_transaction()
    new = tbl.current_snapshot()
    report.manifests_after = len(new.manifests(tbl.io)) if new is not None else 0
    return tbl, report


def _protected(tbl: Table) -> set[int]:
    """The current snapshot back to the newest lake commit: what load and era decisions read."""
    out = set()
    snap = tbl.current_snapshot()
    while snap is not None:
        out.add(snap.snapshot_id)
        if BATCH_ID in (snap.summary.additional_properties if snap.summary else {}):
            break
        snap = tbl.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
    return out


def expire_snapshots(tbl: Table, spec: MaintenanceSpec, now: dt.datetime,
                     keep_batches: Callable[[dict[str, dict[str, str]]], None] | None = None) -> tuple[Table, int, int]:
    """Expire what the spec lets go; `keep_batches(records)` is called with the batch records of
    the snapshots about to go before they go. Returns (table, snapshots expired, batch records kept)."""
    expired = expirable(tbl, spec, now)
    if not expired:
        return tbl, 0, 0
    records = batch_records(expired)
    if records and keep_batches is not None:
        keep_batches(records)
    tbl.maintenance.expire_snapshots().by_ids([s.snapshot_id for s in expired]).commit()
    return tbl.refresh(), len(expired), len(records)


def _referenced(tbl: Table) -> set[str]:
    """Every file a snapshot or metadata file of the table names."""
    out = {tbl.metadata_location}
    out.update(entry.metadata_file for entry in tbl.metadata.metadata_log)
    for snap in tbl.metadata.snapshots:
        out.add(snap.manifest_list)
        for m in snap.manifests(tbl.io):
            out.add(m.manifest_path)
            out.update(e.data_file.file_path for e in m.fetch_manifest_entry(tbl.io, discard_deleted=False))
    for stats in tbl.metadata.statistics or ():
        out.add(stats.statistics_path)
    return {_normal(p) for p in out}


def _normal(path: str) -> str:
    parsed = urlparse(path)
    return parsed.path if parsed.scheme in ("file", "") else f"{parsed.netloc}{parsed.path}"


def remove_orphans(tbl: Table, spec: MaintenanceSpec, now: dt.datetime) -> int:
    """Delete files under the table's location that nothing references, older than the safety age."""
    location = tbl.location()
    try:
        filesystem, root = pafs.FileSystem.from_uri(location if urlparse(location).scheme else f"file://{location}")
    except (pa.ArrowInvalid, OSError):
        return 0  # a file system pyarrow cannot list: nothing removed
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError:
        return 0
    referenced = _referenced(tbl)
    cutoff = now - dt.timedelta(hours=spec.orphan_age_hours)
    removed = 0
    for info in infos:
        if info.type != pafs.FileType.File or info.mtime is None:
            continue
        mtime = info.mtime if info.mtime.tzinfo else info.mtime.replace(tzinfo=dt.UTC)
        if _normal(info.path) in referenced or mtime >= cutoff:
            continue
        filesystem.delete_file(info.path)
        removed += 1
    return removed


def expire_sidecars(catalog: Catalog, table: TableConfig, spec: MaintenanceSpec, now: dt.datetime) -> tuple[int, int]:
    """Tombstones past tombstone_retention_days and quarantined rows past quarantine_retention_days;
    then the sidecars' own old snapshots. Returns (tombstones expired, quarantined rows expired)."""
    from lake_assets.core.cdc.sidecars import DELETED_AT

    expired = [0, 0]
    for i, (identifier, column, days) in enumerate((
        (tombstone_identifier(table.source, table.name), DELETED_AT, table.tombstone_retention_days),
        (table.quarantine_identifier, "quarantined_at", spec.quarantine_retention_days),
    )):
        tbl = load_table(catalog, identifier)
        if tbl is None or tbl.current_snapshot() is None:
            continue
        cutoff = now - dt.timedelta(days=days)
        rows = tbl.scan(selected_fields=(column,)).to_arrow().column(column)
        old = int(pc.sum(pc.less(rows, pa.scalar(cutoff, rows.type))).as_py() or 0) if len(rows) else 0
        if old:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                # LessThan(term, literal) is pyiceberg's own __init__; mypy sees only the pydantic fields.
                tbl.delete(LessThan(column, cutoff.isoformat()), snapshot_properties={MAINTENANCE: "expiry"})  # type: ignore[call-arg, misc, unused-ignore]
            expired[i] = old
        tbl = tbl.refresh()
        expire_snapshots(tbl, spec, now)
    return expired[0], expired[1]


EXPIRED = "expired"  # how the ledger's archived_to starts for a raw file deleted after its retention


def expire_raw_files(ledger: FileLedger, landing: LandingZone, table: TableConfig, now: dt.datetime,
                     log: Callable[[str], None] = lambda msg: None) -> int:
    """Delete an event table's raw landed files whose retention ran out: only the newest version of a
    key, only when the ledger says it is merged (committed, quarantined into the errors table, or a
    duplicate of merged content) and only while its content is the one merged. The ledger keeps
    each file's row, so a re-delivery of the same content is still known (not merged twice).
    Returns the number of files deleted."""
    days = table.events.raw_retention_days if table.events is not None else None
    if days is None:
        return 0
    cutoff = now - dt.timedelta(days=days)
    entries = ledger.entries(table.identifier)
    newest: dict[str, int] = {}
    for e in entries:
        newest[e.key] = max(newest.get(e.key, 0), e.file_version)
    expired = 0
    for e in entries:
        if (e.archived_to is not None or e.status not in (COMMITTED, QUARANTINED, DUPLICATE)
                or e.file_version != newest[e.key] or dt.datetime.fromisoformat(e.arrived_at) >= cutoff):
            continue
        when = now.astimezone(dt.UTC).isoformat(timespec="seconds")
        try:
            if not landing.delete(e.key, e.checksum):
                continue  # new content under the key: it is merged, and expires, as a new version
            note = f"{EXPIRED} {when}: deleted from {landing.describe()} after raw_retention_days {days}"
            expired += 1
        except FileNotFoundError:
            note = f"{EXPIRED} {when}: already gone from {landing.describe()}"
        ledger.record_archived(e.id, note)
        log(f"{table.identifier}: {e.key}: {note}")
    return expired


def expirable(tbl: Table, spec: MaintenanceSpec, now: dt.datetime) -> list:
    """The snapshots the spec lets go, newest first: beyond the newest `keep_snapshots`, older than
    `max_snapshot_age_hours`, and not on the chain back to the newest lake commit."""
    snaps = sorted(tbl.metadata.snapshots, key=lambda s: s.timestamp_ms, reverse=True)
    cutoff_ms = (now - dt.timedelta(hours=spec.max_snapshot_age_hours)).timestamp() * 1000
    keep = {s.snapshot_id for s in snaps[: spec.keep_snapshots]} | _protected(tbl)
    keep |= {s.snapshot_id for s in snaps if s.timestamp_ms >= cutoff_ms}
    return [s for s in snaps if s.snapshot_id not in keep]


def batch_records(snapshots: list) -> dict[str, dict[str, str]]:
    records = {}
    for s in snapshots:
        props = s.summary.additional_properties if s.summary else {}
        if BATCH_ID in props:
            records[props[BATCH_ID]] = dict(props) | {"snapshot-id": str(s.snapshot_id)}
    return records


def _maintain_with_spark(engine: Any, catalog: Catalog, ledger: FileLedger, table: TableConfig, tbl: Table,
                         spec: MaintenanceSpec, now: dt.datetime, report: MaintenanceReport) -> None:
    """A Spark table: Iceberg's own procedures in the Spark job; the batch records of what it expires
    are kept in the ledger before it runs (the procedures know nothing of them)."""
    expired = expirable(tbl, spec, now)
    records = batch_records(expired)
    if records:
        ledger.keep_batches(table.identifier, records)
    counts = engine.maintain(catalog, table, expire_snapshot_ids=[s.snapshot_id for s in expired],
                             # Iceberg's procedure refuses a safety age under 24 hours of its own clock
                             orphans_older_than=min(now, dt.datetime.now(dt.UTC))
                             - dt.timedelta(hours=max(spec.orphan_age_hours, 24), minutes=1))
    report.batches_kept = len(records)
    for name in ("files_compacted", "files_written", "manifests_before", "manifests_after", "snapshots_expired", "orphans_removed"):
        setattr(report, name, int(counts.get(name, 0)))


def maintain(catalog: Catalog, ledger: FileLedger, table: TableConfig, *, now: dt.datetime | None = None,
             lock_wait_seconds: float = 30.0, spec: MaintenanceSpec | None = None, engine: Any = None,
             landing: LandingZone | None = None) -> MaintenanceReport:
    """One maintenance run of a table, under its merge lock. `engine`: the table's Spark engine when
    it has `engine: spark` (its procedures do the work); None: in process. `landing`: where an event
    table's raw files expire (None: they are left alone)."""
    started = time.perf_counter()
    now = now or dt.datetime.now(dt.UTC)
    spec = spec or table.maintenance
    report = MaintenanceReport(table.identifier)
    with ledger.lock_table(table.identifier, wait_seconds=lock_wait_seconds):
        tbl = load_table(catalog, table.identifier)
        if tbl is None:
            report.skipped = "the table does not exist yet"
            return report
        if ledger.processing_batches(table.identifier):
            report.skipped = "a batch is unfinished (it is resumed by the next merge, which may need its snapshots)"
            return report
        report.before = table_health(tbl, spec)
        if engine is not None and hasattr(engine, "maintain"):
            _maintain_with_spark(engine, catalog, ledger, table, tbl, spec, now, report)
            report.tombstones_expired, report.quarantine_expired = expire_sidecars(catalog, table, spec, now)
            if landing is not None:
                report.raw_files_expired = expire_raw_files(ledger, landing, table, now)
            report.after = table_health(tbl.refresh(), spec)
            report.seconds = time.perf_counter() - started
            return report
        tbl, compacted = compact(tbl, table, spec)
        for name in ("files_compacted", "files_written", "delete_files_removed", "manifests_before", "manifests_after"):
            setattr(report, name, getattr(compacted, name))
        tbl, report.snapshots_expired, report.batches_kept = expire_snapshots(
            tbl, spec, now, keep_batches=lambda records: ledger.keep_batches(table.identifier, records))
        report.orphans_removed = remove_orphans(tbl, spec, now)
        report.tombstones_expired, report.quarantine_expired = expire_sidecars(catalog, table, spec, now)
        if landing is not None:
            report.raw_files_expired = expire_raw_files(ledger, landing, table, now)
        report.after = table_health(tbl, spec)
    report.seconds = time.perf_counter() - started
    return report
