"""Source-aligned assets: one asset per registry table, one merge op per source.

Each table is its own asset (own key, checks, metadata; materializable alone), downstream of its
landing folder (`landing/<source>/<table>`), but the tables of a source share one subsettable op:
3,000 tables make ~30 ops, so definitions load in seconds and every step process does not rebuild
3,000 op definitions. The op's pool serializes a source's merges, which also serializes each
table's; one table's failure is reported after the others have merged. A run that selects only
checks (the UI's "Execute" on a check) merges nothing: the checks are evaluated on the table as it is.
"""


from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    Failure,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from lake_assets.checks import check_specs, evaluate
from lake_assets.core.naming import source_pool
from lake_assets.core.registry import Registry, TableConfig
from lake_assets.landing_assets import landing_asset_key, observations
from lake_assets.maintenance import health_metadata
from lake_assets.table_metadata import data_version, registry_column_schema, table_metadata
from resources.lake import LakeResource

if TYPE_CHECKING:
    from lake_assets.core.cdc.runner import MergeOptions

LAKE_RESOURCE, SPARK_RESOURCE = "lake", "spark"


# Run tags rather than a Config class: building a config schema per asset costs seconds at 3,000 tables.
RETRY_FAILED_TAG = "lake/retry_failed"  # "true": failed files of the selected tables are retried
MAX_FILES_TAG = "lake/max_files"  # cap on files per batch
RELOAD_TAG = "lake/reload"  # "true", or comma-separated source.table ids: their next full load replaces them
REBUILD_TAG = "lake/rebuild"  # "true", or comma-separated ids: drop and re-derive them from their landed files


def _tag_names(tags: dict, tag: str, table: TableConfig) -> bool:
    value = (tags.get(tag) or "").strip().lower()
    return value == "true" or table.identifier in {v.strip() for v in value.split(",")}


def merge_options(tags: dict, table: TableConfig, settings=None) -> "MergeOptions":
    """The merge options a run's tags ask for this table (the lock wait from the settings)."""
    from lake_assets.core.cdc.runner import MergeOptions

    return MergeOptions(
        lock_wait_seconds=settings.lock_wait_seconds if settings is not None else MergeOptions.lock_wait_seconds,
        retry_failed=tags.get(RETRY_FAILED_TAG, "false").lower() == "true",
        max_files=int(tags[MAX_FILES_TAG]) if tags.get(MAX_FILES_TAG) else None,
        reload=_tag_names(tags, RELOAD_TAG, table),
        rebuild=_tag_names(tags, REBUILD_TAG, table),
    )


def _spec(table: TableConfig) -> AssetSpec:
    schema = registry_column_schema(table)
    return AssetSpec(
        key=AssetKey(table.asset_key_path),
        deps=[landing_asset_key(table)],
        group_name=table.source,
        kinds={"iceberg", "spark" if table.engine == "spark" else "duckdb"},
        description=table.description or f"{table.schema}.{table.source_table} of {table.source}, merged from CDC",
        owners=list(table.owners),
        tags={"lake/mode": table.mode, "lake/engine": table.engine},
        metadata={
            "iceberg_table": table.identifier,
            "primary_key": ", ".join(table.primary_key),
            "sequence_by": table.sequence_by or "(file, row)",
            "landing_prefix": table.landing_prefix,
            "registry_file": table.config_file,
            # TableMetadataSet's keys, spelled out: constructing the set for each of 3,000 tables is slow.
            "dagster/table_name": table.identifier,
            **({"dagster/column_schema": schema} if schema is not None else {}),
        },
        skippable=True,  # a table that fails yields nothing; the others still materialize
    )


def _checks_by_asset(keys: set[AssetCheckKey]) -> dict[AssetKey, set[str]]:
    out: dict[AssetKey, set[str]] = {}
    for k in keys:
        out.setdefault(k.asset_key, set()).add(k.name)
    return out


def build_source_assets(source: str, tables: list[TableConfig]):
    by_key = {AssetKey(t.asset_key_path): t for t in tables}

    @multi_asset(
        name=f"merge_{source}",
        specs=[_spec(t) for t in tables],
        check_specs=[c for t in tables for c in check_specs(AssetKey(t.asset_key_path), t)],
        can_subset=True,
        pool=source_pool(source),
        # The Spark resource only where a table of the source asks for it (it costs its imports).
        required_resource_keys={LAKE_RESOURCE} | ({SPARK_RESOURCE} if any(t.engine == "spark" for t in tables) else set()),
    )
    def _merge(context: AssetExecutionContext) -> Iterator[MaterializeResult | AssetCheckResult]:
        lake: LakeResource = getattr(context.resources, LAKE_RESOURCE)
        checks = _checks_by_asset(set(context.selected_asset_check_keys))
        failures, touched = [], []
        for key in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string()):
            table = by_key[key]
            names = checks.pop(key, set())
            touched.append(table)
            try:
                yield merge_table(context, table, lake, names)
            except Failure as e:
                description = e.description or f"{table.identifier}: {e}"  # a Failure may come without one
                context.log.error(description)
                failures.append(description)
                yield from evaluate(table, lake, names)  # its checks still say what is wrong
        # Checks selected without their table (the UI's Execute on a check): the table as it is, nothing merged.
        for key, names in sorted(checks.items(), key=lambda kv: kv[0].to_user_string()):
            yield from evaluate(by_key[key], lake, names)
        for event in observations(touched, lake.ledger):  # statuses changed: failed, committed, pending
            context.log_event(event)
        if failures:
            raise Failure(description=f"{len(failures)} of {len(context.selected_asset_keys)} tables failed; the others merged:\n"
                          + "\n".join(failures))

    return _merge


