"""Fixtures for the dbt layer tests: a temporary LAKE_HOME whose catalog holds the source-aligned
travel tables, built once per session with `dbt build --target local` exactly as a developer runs it."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from lake_assets.core.settings import LakeSettings

from dbt_lake_fixture import create_source_tables, lake_catalog, run_dbt


@dataclass
class BuiltLake:
    home: Path
    source_rows: dict[str, list[dict]]
    build: subprocess.CompletedProcess
    target: Path  # dbt's target and log directory of the build

    @property
    def catalog(self):
        return lake_catalog(self.home)

    def rows(self, identifier: str) -> list[dict]:
        return self.catalog.load_table(identifier).scan().to_arrow().to_pylist()

    @property
    def mask_key(self) -> bytes:
        """The `hash` mask key the dbt plugin generated into this lake (what only the lake holds)."""
        return LakeSettings.local(self.home).mask_key_file.read_bytes()

    def column_names(self, identifier: str) -> list[str]:
        return [f.name for f in self.catalog.load_table(identifier).schema().fields]


@pytest.fixture(scope="session")
def built_lake(tmp_path_factory) -> BuiltLake:
    home = tmp_path_factory.mktemp("lake")
    rows = create_source_tables(home)
    # Not asserted here: a failing dbt test must not hide what the Python leak tests find in the
    # tables that were built; test_dbt_build_succeeds reports the build itself.
    target = tmp_path_factory.mktemp("dbt_target")
    result = run_dbt(["build", "--target", "local"], lake_home=home, target_path=target)
    return BuiltLake(home=home, source_rows=rows, build=result, target=target)


@pytest.fixture(scope="session")
def iceberg_duckdb(built_lake) -> duckdb.DuckDBPyConnection:
    """A plain DuckDB connection with the Iceberg extension loaded offline, outside dbt."""
    import duckdb_extensions

    conn = duckdb.connect()
    conn.execute(f"SET extension_directory = '{built_lake.home / 'test_duckdb_extensions'}'")
    for name in ("avro", "iceberg"):
        duckdb_extensions.import_extension(name, con=conn)
        conn.execute(f"LOAD {name}")
    yield conn
    conn.close()
