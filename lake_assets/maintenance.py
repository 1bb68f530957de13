"""Maintenance in Dagster: one `maintain_<source>` job per source (an op that maintains its tables
one by one under each table's merge lock, lake_assets/core/maintenance.py) and one schedule per
source and distinct `maintenance.schedule` in the registry.

Each table's run is reported as an observation of its source-aligned asset, with the table's
health before and after (data files, average file size, snapshots, manifests, metadata size,
delete files): the asset's plots show how maintenance keeps them bounded. Observations, not
materializations: the rows do not change, so nothing downstream turns stale.
"""

import re
from collections.abc import Mapping
from typing import Any

from dagster import (
    AssetKey,
    AssetObservation,
    DefaultScheduleStatus,
    Failure,
    JobDefinition,
    MetadataValue,
    OpExecutionContext,
    RunRequest,
    ScheduleEvaluationContext,
    in_process_executor,
    job,
    op,
    schedule,
)

from lake_assets.core.registry import Registry, TableConfig
from resources.lake import LakeResource

TABLES_TAG = "lake/maintain_tables"  # comma-separated table ids; absent: every table of the source


def maintenance_job_name(source: str) -> str:
    return f"maintain_{source}"


def health_metadata(health: Any, prefix: str = "") -> dict[str, Any]:
    """A table's health as materialization or observation metadata (plotted over time in the UI)."""
    return {
        f"{prefix}data_files": MetadataValue.int(health.data_files),
        f"{prefix}average_file_mb": MetadataValue.float(round(health.average_file_bytes / 2**20, 3)),
        **({f"{prefix}small_files": MetadataValue.int(health.small_files)} if health.small_files is not None else {}),
        f"{prefix}delete_files": MetadataValue.int(health.delete_files),
        f"{prefix}snapshots": MetadataValue.int(health.snapshots),
        f"{prefix}manifests": MetadataValue.int(health.manifests),
        f"{prefix}metadata_kb": MetadataValue.float(round(health.metadata_bytes / 1024, 1)),
    }


def _selected(tables: list[TableConfig], tags: Mapping[str, str]) -> list[TableConfig]:
    wanted = {t.strip() for t in (tags.get(TABLES_TAG) or "").split(",") if t.strip()}
    return [t for t in tables if not wanted or t.identifier in wanted]


def build_maintenance_job(source: str, tables: list[TableConfig]) -> JobDefinition:
    @op(name=f"maintain_{source}_tables", description=f"Compacts and expires the {len(tables)} tables of {source}",
        required_resource_keys={"lake"} | ({"spark"} if any(t.engine == "spark" for t in tables) else set()))
    def _maintain(context: OpExecutionContext) -> None:
        from lake_assets.assets import engine_for
        from lake_assets.core.maintenance import maintain

        lake: LakeResource = context.resources.lake
        failures = []
        for table in _selected(tables, context.run.tags if context.run else {}):
            try:
                engine = engine_for(table, context) if table.engine == "spark" else None  # Iceberg's procedures
                report = maintain(lake.catalog, lake.ledger, table, lock_wait_seconds=lake.settings.lock_wait_seconds,
                                  engine=engine, landing=lake.landing)
            except Exception as e:  # noqa: BLE001 - one table's failure never stops the others
                context.log.error(f"{table.identifier}: maintenance failed: {e}")
                failures.append(f"{table.identifier}: {e}")
                continue
            if report.skipped:
                context.log.info(f"{table.identifier}: maintenance skipped: {report.skipped}")
                continue
            context.log.info(
                f"{table.identifier}: compacted {report.files_compacted} files into {report.files_written}, removed "
                f"{report.delete_files_removed} delete files, manifests {report.manifests_before} -> {report.manifests_after}, "
                f"expired {report.snapshots_expired} snapshots ({report.batches_kept} batch records kept in the ledger), "
                f"removed {report.orphans_removed} orphan files, expired {report.tombstones_expired} tombstones and "
                f"{report.quarantine_expired} quarantined rows"
                + (f", deleted {report.raw_files_expired} raw event files past their retention" if report.raw_files_expired else "")
                + f" in {report.seconds:.1f}s")
            metadata: dict[str, Any] = {k: MetadataValue.int(v) for k, v in report.counts().items()}
            metadata |= health_metadata(report.before, "before_") | health_metadata(report.after)
            metadata["seconds"] = MetadataValue.float(round(report.seconds, 2))
            context.log_event(AssetObservation(asset_key=AssetKey(table.asset_key_path), metadata=metadata,
                                               tags={"lake/maintenance": "true"}))
        if failures:
            raise Failure(description=f"{len(failures)} table(s) failed maintenance; the others ran:\n" + "\n".join(failures))

    @job(name=maintenance_job_name(source), executor_def=in_process_executor, tags={"lake/source": source},
         description=f"Maintenance of source {source}'s tables: compaction, manifest rewrite, snapshot and orphan "
                     "expiry, tombstone and quarantine expiry, raw event file expiry (tag lake/maintain_tables selects tables)")
    def _job() -> None:
        _maintain()

    return _job


def maintenance_jobs(registry: Registry) -> dict[str, JobDefinition]:
    return {source: build_maintenance_job(source, tables) for source, tables in registry.by_source().items()}


def maintenance_schedule_name(source: str, cron: str) -> str:
    return f"maintain_{source}_" + (re.sub(r"[^a-z0-9]+", "_", cron.lower()).strip("_") or "cron")


def build_maintenance_schedules(registry: Registry, jobs: dict[str, JobDefinition], *, running: bool = True) -> list:
    by_cron: dict[tuple[str, str], list[TableConfig]] = {}
    for t in registry.tables:
        if t.maintenance.schedule:
            by_cron.setdefault((t.source, t.maintenance.schedule), []).append(t)
    sizes = {s: len(ts) for s, ts in registry.by_source().items()}
    return [_schedule(source, cron, tables, jobs[source], running, every=len(tables) == sizes[source])
            for (source, cron), tables in sorted(by_cron.items())]


def _schedule(source: str, cron: str, tables: list[TableConfig], maintenance_job: JobDefinition, running: bool, every: bool):
    tags = {} if every else {TABLES_TAG: ",".join(t.identifier for t in tables)}  # no tag: the whole source

    @schedule(name=maintenance_schedule_name(source, cron), cron_schedule=cron, job=maintenance_job,
              default_status=DefaultScheduleStatus.RUNNING if running else DefaultScheduleStatus.STOPPED,
              description=f"Maintains the {len(tables)} tables of {source} whose maintenance.schedule is '{cron}'")
    def _maintain(context: ScheduleEvaluationContext) -> RunRequest:
        return RunRequest(tags={**tags, "lake/trigger": "schedule"})

    return _maintain