def engine_for(table: TableConfig, context):
    """The engine a table declares: in-process, or the Spark resource's (local spark-submit or EMR
    Serverless, as the deployment's settings configured it)."""
    if table.engine == "inprocess":
        from lake_assets.core.cdc.inprocess import InProcessEngine

        return InProcessEngine()
    return context.resources.spark.engine_for(context)


def merge_table(context, table: TableConfig, lake: LakeResource, checks: set[str]) -> MaterializeResult:
    """Merge the table's pending files; its materialization, with the checks `checks` evaluated after.

    A merge with nothing to do still materializes (its runs show what happened) but keeps the data
    version, the table's newest snapshot that changed data: nothing downstream turns stale or rebuilds."""
    # The merge machinery (pyiceberg, DuckDB) is imported by runs, not to load the definitions.
    from pyiceberg.exceptions import NoSuchTableError

    from lake_assets.core.cdc.runner import merge_pending

    engine = engine_for(table, context)
    tags = context.run.tags if context.run else {}
    try:
        run = merge_pending(
            table, catalog=lake.catalog, ledger=lake.ledger, landing=lake.landing, engine=engine,
            options=merge_options(tags, table, lake.settings), log=context.log.info,
        )
    except Exception as e:  # any failure fails this table only; its files stay retryable
        raise Failure(description=f"{table.identifier}: {e}", metadata={"table": table.identifier}) from e
    if run.busy:
        context.log.warning(f"{table.identifier}: {run.busy}; its files are merged by that run or the next one")
    for note in run.notes:
        context.log.info(note)
    results = run.results
    totals = {k: 0 for k in ("files", "rows_read", "inserted", "updated", "deleted", "appended", "stale_skipped",
                             "tombstone_rejected", "quarantined", "files_read", "files_rewritten")}
    failed: dict[str, str] = {}
    snapshot = None
    schema_changes: list[str] = []
    for r in results:
        totals["files"] += len(r.files)
        for k in totals:
            if k != "files":
                totals[k] += getattr(r, k)
        failed.update(r.failed_files)
        schema_changes += r.schema_changes
        snapshot = r.snapshot_id or snapshot
        context.log.info(
            f"{table.identifier} batch {r.batch_id}: {len(r.files)} files, {r.rows_read} rows read, "
            f"I/U/D {r.inserted}/{r.updated}/{r.deleted}, appended {r.appended}, quarantined {r.quarantined}, "
            f"stale {r.stale_skipped + r.tombstone_rejected}, snapshot {r.snapshot_id}"
            + (" (already committed before a crash; ledger reconciled)" if r.already_committed else "")
        )
    for reason in failed.values():  # each reason names its file
        context.log.error(f"{table.identifier}: file failed and stays retryable: {reason}")
    if not results and not run.busy:
        context.log.info(f"{table.identifier}: no pending files; nothing changed (data version kept)")

    try:
        tbl = lake.catalog.load_table(table.identifier)
    except NoSuchTableError:
        tbl = None
    metadata: dict[str, Any] = {k: MetadataValue.int(v) for k, v in totals.items()}
    metadata["failed_files"] = MetadataValue.int(len(failed))
    if failed:
        metadata["failures"] = MetadataValue.md("\n".join(f"- `{k}`: {v}" for k, v in failed.items()))
        metadata["failed_file_reasons"] = MetadataValue.json(failed)
    if any(r.reload for r in results):
        metadata["reload"] = MetadataValue.text("; ".join(r.reload_reason or "reload" for r in results if r.reload))
    if schema_changes:
        metadata["schema_changes"] = MetadataValue.md("\n".join(f"- {c}" for c in schema_changes))
    if run.busy:
        metadata["busy"] = MetadataValue.text(run.busy)
    metadata["batches"] = MetadataValue.int(len(results))
    if table.load == "events":  # an event stream's bad events: the count above, and where they are
        metadata["errors"] = MetadataValue.int(totals["quarantined"])
        metadata["errors_table"] = MetadataValue.text(table.quarantine_identifier)
    metadata |= table_metadata(tbl, table.identifier, table=table)
    if tbl is not None:  # files, snapshots, metadata size: plotted over time, maintenance keeps them bounded
        from lake_assets.core.maintenance import summary_health  # from the summary: no manifest read per merge

        metadata |= health_metadata(summary_health(tbl))
    if snapshot is not None:
        metadata["snapshot_id"] = MetadataValue.text(str(snapshot))
    merged_rows = (totals["rows_read"], totals["quarantined"]) if results else None
    return MaterializeResult(asset_key=AssetKey(table.asset_key_path), metadata=metadata, data_version=data_version(tbl),
                             check_results=evaluate(table, lake, checks, merged_rows=merged_rows))


def source_aligned_assets(registry: Registry) -> list:
    return [build_source_assets(source, tables) for source, tables in registry.by_source().items()]
