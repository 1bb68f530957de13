"""SQL extracts in Dagster: for a `format: sql` table, its landing asset (`landing/<source>/<table>`)
is materialized by the extract, not observed, and the source-aligned table merges what it landed.

One subsettable op per source (`extract_<source>`), like the merges; the job `extract_<source>`
runs the extracts of the selected tables and then their merges, and one schedule per source and
cron runs it on the tables' cadence (`refresh`). A table that fails to extract is reported after
the others have run; its merge still takes what earlier extracts landed.
"""


import re
from collections.abc import Iterator, Mapping

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    DefaultScheduleStatus,
    Failure,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    ScheduleEvaluationContext,
    define_asset_job,
    in_process_executor,
    multi_asset,
    schedule,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from lake_assets.core.naming import source_pool
from lake_assets.core.registry import Registry, TableConfig
from lake_assets.landing_assets import landing_asset_key, landing_spec
from resources.lake import LakeResource

FULL_EXTRACT_TAG = "lake/full_extract"  # "true", or comma-separated source.table ids: extract them whole now


def sql_tables(registry: Registry) -> dict[str, list[TableConfig]]:
    """source -> its format sql tables."""
    out: dict[str, list[TableConfig]] = {}
    for t in registry.tables:
        if t.format == "sql":
            out.setdefault(t.source, []).append(t)
    return out


def _full_requested(tags: Mapping[str, str], table: TableConfig) -> bool:
    value = (tags.get(FULL_EXTRACT_TAG) or "").strip().lower()
    return value == "true" or table.identifier in {v.strip() for v in value.split(",")}


def build_extract_assets(source: str, tables: list[TableConfig]):
    by_key = {landing_asset_key(t): t for t in tables}

    @multi_asset(
        name=f"extract_{source}",
        specs=[landing_spec(t) for t in tables],
        can_subset=True,
        pool=f"{source_pool(source)}_extract",
        required_resource_keys={"lake"},
    )
    def _extract(context: AssetExecutionContext) -> Iterator[MaterializeResult]:
        from lake_assets.core.sql_source import extract_table  # the driver is a run's import

        lake: LakeResource = context.resources.lake
        tags = context.run.tags if context.run else {}
        failures = []
        for key in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string()):
            table = by_key[key]
            try:
                done = extract_table(table, ledger=lake.ledger, landing=lake.landing, full=_full_requested(tags, table),
                                     lock_wait_seconds=lake.settings.lock_wait_seconds)
            except Exception as e:  # noqa: BLE001 - this table only; the others extract, its landed files still merge
                context.log.error(f"{table.identifier}: extract failed: {e}")
                failures.append(f"{table.identifier}: {e}")
                continue
            info = done.info
            context.log.info(f"{table.identifier}: {info.kind} extract {info.number}: {info.rows} rows, "
                             f"{info.watermark} from {info.low or 'the start'} to {info.high}, landed {done.key}"
                             + (" (written by a run that crashed before recording it: recorded now)" if done.reused else ""))
            yield MaterializeResult(asset_key=key, metadata={
                "kind": MetadataValue.text(info.kind),
                "extract_number": MetadataValue.int(info.number),
                "rows": MetadataValue.int(info.rows),
                "watermark": MetadataValue.text(info.watermark),
                "watermark_low": MetadataValue.text(info.low or "-"),
                "watermark_high": MetadataValue.text(info.high or "-"),
                "file": MetadataValue.path(done.key),
                "reused_after_crash": MetadataValue.bool(done.reused),
            })
        if failures:
            raise Failure(description=f"{len(failures)} of {len(context.selected_asset_keys)} extracts failed; the others "
                          "landed:\n" + "\n".join(failures))

    return _extract


def extract_assets(registry: Registry) -> list:
    return [build_extract_assets(source, tables) for source, tables in sql_tables(registry).items()]


def extract_job_name(source: str) -> str:
    return f"extract_{source}"


def extract_jobs(registry: Registry) -> dict[str, UnresolvedAssetJobDefinition]:
    """source -> the job that extracts its sql tables and merges them."""
    out = {}
    for source, tables in sql_tables(registry).items():
        keys = [k for t in tables for k in (landing_asset_key(t), AssetKey(t.asset_key_path))]
        out[source] = define_asset_job(
            extract_job_name(source), selection=AssetSelection.assets(*keys), executor_def=in_process_executor,
            description=f"Extracts source {source}'s {len(tables)} SQL tables from their database, then merges them",
            tags={"lake/source": source},
        )
    return out


def schedule_name(source: str, cron: str) -> str:
    return f"extract_{source}_" + (re.sub(r"[^a-z0-9]+", "_", cron.lower()).strip("_") or "cron")


def build_extract_schedules(registry: Registry, jobs: dict[str, UnresolvedAssetJobDefinition], *,
                            running: bool = True) -> list:
    """One schedule per source and cron of its sql tables: extract them, then merge them."""
    by_cron: dict[tuple[str, str], list[TableConfig]] = {}
    for source, tables in sql_tables(registry).items():
        for t in tables:
            assert t.refresh and t.refresh != "on_arrival"  # the registry requires a cron of sql tables
            by_cron.setdefault((source, t.refresh), []).append(t)
    return [_schedule(source, cron, tables, jobs[source], running) for (source, cron), tables in sorted(by_cron.items())]


def _schedule(source: str, cron: str, tables: list[TableConfig], job, running: bool):
    selection = [k for t in tables for k in (landing_asset_key(t), AssetKey(t.asset_key_path))]

    @schedule(
        name=schedule_name(source, cron),
        cron_schedule=cron,
        job=job,
        default_status=DefaultScheduleStatus.RUNNING if running else DefaultScheduleStatus.STOPPED,
        description=f"Extracts the {len(tables)} SQL tables of {source} refreshed at '{cron}', then merges them",
    )
    def _extract(context: ScheduleEvaluationContext):
        return RunRequest(asset_selection=selection, tags={"lake/trigger": "schedule"})

    return _extract
