"""dbt-duckdb plugin that makes DuckDB a compute engine over the lake's Iceberg catalog.

On connect it loads DuckDB's Iceberg extension offline (from the duckdb-extension-* PyPI packages)
and exposes every table of the local pyiceberg catalog as a DuckDB view `<namespace>.<table>` over
`iceberg_scan(<current metadata>)`, so dbt sources and refs read the catalog, never a DuckDB file.
Its store step (called by the `iceberg_table` materialization) writes a model's rows into the
catalog as an Iceberg table `<schema>.<alias>`, replacing its contents in one commit, so DuckDB,
Spark and pyiceberg read the same kind of tables that Athena builds in production.
It also defines the `hash` mask's keyed HMAC (`register_hash_mask`): the key is read here, from the
lake's key file, so it never passes through dbt's compiled SQL, run results or logs.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from dbt.adapters.duckdb.plugins import BasePlugin
from dbt.adapters.duckdb.utils import TargetConfig
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
from pyiceberg.io.pyarrow import _pyarrow_to_schema_without_ids
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform, HourTransform, IdentityTransform, MonthTransform, YearTransform

from lake_assets.core.deployment import local_catalog  # one definition of the lake
from lake_assets.core.mask_key import MASKING_DATABASE, duckdb_hmac_macro_sql, local_mask_key
from lake_assets.core.settings import LakeSettings, resolve_home

EXTENSIONS = ("avro", "iceberg")
COMMIT_ATTEMPTS = 3
TRANSFORMS = {
    "identity": IdentityTransform,
    "year": YearTransform,
    "month": MonthTransform,
    "day": DayTransform,
    "hour": HourTransform,
}


def resolve_lake_home(configured: str | None = None) -> Path:
    """LAKE_HOME by the lake's one rule (lake_assets.core.settings.resolve_home)."""
    return resolve_home(configured or os.environ.get("LAKE_HOME"))


def lake_catalog(home: Path) -> Catalog:
    return local_catalog(home)


def load_iceberg_extension(conn: duckdb.DuckDBPyConnection, extension_dir: Path) -> None:
    """Load iceberg (and avro, which it needs) without the internet: `INSTALL iceberg` downloads."""
    import duckdb_extensions

    extension_dir.mkdir(parents=True, exist_ok=True)
    conn.execute(f"SET extension_directory = '{extension_dir}'")
    conn.execute("SET autoinstall_known_extensions = false")
    for name in EXTENSIONS:
        try:
            conn.execute(f"LOAD {name}")
        except duckdb.Error:
            duckdb_extensions.import_extension(name, force_install=True, con=conn)
            conn.execute(f"LOAD {name}")


def register_hash_mask(conn: duckdb.DuckDBPyConnection, key: bytes) -> None:
    """Define `lake_masking.main.hmac_sha256_hex(text)` (macros/masks.sql's DuckDB `hash` mask) on `conn`.

    The macro lives in an attached in-memory database of its own, so it is visible to every cursor
    dbt opens on this connection and is never persisted, even if the profile's `path` becomes a
    DuckDB file.
    """
    conn.execute(f"ATTACH IF NOT EXISTS ':memory:' AS {MASKING_DATABASE}")
    conn.execute(duckdb_hmac_macro_sql(key))


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def parse_partitioned_by(partitioned_by: list[str] | None) -> list[tuple[str, str]]:
    """`['month(created_at)', 'region']` (dbt-athena's Iceberg syntax) as (column, transform) pairs."""
    fields = []
    for expr in partitioned_by or []:
        expr = expr.strip()
        if "(" in expr:
            transform, column = expr.rstrip(")").split("(", 1)
            transform, column = transform.strip().lower(), column.strip()
        else:
            transform, column = "identity", expr
        if transform not in TRANSFORMS:
            raise ValueError(f"partitioned_by {expr!r}: transform must be one of {sorted(TRANSFORMS)}")
        fields.append((column, transform))
    return fields


def _spec_signature(spec: PartitionSpec, schema: Schema) -> list[tuple[str, str]]:
    return [(schema.find_column_name(f.source_id) or "", str(f.transform)) for f in spec.fields]


