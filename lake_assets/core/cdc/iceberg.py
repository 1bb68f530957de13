"""Iceberg tables of the lake: creation from the registry, schema evolution, and batch bookkeeping.

Each merge commit carries its batch id and file list in the snapshot summary; that summary is the
truth the ledger is reconciled against after a crash.
"""

from __future__ import annotations

import json
from typing import Iterable

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError, TableAlreadyExistsError
from pyiceberg.io.pyarrow import _ConvertToIcebergWithoutIDs, visit_pyarrow
from pyiceberg.table import Table
from pyiceberg.transforms import parse_transform
from pyiceberg.types import DecimalType, DoubleType, FloatType, IntegerType, LongType

from lake_assets.core.registry import TableConfig

BATCH_ID = "lake.batch-id"
FILES = "lake.files"
LOAD_MAX = "lake.load-max"

COPY_ON_WRITE = {
    "format-version": "2",
    "write.delete.mode": "copy-on-write",
    "write.update.mode": "copy-on-write",
    "write.merge.mode": "copy-on-write",
}


class SchemaDriftError(ValueError):
    """A source column changed in a way the table cannot absorb; the batch fails, files stay landed."""


def ensure_namespace(catalog: Catalog, namespace: str) -> None:
    try:
        catalog.create_namespace(namespace)
    except NamespaceAlreadyExistsError:
        pass


def load_or_create(
    catalog: Catalog,
    identifier: str,
    schema: pa.Schema,
    *,
    partition_by: Iterable = (),
    properties: dict[str, str] | None = None,
) -> Table:
    try:
        return catalog.load_table(identifier)
    except NoSuchTableError:
        pass
    ensure_namespace(catalog, identifier.split(".")[0])
    try:
        tbl = catalog.create_table(identifier, schema=schema, properties={**COPY_ON_WRITE, **(properties or {})})
    except TableAlreadyExistsError:
        return catalog.load_table(identifier)
    fields = list(partition_by)
    if fields:
        with tbl.update_spec() as spec:
            for p in fields:
                spec.add_field(p.column, parse_transform(p.transform), f"{p.column}_{p.transform.split('[')[0]}")
    return tbl


def table_properties(table: TableConfig) -> dict[str, str]:
    return {
        "lake.source": table.source,
        "lake.primary-key": ",".join(table.primary_key),
        "lake.mode": table.mode,
        "lake.registry-file": table.config_file,
    }


def committed_batches(tbl: Table) -> dict[str, dict[str, str]]:
    """batch id -> snapshot summary, for every snapshot the lake committed."""
    out = {}
    for snap in tbl.metadata.snapshots:
        props = snap.summary.additional_properties if snap.summary else {}
        if BATCH_ID in props:
            out[props[BATCH_ID]] = dict(props) | {"snapshot-id": str(snap.snapshot_id)}
    return out


def current_load_max(tbl: Table) -> int:
    """Highest full-load file number of the table's current load, from the newest lake commit.

    Walks back past commits the lake did not make (compaction, maintenance), which carry no lake
    properties; otherwise a later reload would be taken for a continuation and keep old rows.
    """
    snap = tbl.current_snapshot()
    while snap is not None:
        props = snap.summary.additional_properties if snap.summary else {}
        if LOAD_MAX in props:
            return int(props[LOAD_MAX])
        snap = tbl.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
    return -1


def batch_summary(batch_id: str, files: list[str], load_max: int, counts: dict[str, int]) -> dict[str, str]:
    return {
        BATCH_ID: batch_id,
        FILES: json.dumps(files),
        LOAD_MAX: str(load_max),
        **{f"lake.{k}": str(v) for k, v in counts.items()},
    }


def _iceberg_fields(schema: pa.Schema) -> dict[str, object]:
    converted = visit_pyarrow(schema, _ConvertToIcebergWithoutIDs())
    return {f.name: f.field_type for f in converted.fields}


def _widens(old, new) -> bool:
    if isinstance(old, IntegerType) and isinstance(new, LongType):
        return True
    if isinstance(old, FloatType) and isinstance(new, DoubleType):
        return True
    if isinstance(old, DecimalType) and isinstance(new, DecimalType):
        return new.scale == old.scale and new.precision > old.precision
    return False


def evolve_schema(txn, identifier: str, batch_schema: pa.Schema, files: list[str]) -> list[str]:
    """Add new columns and apply safe widenings inside the merge's transaction.

    Returns the changes made (for metadata). Raises SchemaDriftError naming table, column and files.
    """
    current = {f.name: f.field_type for f in txn.table_metadata.schema().fields}
    incoming = _iceberg_fields(batch_schema)
    changes: list[str] = []
    update = None
    for name, new_type in incoming.items():
        old = current.get(name)
        if old is None:
            update = update or txn.update_schema()
            update.add_column(name, new_type)
            changes.append(f"added column {name} {new_type}")
        elif old == new_type or _widens(new_type, old):
            continue  # same, or the batch is narrower than the table: values are cast up on write
        elif _widens(old, new_type):
            update = update or txn.update_schema()
            update.update_column(name, field_type=new_type)
            changes.append(f"widened column {name} {old} -> {new_type}")
        else:
            shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
            raise SchemaDriftError(
                f"table {identifier}: column {name} is {old} in the table but {new_type} in {shown}; "
                "only int->long, float->double and decimal precision increases are applied automatically"
            )
    if update is not None:
        update.commit()
    return changes


def arrow_schema_of(tbl_or_txn) -> pa.Schema:
    meta = tbl_or_txn.table_metadata if hasattr(tbl_or_txn, "table_metadata") else tbl_or_txn.metadata
    return meta.schema().as_arrow()


def conform(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """Order, fill and cast columns to the table's Arrow schema."""
    cols = []
    for f in schema:
        if f.name in data.column_names:
            col = data.column(f.name)
            cols.append(col if col.type == f.type else col.cast(f.type))
        else:
            cols.append(pa.nulls(data.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)

