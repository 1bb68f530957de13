"""The landing zone in lineage: one observable asset per table, `landing/<source>/<table>`, upstream
of its source-aligned table.

Its observations come from the ledger (files and bytes landed, newest arrival, files pending,
committed, failed, quarantined, duplicate, and unroutable files in the table's folder). The landing
sensor reports one for each table it recorded new files for, the merge reports one after merging
(statuses changed), and "Observe" in the UI asks for one. The data version is the set of files
recorded, so it changes when a file lands, never when a merge only changes statuses: the
source-aligned table shows unsynced exactly while landed files wait for their merge.

One more asset, `landing/unclaimed_folders`, covers the files no table claims: the folders holding
them, each with the `python -m lake_assets.discover` command that drafts its registry entry, and a
check that warns while any exist.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetObservation,
    AssetSpec,
    BetaWarning,
    DataVersion,
    MetadataValue,
    ObserveResult,
    multi_observable_source_asset,
)
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from lake_assets.core.landing import LandingZone
from lake_assets.core.ledger import DUPLICATE, FAILED, FileLedger, LedgerEntry, TableFiles
from lake_assets.core.naming import landing_key
from lake_assets.core.registry import Registry, TableConfig
from resources.lake import LakeResource

LANDING_KIND = {"parquet": "parquet", "csv": "csv", "debezium": "kafka", "json": "json", "jsonl": "json", "sql": "postgres"}


def _layout(table: TableConfig) -> str:
    """How the folder's files are written: DMS's layout for CDC files in DMS formats, else format and load."""
    if table.load == "cdc" and table.format in ("parquet", "csv"):
        return "AWS DMS layout"
    if table.format == "sql":
        return "Parquet extracts of its database table, landed by the lake's extract"
    return f"{table.format} files, load {table.load}"


def landing_asset_key(table: TableConfig) -> AssetKey:
    return AssetKey(landing_key(table.source, table.name))


def landing_spec(table: TableConfig) -> AssetSpec:
    return AssetSpec(
        key=landing_asset_key(table),
        group_name=table.source,
        kinds={LANDING_KIND[table.format]},
        description=f"Files landed for {table.identifier} under {table.landing_prefix} ({_layout(table)}), as the ledger "
                    "records them",
        owners=list(table.owners),
        metadata={"landing_prefix": table.landing_prefix, "format": table.format},
    )


def observation(table: TableConfig, files: TableFiles | None, unroutable: int) -> tuple[DataVersion, dict[str, MetadataValue]]:
    """(data version, metadata) of one table's landing folder."""
    counts = files.by_status if files else {}
    metadata: dict[str, MetadataValue] = {
        "files_landed": MetadataValue.int(files.files if files else 0),
        "bytes_landed": MetadataValue.int(files.bytes if files else 0),
        "newest_arrival": MetadataValue.text(files.newest_arrival if files else "-"),
        "pending": MetadataValue.int(counts.get("landed", 0) + counts.get("processing", 0)),
        "committed": MetadataValue.int(counts.get("committed", 0)),
        "failed": MetadataValue.int(counts.get(FAILED, 0)),
        "quarantined": MetadataValue.int(counts.get("quarantined", 0)),
        "duplicates": MetadataValue.int(counts.get(DUPLICATE, 0)),
        "superseded": MetadataValue.int(counts.get("superseded", 0)),
        "unroutable": MetadataValue.int(unroutable),
        "oldest_pending_arrival": MetadataValue.text((files.oldest_pending_arrival if files else None) or "-"),
    }
    version = DataVersion(f"{files.files} files, newest {files.newest_id}" if files else "no files")
    return version, metadata


def _unroutable_by_table(tables: Iterable[TableConfig], unrouted: list[LedgerEntry]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in tables:
        out[t.identifier] = sum(1 for e in unrouted if e.key.startswith(t.landing_prefix))
    return out


def observations(tables: list[TableConfig], ledger: FileLedger, unrouted: list[LedgerEntry] | None = None) -> list[AssetObservation]:
    """Landing observations of these tables (the sensor's and the merge's); `unrouted`: the ledger's
    unroutable files when the caller has just read them."""
    if not tables:
        return []
    files = ledger.table_files(t.identifier for t in tables)
    unroutable = _unroutable_by_table(tables, ledger.unrouted() if unrouted is None else unrouted)
    out = []
    for t in tables:
        version, metadata = observation(t, files.get(t.identifier), unroutable[t.identifier])
        out.append(AssetObservation(asset_key=landing_asset_key(t), metadata=metadata,
                                    tags={DATA_VERSION_TAG: version.value}))
    return out


def build_landing_assets(source: str, tables: list[TableConfig]):
    by_key = {landing_asset_key(t): t for t in tables}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)  # a beta API on purpose: no warning at every load
        observe = multi_observable_source_asset(
            name=f"observe_landing_{source}",
            specs=[landing_spec(t) for t in tables],
            can_subset=True,
            required_resource_keys={"lake"},
        )

    @observe
    def _observe(context):
        lake: LakeResource = context.resources.lake
        selected = [by_key[k] for k in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string())]
        files = lake.ledger.table_files(t.identifier for t in selected)
        unroutable = _unroutable_by_table(selected, lake.ledger.unrouted())
        for t in selected:
            version, metadata = observation(t, files.get(t.identifier), unroutable[t.identifier])
            yield ObserveResult(asset_key=landing_asset_key(t), data_version=version, metadata=metadata)

    return _observe


