"""Sensors: the landing sensor records arrivals in the ledger, reports what landed, asks for merges
of on-arrival tables (one run of `ingest_<source>` per source), turns a table's freshness check
red or green as it falls behind its landing zone or catches up, and names the landing folders no
registry table claims (a warning with the `lake_assets.discover` command, `landing/unclaimed_folders`).

Where the landing zone sends S3 event notifications to a queue (AWS), the SQS sensor records arrivals
from them and asks for the merges; the landing sensor then only reconciles: it lists the landing
zone less often, from per-folder cursors, records what the notifications missed (the SQS sensor's
next tick requests their merges), resumes stalled batches and keeps freshness current."""


import datetime as dt
import hashlib
import json
import time

from dagster import (
    AssetCheckEvaluation,
    AssetKey,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from lake_assets.checks import FRESHNESS, freshness
from lake_assets.core.naming import ingest_job_name
from lake_assets.core.registry import Registry, TableConfig
from lake_assets.landing_assets import observations, unclaimed_events
from lake_assets.run_processes import reap_dead_runs
from resources.lake import LakeResource

MAX_FILES_PER_TICK = 20_000  # sensors time out at 60 s; the rest is picked up next tick
STALLED_AFTER = dt.timedelta(minutes=15)  # a claimed batch unfinished this long: its run died; resume it
# The sensor daemon wakes every 5 s and ticks a sensor whose interval has passed since its last tick
# *started*: an interval of 5 would miss every other wake-up (a tick every 10 s), so ask for 1.
SENSOR_INTERVAL_SECONDS = 1
# A file that settles within this many seconds of a tick is waited for in the tick, not the next one.
SETTLE_WAIT_SECONDS = 6.0
# With notifications, listing is the safety net: every 5 minutes, not every second (S3 LIST requests
# cost money, and 3,000 table folders are 3,000 of them per pass).
RECONCILE_INTERVAL_SECONDS = 300
MAX_MESSAGES_PER_TICK = 2_000  # 200 ReceiveMessage calls at most
RECEIVE_SECONDS = 40.0  # receiving stops after this long; a tick must end within 60 s


def build_landing_sensor(registry: Registry, *, running: bool = True, jobs: dict[str, UnresolvedAssetJobDefinition] | None = None,
                         reconcile_only: bool = False, full_listing_every: int | None = None,
                         cursor_lag_seconds: float | None = None):
    """`jobs`: source -> its ingest job (default: built here, as the definitions do).
    `reconcile_only`: the SQS sensor records arrivals and requests their merges; this one lists
    every RECONCILE_INTERVAL_SECONDS and requests only resumptions of stalled batches.
    `full_listing_every`, `cursor_lag_seconds`: see `ListingCursor` (defaults there)."""
    from lake_assets.core.arrivals import CURSOR_LAG_SECONDS, FULL_LISTING_EVERY

    tables = {t.identifier: t for t in registry.tables}
    jobs = jobs if jobs is not None else _ingest_jobs(registry)
    full_every = FULL_LISTING_EVERY if full_listing_every is None else full_listing_every
    lag = CURSOR_LAG_SECONDS if cursor_lag_seconds is None else cursor_lag_seconds

    @sensor(
        name="landing_sensor",
        minimum_interval_seconds=RECONCILE_INTERVAL_SECONDS if reconcile_only else SENSOR_INTERVAL_SECONDS,
        jobs=list(jobs.values()),
        default_status=DefaultSensorStatus.RUNNING if running else DefaultSensorStatus.STOPPED,
        description="Records new landing-zone files in the ledger, reports them on the landing assets, requests merges "
                    "of on-arrival tables and keeps each table's freshness check current",
    )
    def landing_sensor(context: SensorEvaluationContext, lake: LakeResource):
        from lake_assets.core.arrivals import (  # the file readers: imported by ticks
            ListingCursor,
            discover_command,
            record_arrivals,
            unclaimed_folders,
        )

        for run_id in reap_dead_runs(context.instance):  # a killed run must not hold its source's merge slot
            context.log.warning(f"run {run_id}: its process is gone; marked failed, its concurrency slot freed")
        settle = lake.settings.settle_seconds
        cursor = json.loads(context.cursor) if context.cursor else {}
        listing = ListingCursor.from_json(cursor.get("listing"))
        report = record_arrivals(lake.landing, lake.ledger, registry, limit=MAX_FILES_PER_TICK, settle_seconds=settle,
                                 cursor=listing, full_every=full_every, lag_seconds=lag)
        wait = (report.settled_at - time.time()) if report.settling and report.settled_at else None
        if wait is not None and wait <= SETTLE_WAIT_SECONDS and not report.remaining:
            # Files still being written settle within seconds: record them in this tick, not the next.
            time.sleep(max(0.0, wait) + 0.05)
            report = report.add(record_arrivals(lake.landing, lake.ledger, registry, limit=MAX_FILES_PER_TICK,
                                                settle_seconds=settle, cursor=report.cursor or listing,
                                                full_every=full_every, lag_seconds=lag))
        for error in registry.errors:  # a broken registry file stops its own source only: say so every tick
            context.log.error(f"invalid registry file, its source is not ingested: {error.message}")
        for _key, reason in report.unroutable[:20]:  # each reason names its file
            context.log.warning(f"unroutable file, recorded as failed: {reason}")
        if report.settling:
            context.log.info(f"{report.settling} files are still being written (changed in the last "
                             f"{settle:g} s); a later tick reads them")
        pending = lake.ledger.tables_with_pending()
        last_ids = cursor.get("pending_marks", {})
        if reconcile_only:  # the SQS sensor requests merges of whatever is pending, this tick's finds too
            marks: dict[str, int | str] = {}
            fresh: list[str] = []
        else:
            marks, fresh = _fresh_arrivals(tables, lake, pending, last_ids)
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

        landed = [tables[t] for t in sorted(report.recorded) if t in tables]
        unrouted = lake.ledger.unrouted()  # read once: the landing observations and the unclaimed folders
        events: list = observations(landed, lake.ledger, unrouted)  # what landed, on the landing assets
        was_stale = set(cursor.get("stale", []))
        stale, flipped = freshness_changes(tables, lake, was_stale)
        events += flipped
        # Folders no registry table claims: named with the command that drafts their entry, and
        # reported on landing/unclaimed_folders (its check warns) whenever the set changes.
        unclaimed = unclaimed_folders((e.key for e in unrouted), registry)
        unclaimed_mark = _unclaimed_mark(unclaimed)
        if unclaimed_mark != cursor.get("unclaimed", _unclaimed_mark({})):  # a first tick with none: nothing to say
            for folder, n in list(unclaimed.items())[:20]:
                context.log.warning(f"landing folder {folder or '(landing root)'} holds {n} file(s) no registry table claims "
                                    f"(not ingested); draft its registry entry with: {discover_command(lake.landing, folder)}")
            events += unclaimed_events(unclaimed, lake.landing)
        new_cursor = json.dumps({"pending_marks": {**last_ids, **marks}, "last_recorded": report.total,
                                 "duplicates": report.duplicates, "resumed": resumed, "stale": sorted(stale),
                                 "unclaimed": unclaimed_mark,
                                 **({"listing": report.cursor.to_json()} if report.cursor else {})})
        context.log.info(
            f"landing {lake.landing.describe()} ({'full listing' if report.full_listing else 'listed after cursors'}, "
            f"{report.listed} objects): {report.total} new files "
            f"({len(report.unroutable)} unroutable, {report.identical} identical re-deliveries ignored, "
            f"{len(report.content_duplicates)} duplicates of other files, "
            f"{report.rerouted} re-routed); tables pending: {len(pending)}; behind their landing zone: {len(stale)}; "
            f"folders no registry table claims: {len(unclaimed)}"
        )
        if not fresh:
            return SensorResult(skip_reason=SkipReason("no new files for on-arrival tables"), cursor=new_cursor,
                                asset_events=events)
        return SensorResult(run_requests=_merge_requests(tables, fresh, marks, "landing_sensor"), cursor=new_cursor,
                            asset_events=events)

    return landing_sensor


def build_sqs_sensor(registry: Registry, *, running: bool = True, jobs: dict[str, UnresolvedAssetJobDefinition] | None = None,
                     max_messages: int = MAX_MESSAGES_PER_TICK, receive_seconds: float = RECEIVE_SECONDS,
                     wait_seconds: int = 1):
    """The SQS sensor: records the arrivals the landing zone's event notifications announce and
    requests merges of on-arrival tables with pending files (whoever recorded them)."""
    tables = {t.identifier: t for t in registry.tables}
    jobs = jobs if jobs is not None else _ingest_jobs(registry)

    @sensor(
        name="sqs_sensor",
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        jobs=list(jobs.values()),
        default_status=DefaultSensorStatus.RUNNING if running else DefaultSensorStatus.STOPPED,
        description="Records the files S3 event notifications announce (ObjectCreated, through SQS) in the ledger, "
                    "deletes each message once its files are recorded, and requests merges of on-arrival tables",
    )
    def sqs_sensor(context: SensorEvaluationContext, lake: LakeResource):
        from lake_assets.core.notifications import record_notifications

        queue = lake.arrivals_queue
        if queue is None:
            return SkipReason("this deployment's landing zone has no notification queue (LAKE_ARRIVALS_QUEUE_URL)")
        report = record_notifications(queue, lake.landing, lake.ledger, registry, max_messages=max_messages,
                                      max_seconds=receive_seconds, wait_seconds=wait_seconds)
        for message_id, receives, reason in report.poison:
            context.log.error(f"poison message {message_id} on {queue.describe()} (received {receives} times), left for the "
                              f"queue's dead-letter redrive: {reason}")
        for message_id, why in report.delete_failures:
            context.log.warning(f"message {message_id}: recorded, but SQS refused its deletion ({why}); "
                                "its redelivery is an identical re-delivery")
        for _key, reason in report.unroutable[:20]:
            context.log.warning(f"unroutable file, recorded as failed: {reason}")
        for key, why in report.ignored[:20]:
            context.log.warning(f"notification for {key} ignored: {why}")
        cursor = json.loads(context.cursor) if context.cursor else {}
        last_ids = cursor.get("pending_marks", {})
        marks, fresh = _fresh_arrivals(tables, lake, lake.ledger.tables_with_pending(), last_ids)
        landed = [tables[t] for t in sorted(report.recorded) if t in tables]
        events = observations(landed, lake.ledger)
        new_cursor = json.dumps({"pending_marks": {**last_ids, **marks}, "last_recorded": report.total})
        context.log.info(
            f"queue {queue.describe()}: {report.received} messages ({report.deleted} deleted, {len(report.poison)} poison, "
            f"{report.test_events} test events), {report.total} new files ({len(report.unroutable)} unroutable, "
            f"{report.identical} re-deliveries ignored, {len(report.content_duplicates)} duplicates of other files)"
            + ("; more waiting" if report.remaining else "")
        )
        if not fresh:
            return SensorResult(skip_reason=SkipReason("no new files for on-arrival tables"), cursor=new_cursor,
                                asset_events=events)
        return SensorResult(run_requests=_merge_requests(tables, fresh, marks, "sqs_sensor"), cursor=new_cursor,
                            asset_events=events)

    return sqs_sensor


def _unclaimed_mark(folders: dict[str, int]) -> str:
    """A short digest of the unclaimed folders (and their file counts) for the cursor."""
    return hashlib.sha1(json.dumps(folders, sort_keys=True).encode()).hexdigest()[:16]


def _ingest_jobs(registry: Registry) -> dict[str, UnresolvedAssetJobDefinition]:
    from lake_assets.jobs import ingest_jobs

    return ingest_jobs(registry)


def _fresh_arrivals(tables: dict[str, TableConfig], lake: LakeResource, pending: dict[str, int],
                    last_marks: dict[str, int | str]) -> tuple[dict[str, int | str], list[str]]:
    """(mark per on-arrival table with pending files, those with files newer than their last request)."""
    on_arrival = sorted(t for t in pending if t in tables and tables[t].refresh == "on_arrival")
    # A table is requested again only when new files arrived for it since its last request.
    newest = lake.ledger.newest_landed()
    marks: dict[str, int | str] = {t: newest.get(t, 0) for t in on_arrival}  # str: a resumed batch's mark
    return marks, [t for t in on_arrival if marks[t] and marks[t] != last_marks.get(t)]


def _merge_requests(tables: dict[str, TableConfig], fresh: list[str], marks: dict[str, int | str], trigger: str) -> list[RunRequest]:
    by_source: dict[str, list[str]] = {}
    for t in sorted(fresh):
        by_source.setdefault(tables[t].source, []).append(t)
    return [
        RunRequest(run_key=_run_key(source, [f"{t}:{marks[t]}" for t in ids]), job_name=ingest_job_name(source),
                   asset_selection=[AssetKey(tables[t].asset_key_path) for t in ids], tags={"lake/trigger": trigger})
        for source, ids in sorted(by_source.items())
    ]


def _run_key(source: str, marks: list[str]) -> str:
    """One request per source and set of new files: idempotent (the same files never merge twice
    from one sensor), short even for thousands of tables."""
    text = "-".join(marks)
    key = f"arrivals-{source}-{text}"
    return key if len(key) <= 200 else f"arrivals-{source}-{len(marks)}-tables-{hashlib.sha1(text.encode()).hexdigest()}"


def freshness_changes(tables: dict[str, TableConfig], lake: LakeResource, was_stale: set[str],
                      now: dt.datetime | None = None) -> tuple[set[str], list[AssetCheckEvaluation]]:
    """Tables behind their landing zone now, and a freshness evaluation for each table that fell
    behind or caught up since the last tick (3,000 fresh tables cost one query and no event)."""
    now = now or dt.datetime.now(dt.UTC)
    oldest = lake.ledger.oldest_pending()
    stale = {t for t, since in oldest.items() if t in tables and not freshness(tables[t], since, now=now).passed}
    changed = sorted((stale - was_stale) | {t for t in was_stale - stale if t in tables})
    details = lake.ledger.table_files(changed) if changed else {}
    events = []
    for t in changed:
        files = details.get(t)
        result = freshness(tables[t], oldest.get(t), newest_arrival=files.newest_arrival if files else None,
                           last_merged_at=files.last_merged_at if files else None, now=now)
        events.append(AssetCheckEvaluation(
            asset_key=AssetKey(tables[t].asset_key_path), check_name=FRESHNESS, passed=result.passed, metadata=result.metadata,
            description=None if result.passed else f"{t}: landed files wait for their merge longer than its cadence allows",
        ))
    return stale, events
