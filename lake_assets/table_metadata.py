"""What the Dagster UI shows of a lake table: column schema with types, row count, the Iceberg
identifier, and a data version that changes only when the table's data does.

The same for every layer: source-aligned tables (definition from the registry, materializations from
the Iceberg table) and dbt models (materializations from the Iceberg table dbt wrote)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dagster import DataVersion, MetadataValue, TableColumn, TableColumnConstraints, TableSchema
from dagster._core.definitions.metadata import TableMetadataSet

from lake_assets.core.dbt_sources import column_description
from lake_assets.core.registry import TableConfig

if TYPE_CHECKING:
    from pyiceberg.table import Table
    from pyiceberg.table.snapshots import Snapshot

# The columns the merge adds to every source-aligned table (history mode: the last two as well),
# named as the CDC pipeline names them (core/cdc/batch.py, pipeline.py). Spelled here because
# importing the pipeline to describe a table costs 0.5 s of every definitions load (pyiceberg);
# tests/test_dagster_checks.py compares these with the pipeline's names and a merged table's schema.
SEQ, FILE = "_lake_seq", "_lake_file"
LAKE_OP, BATCH, INGESTED_AT, LAKE_ROW = "_lake_op", "_lake_batch_id", "_lake_ingested_at", "_lake_row"
LAKE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    (SEQ, "string", "Position of the change that wrote the row: full load or CDC, sequence_by value, file, file version "
                    "and row, compared element by element; a change not newer than this does not overwrite the row."),
    (LAKE_OP, "string", "Op of the change that wrote the row: I (insert or full load), U (update); D in history mode."),
    (BATCH, "string", "Merge batch that wrote the row (lake.batch-id in the Iceberg snapshot summary)."),
    (INGESTED_AT, "timestamptz", "When the merge wrote the row."),
)
HISTORY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    (FILE, "string", "Landing-zone key of the file the change came from."),
    (LAKE_ROW, "long", "Row of the change in that file."),
)
SCD2_FROM, SCD2_CURRENT = "_lake_from_seq", "_is_current"
SCD2_COLUMNS: tuple[tuple[str, str, str], ...] = (
    (SCD2_FROM, "string", "Position of the change that opened this version."),
    ("_lake_end_seq", "string", "Position of the change that closed it (the next version or a delete); null while current."),
    ("_valid_from", "sequence_by", "sequence_by value of the change that opened the version; null: since the first full load."),
    ("_valid_to", "sequence_by", "sequence_by value of the change that closed it; null while current. "
                                 "A point-in-time query: _valid_from <= t < _valid_to."),
    (SCD2_CURRENT, "boolean", "Whether this is the key's current version."),
)
_DECIMAL = re.compile(r"^decimal\((\d+),(\d+)\)$")


def iceberg_type_name(registry_type: str) -> str:
    """A registry type as Iceberg prints it (`decimal(12,2)` -> `decimal(12, 2)`), so the definition's
    columns and a materialization's read the same."""
    m = _DECIMAL.match(registry_type)
    return f"decimal({m.group(1)}, {m.group(2)})" if m else registry_type


def lake_columns(table: TableConfig) -> tuple[tuple[str, str, str], ...]:
    return LAKE_COLUMNS + _MODE_COLUMNS[table.mode]


def _constraints(table: TableConfig, name: str) -> TableColumnConstraints | None:
    return TableColumnConstraints(nullable=False) if name in table.primary_key else None


def _tags(table: TableConfig, name: str) -> dict[str, str] | None:
    return {"pii": ""} if name in table.pii else None


# The lake's columns as schema entries, built once: 3,000 tables share them.
_MODE_COLUMNS = {"current": (), "history": HISTORY_COLUMNS, "scd2": SCD2_COLUMNS}
_LAKE_TABLE_COLUMNS = {mode: tuple(TableColumn(name, typ, text) for name, typ, text in LAKE_COLUMNS + extra)
                       for mode, extra in _MODE_COLUMNS.items()}