def landing_assets(by_source: dict[str, list[TableConfig]]) -> list:
    """Observable landing assets of the tables whose files producers land; a SQL table's landing
    asset is its extract's (extract_assets.py)."""
    landed = {source: [t for t in tables if t.format != "sql"] for source, tables in by_source.items()}
    return [build_landing_assets(source, tables) for source, tables in landed.items() if tables]


# ---------------------------------------------------------------------------------------------
# Folders no registry table claims: one asset for the whole landing zone, with a check that warns
# while any exist, so files no table reads are never only a ledger row marked "unroutable".

UNCLAIMED_KEY = AssetKey(["landing", "unclaimed_folders"])
UNCLAIMED_CHECK = "no_unclaimed_folders"
UNCLAIMED_SHOWN = 50  # folders listed in the metadata table; the counts cover all


def unclaimed_report(folders: dict[str, int], landing: LandingZone) -> tuple[dict[str, MetadataValue], str | None]:
    """(metadata, description of the warning or None) of the landing folders no registry table claims."""
    from lake_assets.core.arrivals import discover_command

    rows = [f"| `{f or '(landing root)'}` | {n} | `{discover_command(landing, f)}` |" for f, n in list(folders.items())[:UNCLAIMED_SHOWN]]
    more = f"\n\n... and {len(folders) - UNCLAIMED_SHOWN} more folders" if len(folders) > UNCLAIMED_SHOWN else ""
    metadata: dict[str, MetadataValue] = {
        "unclaimed_folders": MetadataValue.int(len(folders)),
        "unclaimed_files": MetadataValue.int(sum(folders.values())),
        "landing": MetadataValue.text(landing.describe()),
        "folders": MetadataValue.md("| folder | files | draft its registry entry |\n|---|---|---|\n" + "\n".join(rows) + more
                                    if rows else "none"),
    }
    if not folders:
        return metadata, None
    return metadata, (f"{len(folders)} landing folder(s) hold {sum(folders.values())} file(s) no registry table claims "
                      "(recorded as failed, not ingested); draft an entry with the command shown for each")


def unclaimed_events(folders: dict[str, int], landing: LandingZone) -> list:
    """The observation and check evaluation the landing sensor reports when the unclaimed folders change."""
    metadata, warning = unclaimed_report(folders, landing)
    return [AssetObservation(asset_key=UNCLAIMED_KEY, metadata=metadata),
            AssetCheckEvaluation(asset_key=UNCLAIMED_KEY, check_name=UNCLAIMED_CHECK, passed=warning is None, metadata=metadata,
                                 severity=AssetCheckSeverity.WARN, description=warning)]


def build_unclaimed_asset(registry: Registry):
    """`landing/unclaimed_folders`: what landed outside every registry table's folder. The landing
    sensor reports it when that changes; "Observe" in the UI asks the ledger again."""
    spec = AssetSpec(
        key=UNCLAIMED_KEY, group_name="landing",
        description="Landing folders holding files that no registry table claims: they are recorded (as failed, "
                    "unroutable) but not ingested. Each row names the `python -m lake_assets.discover` command that "
                    "drafts its registry entry.",
    )
    check = AssetCheckSpec(UNCLAIMED_CHECK, asset=UNCLAIMED_KEY,
                           description="Warns while a landing folder holds files no registry table claims")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        observe = multi_observable_source_asset(name="observe_unclaimed_landing_folders", specs=[spec], check_specs=[check],
                                                required_resource_keys={"lake"})

    @observe
    def _observe(context):
        from lake_assets.core.arrivals import unclaimed_folders

        lake: LakeResource = context.resources.lake
        folders = unclaimed_folders((e.key for e in lake.ledger.unrouted()), registry)
        metadata, warning = unclaimed_report(folders, lake.landing)
        yield ObserveResult(asset_key=UNCLAIMED_KEY, metadata=metadata, check_results=[
            AssetCheckResult(check_name=UNCLAIMED_CHECK, passed=warning is None, metadata=metadata,
                             severity=AssetCheckSeverity.WARN, description=warning)])

    return _observe
