"""Refresh cadences: one schedule per distinct cron in the registry, merging only tables with pending files."""


import re

from dagster import AssetKey, AssetSelection, DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from lake_assets.core.registry import Registry
from resources.lake import LakeResource


def _name(cron: str) -> str:
    return "refresh_" + (re.sub(r"[^a-z0-9]+", "_", cron.lower()).strip("_") or "cron")


def build_refresh_schedules(registry: Registry, *, running: bool = True) -> list:
    by_cron: dict[str, list] = {}
    for t in registry.tables:
        if t.refresh and t.refresh != "on_arrival":
            by_cron.setdefault(t.refresh, []).append(t)
    out = []
    for cron, tables in sorted(by_cron.items()):
        out.append(_schedule(cron, tables, running))
    return out


def _schedule(cron: str, tables: list, running: bool):
    keys = [AssetKey(t.asset_key_path) for t in tables]

    @schedule(
        name=_name(cron),
        cron_schedule=cron,
        target=AssetSelection.assets(*keys),
        default_status=DefaultScheduleStatus.RUNNING if running else DefaultScheduleStatus.STOPPED,
        description=f"Merges pending files of {len(tables)} tables refreshed at '{cron}'",
    )
    def _refresh(context: ScheduleEvaluationContext, lake: LakeResource):
        pending = lake.ledger.tables_with_pending()
        due = [t for t in tables if t.identifier in pending]
        if not due:
            return SkipReason("no pending files for these tables")
        return RunRequest(asset_selection=[AssetKey(t.asset_key_path) for t in due])

    return _refresh