def registry_column_schema(table: TableConfig) -> TableSchema | None:
    """The table's columns as the registry declares them, then the lake's own; None when the registry
    leaves the columns to the files (they show with the first materialization)."""
    if table.columns is None:
        return None
    return TableSchema(columns=[
        *(TableColumn(c.name, iceberg_type_name(c.type), column_description(table, c.name, c.description),
                      _constraints(table, c.name), _tags(table, c.name)) for c in table.columns if table.lands(c.name)),
        *_lake_table_columns(table),
    ])


def _lake_table_columns(table: TableConfig) -> tuple[TableColumn, ...]:
    if table.mode != "scd2":
        return _LAKE_TABLE_COLUMNS[table.mode]
    # _valid_from and _valid_to hold sequence_by values: the declared type of that column
    declared = {c.name: c.type for c in table.columns or ()}
    typ = iceberg_type_name(declared.get(table.sequence_by or "", "string"))
    return tuple(TableColumn(c.name, typ if c.type == "sequence_by" else c.type, c.description)
                 for c in _LAKE_TABLE_COLUMNS["scd2"])


def row_count(snapshot: Snapshot | None) -> int | None:
    """Rows of the table at a snapshot, from its summary (no scan): records minus position deletes."""
    if snapshot is None or snapshot.summary is None:
        return 0 if snapshot is None else None
    props = snapshot.summary.additional_properties
    if "total-records" not in props:
        return None
    return int(props["total-records"]) - int(props.get("total-position-deletes", 0))


def table_metadata(tbl: Table | None, identifier: str, *, descriptions: Mapping[str, str | None] | None = None,
                   table: TableConfig | None = None) -> dict[str, Any]:
    """Metadata of a materialization: the Iceberg table's columns with their types (and the
    registry's or dbt's descriptions), its row count, its identifier and current snapshot."""
    metadata: dict[str, Any] = dict(TableMetadataSet(table_name=identifier))
    if tbl is None:
        return metadata
    described = dict(descriptions or {})
    if table is not None:
        described |= {c.name: column_description(table, c.name, c.description) for c in table.columns or ()}
        described |= {name: text for name, _, text in lake_columns(table)}
    columns = [
        TableColumn(f.name, str(f.field_type), described.get(f.name),
                    _constraints(table, f.name) if table is not None else None,
                    _tags(table, f.name) if table is not None else None)
        for f in tbl.schema().fields
    ]
    snapshot = tbl.current_snapshot()
    metadata |= dict(TableMetadataSet(column_schema=TableSchema(columns=columns), row_count=row_count(snapshot)))
    if snapshot is not None:
        metadata["snapshot_id"] = MetadataValue.text(str(snapshot.snapshot_id))
    return metadata


def _changes_data(snapshot: Snapshot) -> bool:
    """Whether a snapshot changed the table's rows: maintenance rewrites files, never rows."""
    from lake_assets.core.maintenance import MAINTENANCE

    props = snapshot.summary.additional_properties if snapshot.summary else {}
    return MAINTENANCE not in props and any(int(props.get(k, 0)) for k in ("added-data-files", "deleted-data-files", "added-delete-files",
                                               "removed-delete-files"))


def data_version(tbl: Table | None) -> DataVersion:
    """The table's data version: the newest snapshot that changed its rows, and its schema. A merge
    that commits nothing (no pending files), or only ignored late changes, and maintenance
    (compaction, expiry) keep it, so nothing downstream is stale or rebuilt for them."""
    from lake_assets.core.cdc.iceberg import lake_snapshots

    if tbl is None:
        return DataVersion("empty")
    changed = next((s for s in lake_snapshots(tbl) if _changes_data(s)), None)
    return DataVersion(f"schema {tbl.metadata.current_schema_id} snapshot {changed.snapshot_id if changed else 'none'}")
