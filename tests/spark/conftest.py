"""Local Spark for the Spark engine's tests: one session per test module over a module catalog.

Each test (and each hypothesis example) uses its own source name, so tables never collide while the
session, the slowest thing to start, is shared.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyiceberg.catalog.sql import SqlCatalog

from lake_assets.core.cdc.batch import LandedInput
from lake_assets.core.cdc.dms import parse_landing_key
from lake_assets.core.deployment import local_catalog
from lake_assets.core.ledger import LandedFile
from lake_assets.core.registry import ColumnSpec, CsvOptions, PartitionField, TableConfig
from lake_assets.core.spark.conf import build_session, catalog_settings_of, local_spark_conf

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
_names = itertools.count(1)


def unique_source(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


def sql_catalog(home: Path) -> SqlCatalog:
    (home / "warehouse").mkdir(parents=True, exist_ok=True)
    return local_catalog(home)


def make_table(
    source: str,
    name: str = "items",
    *,
    columns: list[tuple[str, str]] | None,
    primary_key: tuple[str, ...] = ("id",),
    mode: str = "current",
    sequence_by: str | None = None,
    partition_by: tuple[tuple[str, str], ...] = (),
    fmt: str = "parquet",
    csv: CsvOptions | None = None,
    schema: str = "app",
    write: str = "auto",
) -> TableConfig:
    return TableConfig(
        source=source, name=name, schema=schema, source_table=name, primary_key=primary_key, sequence_by=sequence_by,
        columns=tuple(ColumnSpec(name=c, type=t) for c, t in columns) if columns is not None else None,
        partition_by=tuple(PartitionField(column=c, transform=t) for c, t in partition_by), pii=(), format=fmt,
        csv=csv or CsvOptions(), mode=mode, engine="spark", write=write, refresh="on_arrival", tombstone_retention_days=7,
        quarantine_max_rate=0.5, owners=(), description=None, config_file="<test>",
    )


def landed(landing: Path, paths: list[Path], versions: dict[Path, int] | None = None) -> list[LandedInput]:
    """Files as the exactly-once runner hands them to an engine, with their file versions (default 1)."""
    versions = versions or {}
    return [LandedInput(parse_landing_key(p.relative_to(landing).as_posix()), p.read_bytes(), versions.get(p, 1)) for p in paths]


def record_landed(zone, ledger, tables) -> None:
    """Record every file of a landing zone in the ledger, routed to its table (what the sensor does)."""
    routes = {(t.source, t.schema, t.source_table): t.identifier for t in tables}
    files = []
    for o in zone.list():
        f = parse_landing_key(o.key)
        files.append(LandedFile(o.key, zone.checksum(o.key), o.size, o.version, routes.get((f.source, f.schema, f.table))))
    ledger.record(files)


def table_rows(catalog, identifier: str, order_by: list[str]) -> list[dict]:
    t = catalog.load_table(identifier).scan().to_arrow()
    return sorted(t.to_pylist(), key=lambda r: tuple((r[c] is None, r[c]) for c in order_by))


@dataclass
class SparkLake:
    """The module's Spark session and the catalog it writes (catalog name `lake`)."""

    home: Path
    catalog: SqlCatalog
    spark: object


@pytest.fixture(scope="module")
def spark_lake(tmp_path_factory) -> SparkLake:
    home = tmp_path_factory.mktemp("spark_lake")
    catalog = sql_catalog(home)
    conf = local_spark_conf(catalog_settings_of(catalog), master="local[2]", driver_memory="1g", shuffle_partitions=2)
    conf["spark.sql.warehouse.dir"] = str(home / "spark-warehouse")
    spark = build_session(conf, app_name="lake-spark-tests")
    yield SparkLake(home, catalog, spark)
    spark.stop()