def write_table(
    catalog: Catalog,
    identifier: str,
    data: pa.Table,
    partitioned_by: list[str] | None = None,
    snapshot_properties: dict[str, str] | None = None,
) -> str:
    """Replace the contents of Iceberg table `identifier` with `data`; return the new metadata location.

    The table keeps its identity and history: a changed model schema is applied as a schema update
    in the same transaction as the overwrite, so readers never see a missing or half-written table.
    Only a changed partition spec recreates the table.
    """
    namespace = identifier.split(".")[0]
    catalog.create_namespace_if_not_exists(namespace)
    new_schema = _pyarrow_to_schema_without_ids(data.schema)
    props = snapshot_properties or {}
    try:
        table = catalog.load_table(identifier)
    except NoSuchTableError:
        table = None
    wanted_spec = parse_partitioned_by(partitioned_by)
    if table is not None:
        if _spec_signature(table.spec(), table.schema()) != wanted_spec:
            catalog.drop_table(identifier)
            table = None
    if table is None:
        table = catalog.create_table(identifier, schema=new_schema)
        if wanted_spec:
            with table.update_spec() as update:
                for column, transform in wanted_spec:
                    name = column if transform == "identity" else f"{column}_{transform}"
                    update.add_field(column, TRANSFORMS[transform](), name)
        table.append(data, snapshot_properties=props)
        return table.metadata_location

    current = table.schema()
    if [(f.name, f.field_type) for f in current.fields] == [(f.name, f.field_type) for f in new_schema.fields]:
        table.overwrite(data, snapshot_properties=props)
        return table.metadata_location
    with table.transaction() as tx:
        wanted = {f.name: f.field_type for f in new_schema.fields}
        kept = set()
        with tx.update_schema(allow_incompatible_changes=True) as update:
            for f in current.fields:
                if wanted.get(f.name) == f.field_type:
                    kept.add(f.name)
                else:
                    update.delete_column(f.name)
            for f in new_schema.fields:
                if f.name not in kept:
                    update.add_column(f.name, f.field_type)
        names = [f.name for f in new_schema.fields]
        with tx.update_schema() as update:
            update.move_first(names[0])
            for previous, name in zip(names, names[1:]):
                update.move_after(name, previous)
        tx.overwrite(data, snapshot_properties=props)
    return table.metadata_location


class Plugin(BasePlugin):
    """Profile config: `lake_home` (default: $LAKE_HOME, else <repo>/.lake) and `extension_dir`."""

    def initialize(self, plugin_config: dict[str, Any]) -> None:
        self.lake_home = resolve_lake_home(plugin_config.get("lake_home"))
        self.extension_dir = Path(plugin_config.get("extension_dir") or self.lake_home / "duckdb_extensions")
        self._catalog: Catalog | None = None
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = lake_catalog(self.lake_home)
        return self._catalog

    def configure_connection(self, conn: duckdb.DuckDBPyConnection) -> None:
        self._conn = conn
        load_iceberg_extension(conn, self.extension_dir)
        register_hash_mask(conn, local_mask_key(LakeSettings.local(self.lake_home).mask_key_file))
        for namespace in self.catalog.list_namespaces():
            ns = ".".join(namespace)
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(ns)}")
            for _, name in self.catalog.list_tables(ns):
                try:
                    table = self.catalog.load_table(f"{ns}.{name}")
                    self._register_view(conn, ns, name, table.metadata_location)
                except Exception as e:  # noqa: BLE001 - one unreadable table must not stop models that do not read it
                    # stderr reaches the dbt console and Dagster's run log; a model reading this
                    # view fails (on its columns, or on this error() for `select *`).
                    print(f"lake_iceberg: WARNING: Iceberg table {ns}.{name} is unreadable: {e}", file=sys.stderr)
                    message = sql_string(f"lake_iceberg: Iceberg table {ns}.{name} is unreadable: {e}")
                    conn.execute(f"CREATE OR REPLACE VIEW {quote(ns)}.{quote(name)} AS SELECT error({message}) AS unreadable")

    @staticmethod
    def _register_view(conn: duckdb.DuckDBPyConnection, namespace: str, name: str, metadata_location: str) -> None:
        conn.execute(
            f"CREATE OR REPLACE VIEW {quote(namespace)}.{quote(name)} AS "
            f"SELECT * FROM iceberg_scan({sql_string(metadata_location)})"
        )

    def store(self, target_config: TargetConfig) -> None:
        """Write the rows of the build relation (`location.path`) to Iceberg `<schema>.<identifier>`."""
        if self._conn is None:
            raise RuntimeError("lake_iceberg: store called before the DuckDB connection was configured")
        relation, location = target_config.relation, target_config.location
        namespace, name = relation.schema, relation.identifier
        if location is None or not namespace or not name:
            raise RuntimeError(f"lake_iceberg: store needs a relation with schema and identifier, and a location: {relation}")
        options = target_config.config if isinstance(target_config.config, dict) else {}
        cursor = self._conn.cursor()
        try:
            data = cursor.execute(f"SELECT * FROM {location.path}").fetch_arrow_table()
            snapshot_properties = {
                k: str(v) for k, v in (options.get("snapshot_properties") or {}).items() if v is not None
            }
            # The lock keeps this process's SQLite catalog commits sequential. pyiceberg 0.12 does not
            # retry a commit that lost a race with another process; replacing the whole contents is
            # idempotent, so the write is simply redone on the new table state.
            with self._lock:
                for attempt in range(1, COMMIT_ATTEMPTS + 1):
                    try:
                        metadata_location = write_table(
                            self.catalog,
                            f"{namespace}.{name}",
                            data,
                            partitioned_by=options.get("partitioned_by"),
                            snapshot_properties=snapshot_properties,
                        )
                        break
                    except CommitFailedException:
                        if attempt == COMMIT_ATTEMPTS:
                            raise
            cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(namespace)}")
            self._register_view(cursor, namespace, name, metadata_location)
        finally:
            cursor.close()
