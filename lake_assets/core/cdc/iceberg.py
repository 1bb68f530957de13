"""Iceberg tables of the lake: creation from the registry, the definition a table was built with,
schema evolution, and batch bookkeeping.

Each merge commit carries its batch id, file list and counts in the snapshot summary; that summary
is the truth the ledger is reconciled against after a crash. A table records in its properties the
registry definition it was built with (primary key, mode, partition spec, sequence_by and its
kind); a registry that disagrees is refused until an explicit rebuild.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError, TableAlreadyExistsError
from pyiceberg.io.pyarrow import _pyarrow_to_schema_without_ids
from pyiceberg.table import Table, Transaction
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.transforms import IdentityTransform, parse_transform
from pyiceberg.types import DecimalType, DoubleType, FloatType, IcebergType, IntegerType, LongType

from lake_assets.core.registry import TableConfig

BATCH_ID = "lake.batch-id"
FILES = "lake.files"

# The registry definition a table was built with (table properties, set when it is created).
PRIMARY_KEY, MODE, PARTITION_SPEC = "lake.primary-key", "lake.mode", "lake.partition-spec"
SEQUENCE_BY, SEQUENCE_KIND = "lake.sequence-by", "lake.sequence-kind"
POSITION_FORMAT = "lake.position-format"
POSITION_FORMAT_VERSION = "2"  # `_lake_seq` as cdc/position.py writes it

COPY_ON_WRITE = {
    "format-version": "2",
    "write.delete.mode": "copy-on-write",
    "write.update.mode": "copy-on-write",
    "write.merge.mode": "copy-on-write",
}
TARGET_FILE_SIZE = str(128 * 1024 * 1024)  # bounded data files: what one rewrite holds in memory


def write_properties(table: TableConfig) -> dict[str, str]:
    """How engines remove replaced rows, as Iceberg table properties (Spark's MERGE reads them; the
    in-process engine reads the registry's `write`, choosing per file under `auto`)."""
    mode = "merge-on-read" if table.write in ("merge_on_read", "auto") else "copy-on-write"
    return {"write.delete.mode": mode, "write.update.mode": mode, "write.merge.mode": mode}


def ensure_write_properties(tbl: Table, table: TableConfig) -> Table:
    """Follow a change of the registry's `write` (a metadata-only commit; it changes no row)."""
    wanted = write_properties(table)
    if all(tbl.properties.get(k) == v for k, v in wanted.items()):
        return tbl
    txn = tbl.transaction()
    txn.set_properties(wanted)
    return txn.commit_transaction()


class SchemaDriftError(ValueError):
    """A source column changed in a way the table cannot absorb; the batch fails, files stay landed."""


class TableDefinitionError(ValueError):
    """The registry and the Iceberg table disagree on what the table is (primary key, mode,
    partitioning, ordering); nothing is merged until the table is rebuilt from its landed files."""


def ensure_namespace(catalog: Catalog, namespace: str) -> None:
    try:
        catalog.create_namespace(namespace)
    except NamespaceAlreadyExistsError:
        pass


def load_table(catalog: Catalog, identifier: str) -> Table | None:
    try:
        return catalog.load_table(identifier)
    except NoSuchTableError:
        return None


def load_or_create(catalog: Catalog, identifier: str, schema: pa.Schema, *, properties: dict[str, str] | None = None) -> Table:
    """The lake's own sidecar tables (unpartitioned, created on first use)."""
    tbl = load_table(catalog, identifier)
    if tbl is not None:
        return tbl
    ensure_namespace(catalog, identifier.split(".")[0])
    try:
        return catalog.create_table(identifier, schema=schema, properties={**COPY_ON_WRITE, **(properties or {})})
    except TableAlreadyExistsError:
        return catalog.load_table(identifier)


@dataclass(frozen=True)
class TableDefinition:
    """What a source-aligned table is, as far as its rows' meaning goes."""

    primary_key: str
    mode: str
    partition_spec: str
    sequence_by: str

    @classmethod
    def of(cls, table: TableConfig) -> TableDefinition:
        return cls(
            primary_key=",".join(table.primary_key),
            mode=table.mode,
            partition_spec=",".join(f"{p.column}:{p.transform}" for p in table.partition_by),
            sequence_by=table.sequence_by or "",
        )

    @classmethod
    def built(cls, tbl: Table) -> TableDefinition:
        p = tbl.properties
        return cls(p.get(PRIMARY_KEY, ""), p.get(MODE, ""), p.get(PARTITION_SPEC, ""), p.get(SEQUENCE_BY, ""))

    def properties(self) -> dict[str, str]:
        return {PRIMARY_KEY: self.primary_key, MODE: self.mode, PARTITION_SPEC: self.partition_spec, SEQUENCE_BY: self.sequence_by}

    def describe(self) -> str:
        return (f"primary_key [{self.primary_key}], mode {self.mode}, partition_by [{self.partition_spec or 'none'}], "
                f"sequence_by {self.sequence_by or '(none)'}")


def check_definition(tbl: Table, table: TableConfig) -> None:
    """Refuse to merge into a table built with another definition than the registry's."""
    fmt = tbl.properties.get(POSITION_FORMAT)
    if fmt != POSITION_FORMAT_VERSION:
        raise TableDefinitionError(
            f"table {table.identifier} was built by an older version of the lake (change positions format "
            f"{fmt or '1'}, this version writes {POSITION_FORMAT_VERSION}); rebuild it from its landed files: "
            f"python -m lake_assets.ingest --rebuild {table.identifier}"
        )
    want, have = TableDefinition.of(table), TableDefinition.built(tbl)
    if want != have:
        raise TableDefinitionError(
            f"table {table.identifier}: the registry ({table.config_file}) declares {want.describe()}, "
            f"but the Iceberg table was built with {have.describe()}; nothing is merged until it is rebuilt "
            f"from its landed files: python -m lake_assets.ingest --rebuild {table.identifier}"
        )


def table_sequence_kind(tbl: Table) -> str | None:
    return tbl.properties.get(SEQUENCE_KIND) or None


def create_source_table(
    catalog: Catalog, table: TableConfig, schema: pa.Schema, *, sequence_kind: str | None, files: list[str]
) -> Table:
    """Create a source-aligned table with its partition spec and definition in one commit."""
    columns = set(schema.names)
    missing = [p.column for p in table.partition_by if p.column not in columns]
    if missing:  # the files do not fit the declared table: the batch fails, the files stay retryable
        raise SchemaDriftError(
            f"table {table.identifier}: partition_by column(s) {missing} ({table.config_file}) are not in the "
            f"files ({_shown_files(files)}), so the table cannot be created partitioned as declared"
        )
    ensure_namespace(catalog, table.source)
    properties = {
        "format-version": "2",
        **write_properties(table),
        "write.target-file-size-bytes": TARGET_FILE_SIZE,
        **TableDefinition.of(table).properties(),
        SEQUENCE_KIND: sequence_kind or "",
        POSITION_FORMAT: POSITION_FORMAT_VERSION,
        "lake.source": table.source,
        "lake.registry-file": table.config_file,
    }
    try:
        txn = catalog.create_table_transaction(table.identifier, schema=schema, properties=properties)
    except TableAlreadyExistsError:
        return catalog.load_table(table.identifier)
    if table.partition_by:
        with txn.update_spec() as spec:
            for p in table.partition_by:
                spec.add_field(p.column, parse_transform(p.transform), f"{p.column}_{p.transform.split('[')[0]}")
    if table.mode in ("current", "scd2"):  # rows sorted by key within each file: narrow key ranges to prune merges on
        with txn.update_sort_order() as order:
            for k in table.primary_key:
                order.asc(k, IdentityTransform())
    try:
        return txn.commit_transaction()
    except TableAlreadyExistsError:  # another process created it first
        return catalog.load_table(table.identifier)


def _shown_files(files: list[str]) -> str:
    return ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")


def lake_snapshots(tbl: Table) -> Iterator[Snapshot]:
    """The table's snapshots from the current one back through its parents, newest first."""
    snap = tbl.current_snapshot()
    while snap is not None:
        yield snap
        snap = tbl.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None


def committed_batches(tbl: Table) -> dict[str, dict[str, str]]:
    """batch id -> snapshot summary, for every snapshot the lake committed."""
    out = {}
    for snap in tbl.metadata.snapshots:
        props = snap.summary.additional_properties if snap.summary else {}
        if BATCH_ID in props:
            out[props[BATCH_ID]] = dict(props) | {"snapshot-id": str(snap.snapshot_id)}
    return out


def batch_summary(batch_id: str, files: list[str], counts: dict[str, int], extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        BATCH_ID: batch_id,
        FILES: json.dumps(files),
        **{f"lake.{k}": str(v) for k, v in counts.items()},
        **(extra or {}),
    }


def _iceberg_fields(schema: pa.Schema) -> dict[str, IcebergType]:
    return {f.name: f.field_type for f in _pyarrow_to_schema_without_ids(schema).fields}


def _widens(old: IcebergType, new: IcebergType) -> bool:
    if isinstance(old, IntegerType) and isinstance(new, LongType):
        return True
    if isinstance(old, FloatType) and isinstance(new, DoubleType):
        return True
    if isinstance(old, DecimalType) and isinstance(new, DecimalType):
        return new.scale == old.scale and new.precision > old.precision
    return False


@dataclass(frozen=True)
class SchemaEvolution:
    """The columns a batch adds to its table and the widenings it needs, decided before anything is
    written (incompatible changes raise SchemaDriftError) and applied inside the engine's commit."""

    additions: tuple[tuple[str, IcebergType], ...]
    widenings: tuple[tuple[str, IcebergType], ...]
    changes: tuple[str, ...]

    def apply(self, txn: Transaction) -> None:
        if not self.additions and not self.widenings:
            return
        with txn.update_schema() as update:
            for name, t in self.additions:
                update.add_column(name, t)
            for name, t in self.widenings:
                update.update_column(name, field_type=t)


def plan_evolution(tbl: Table, identifier: str, batch_schema: pa.Schema, files: list[str]) -> SchemaEvolution:
    """New columns and safe widenings; raises SchemaDriftError naming table, column and files."""
    current = {f.name: f.field_type for f in tbl.schema().fields}
    incoming = _iceberg_fields(batch_schema)
    additions, widenings, changes = [], [], []
    for name, new_type in incoming.items():
        old = current.get(name)
        if old is None:
            additions.append((name, new_type))
            changes.append(f"added column {name} {new_type}")
        elif old == new_type or _widens(new_type, old):
            continue  # same, or the batch is narrower than the table: values are cast up on write
        elif _widens(old, new_type):
            widenings.append((name, new_type))
            changes.append(f"widened column {name} {old} -> {new_type}")
        else:
            raise SchemaDriftError(
                f"table {identifier}: column {name} is {old} in the table but {new_type} in "
                f"{_shown_files(files)}; only int->long, float->double and decimal precision increases are applied automatically"
            )
    return SchemaEvolution(tuple(additions), tuple(widenings), tuple(changes))


def arrow_schema_of(tbl_or_txn: Table | Transaction) -> pa.Schema:
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
