"""Refresh cadences: one schedule per source and distinct cron in the registry; each runs the source's
`ingest_<source>` job for those of its tables that have pending files."""


import re

from dagster import (
    AssetKey,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from lake_assets.core.registry import Registry, TableConfig
from resources.lake import LakeResource


def schedule_name(source: str, cron: str) -> str:
    return f"refresh_{source}_" + (re.sub(r"[^a-z0-9]+", "_", cron.lower()).strip("_") or "cron")


def build_refresh_schedules(registry: Registry, *, running: bool = True,
                            jobs: dict[str, UnresolvedAssetJobDefinition] | None = None) -> list:
    """`jobs`: source -> its ingest job (default: built here, as the definitions do)."""
    if jobs is None:
        from lake_assets.jobs import ingest_jobs

        jobs = ingest_jobs(registry)
    by_cron: dict[tuple[str, str], list[TableConfig]] = {}
    for t in registry.tables:
        # A SQL table's cadence is its extract schedule's (extract_assets.py), which merges after extracting.
        if t.refresh and t.refresh != "on_arrival" and t.format != "sql":
            by_cron.setdefault((t.source, t.refresh), []).append(t)
    return [_schedule(source, cron, tables, jobs[source], running) for (source, cron), tables in sorted(by_cron.items())]


def _schedule(source: str, cron: str, tables: list[TableConfig], job, running: bool):
    @schedule(
        name=schedule_name(source, cron),
        cron_schedule=cron,
        job=job,
        default_status=DefaultScheduleStatus.RUNNING if running else DefaultScheduleStatus.STOPPED,
        description=f"Merges pending files of the {len(tables)} tables of {source} refreshed at '{cron}'",
    )
    def _refresh(context: ScheduleEvaluationContext, lake: LakeResource):
        pending = lake.ledger.tables_with_pending()
        due = [t for t in tables if t.identifier in pending]
        if not due:
            return SkipReason("no pending files for these tables")
        return RunRequest(asset_selection=[AssetKey(t.asset_key_path) for t in due], tags={"lake/trigger": "schedule"})

    return _refresh
