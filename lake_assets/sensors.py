"""Sensors: the landing sensor records arrivals in the ledger and asks for merges of on-arrival tables."""


import datetime as dt
import json

from dagster import (
    AssetKey,
    AssetSelection,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from lake_assets.core.arrivals import record_arrivals
from lake_assets.core.registry import Registry
from resources.lake import LakeResource

MAX_FILES_PER_TICK = 20_000  # sensors time out at 60 s; the rest is picked up next tick
STALLED_AFTER = dt.timedelta(minutes=15)  # a claimed batch unfinished this long: its run died; resume it


def build_landing_sensor(registry: Registry, *, running: bool = True):
    tables = {t.identifier: t for t in registry.tables}
    selection = AssetSelection.assets(*[AssetKey(t.asset_key_path) for t in registry.tables])

    @sensor(
        name="landing_sensor",
        minimum_interval_seconds=30,
        target=selection,
        default_status=DefaultSensorStatus.RUNNING if running else DefaultSensorStatus.STOPPED,
        description="Records new landing-zone files in the ledger and requests merges of on-arrival tables",
    )
    def landing_sensor(context: SensorEvaluationContext, lake: LakeResource):
        report = record_arrivals(lake.landing, lake.ledger, registry, limit=MAX_FILES_PER_TICK,
                                 settle_seconds=lake.settings.settle_seconds)
        for error in registry.errors:  # a broken registry file stops its own source only: say so every tick
            context.log.error(f"invalid registry file, its source is not ingested: {error.message}")
        for _key, reason in report.unroutable[:20]:  # each reason names its file
            context.log.warning(f"unroutable file, recorded as failed: {reason}")
        if report.settling:
            context.log.info(f"{report.settling} files are still being written (changed in the last "
                             f"{lake.settings.settle_seconds:g} s); a later tick reads them")
        pending = lake.ledger.tables_with_pending()
        on_arrival = sorted(t for t in pending if t in tables and tables[t].refresh == "on_arrival")
        cursor = json.loads(context.cursor) if context.cursor else {}
        last_ids = cursor.get("pending_marks", {})
        # A table is requested again only when new files arrived for it since its last request.
        newest = lake.ledger.newest_landed()
        marks: dict[str, int | str] = {t: newest.get(t, 0) for t in on_arrival}  # str: a resumed batch's mark
        fresh = [t for t in on_arrival if marks[t] and marks[t] != last_ids.get(t)]
        # A run that died mid-merge leaves its batch claimed; request the table again, once per batch.
        stalled = {t: b for t, b in lake.ledger.stalled_batches(STALLED_AFTER).items()
                   if t in tables and tables[t].refresh == "on_arrival"}
        resumed = cursor.get("resumed", {})
        for t, batch in stalled.items():
            if resumed.get(t) != batch and t not in fresh:
                context.log.warning(f"{t}: batch {batch} was claimed over {STALLED_AFTER} ago and never finished; resuming it")
                fresh.append(t)
                marks[t] = marks.get(t) or f"resume-{batch}"
        resumed |= stalled
        new_cursor = json.dumps({"pending_marks": {**last_ids, **marks}, "last_recorded": report.total,
                                 "duplicates": report.duplicates, "resumed": resumed})
        context.log.info(
            f"landing {lake.landing.describe()}: {report.total} new files "
            f"({len(report.unroutable)} unroutable, {report.identical} identical re-deliveries ignored, "
            f"{len(report.content_duplicates)} duplicates of other files, "
            f"{report.rerouted} re-routed); tables pending: {len(pending)}"
        )
        if not fresh:
            return SensorResult(skip_reason=SkipReason("no new files for on-arrival tables"), cursor=new_cursor)
        run_key = "arrivals-" + "-".join(f"{t}:{marks[t]}" for t in fresh)
        return SensorResult(
            run_requests=[RunRequest(run_key=run_key[:240], asset_selection=[AssetKey(tables[t].asset_key_path) for t in fresh],
                                     tags={"lake/trigger": "landing_sensor"})],
            cursor=new_cursor,
        )

    return landing_sensor
