"""Which reader a table's landed files go through, decided once from the registry's `format` and
`load`: AWS DMS files (`dms`), Debezium change events (`debezium`), file drops (`drops`), event
streams (`events`). Each reader turns one file into the same typed change rows; everything after
that is the one pipeline. A SQL extract (`sql`) is a Parquet file of rows, read as a file drop
(extracts.py names them)."""

from __future__ import annotations

from lake_assets.core.cdc import debezium, drops, events
from lake_assets.core.cdc.dms import FileChanges, LandingKeyError, SourceFile, parse_landing_key, read_dms_file
from lake_assets.core.cdc.extracts import parse_extract_name
from lake_assets.core.registry import TableConfig


def parse_table_key(key: str, table: TableConfig) -> SourceFile:
    """The file a key names, by the rules of its table's format; LandingKeyError when it is not one."""
    if table.format == "debezium":
        return debezium.parse_key(key)
    if table.load == "events":
        return events.parse_key(key)
    if table.format == "sql":
        f = drops.parse_key(key, table.format)
        if f.extension != ".parquet" or parse_extract_name(f.base) is None:
            raise LandingKeyError(f"{key}: a sql table's folder holds only the lake's extracts "
                                  "(<8-digit number>-delta.parquet or -full.parquet)")
        return f
    if table.load != "cdc":
        return drops.parse_key(key, table.format)
    return parse_landing_key(key)


def read_file(f: SourceFile, data: bytes, table: TableConfig) -> FileChanges:
    """One landed file's typed change rows (bad rows set aside); FileReadError when it cannot be read."""
    if table.format == "debezium":
        return debezium.read_debezium_file(f, data, table)
    if table.load == "events":
        return events.read_events_file(f, data, table)
    if table.load != "cdc":
        return drops.read_drop_file(f, data, table)
    return read_dms_file(f, data, table)
