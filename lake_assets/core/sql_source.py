"""Extracts of `format: sql` tables from their PostgreSQL database (ADBC: rows arrive as Arrow),
landed as Parquet files that the ledger records and the normal merge takes (cdc/extracts.py).

Where an extract starts is derived from what the ledger recorded: the table's highest-numbered
extract file carries its watermark range. The file is written whole, then recorded; only the
record advances the watermark. A crash after the write and before the record leaves a landed,
unrecorded file: the next run records that file instead of extracting again. A crash after the
record leaves a pending file: the merge takes it, and the next extract starts after it. So a
crash neither skips nor repeats a change.

Watermark ranges are half-open, `low <= watermark < high`, and consecutive: each row version is
read by exactly one delta, no dedupe needed. `high` is fixed before the rows are read: the
database clock minus `lag` for a timestamp or date watermark, the largest value plus one for an
integer one. A row that becomes visible after its range was read with a value below `high` (a
transaction that stamped `updated_at` and committed more than `lag` later; an id allocated by a
sequence and committed after a higher one; a row whose watermark is null) is missed by the deltas
and caught by the next full extract, which is diffed against the lake table and also deletes the
rows the source deleted. A full extract reads every row, so the delta after it re-reads up to
`lag` of rows; they upsert the values the table already holds.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from lake_assets.core.cdc.extracts import (
    DELTA,
    FULL,
    ExtractInfo,
    extract_file,
    extract_name,
    parse_extract_name,
    read_extract_info,
)
from lake_assets.core.landing import LandingZone, ListedObject
from lake_assets.core.ledger import FileLedger, LandedFile
from lake_assets.core.registry import ExtractSpec, TableConfig, parse_duration

INTEGER_TYPES = ("int2", "int4", "int8")
TIME_TYPES = ("timestamp", "timestamptz", "date")
_PG_TYPE = b"POSTGRESQL:type"


class ExtractError(RuntimeError):
    """An extract that cannot run; the message names the table and the registry field at fault."""


@dataclass(frozen=True)
class ExtractResult:
    table: str
    key: str  # the landed file
    info: ExtractInfo
    reused: bool = False  # a file a crashed run had written and not recorded: recorded now, not extracted again


def _no_failpoint(name: str) -> None:
    return None


def extract_table(
    table: TableConfig, *, ledger: FileLedger, landing: LandingZone, full: bool = False,
    now: dt.datetime | None = None, connect: Callable[[str], Any] | None = None,
    failpoint: Callable[[str], None] = _no_failpoint, lock_wait_seconds: float = 30.0,
) -> ExtractResult:
    """Extract `table` once (a delta, or a full extract when due or `full`), land and record the file.

    Holds the table's lock (the merge's) so two extracts of one table never number the same file."""
    if table.format != "sql" or table.extract is None or table.connection is None:
        raise ExtractError(f"{table.identifier}: not a format sql table ({table.config_file})")
    with ledger.lock_table(table.identifier, wait_seconds=lock_wait_seconds):
        last, unrecorded = _state(table, ledger, landing)
        if unrecorded is not None:  # written by a run that crashed before recording it
            info = read_extract_info(unrecorded.key, landing.read(unrecorded.key))
            _record(table, ledger, landing, unrecorded)
            return ExtractResult(table.identifier, unrecorded.key, info, reused=True)
        now = now or dt.datetime.now(dt.UTC)
        kind = FULL if full or _full_due(table.extract, last, now) else DELTA
        number = (last.number if last else 0) + 1
        rows, info = _read_source(table, last, kind, number, now, connect)
        key = f"{table.landing_prefix}{extract_name(number, kind)}.parquet"
        written = landing.write(key, extract_file(rows, info))
        failpoint("after_extract_write")
        _record(table, ledger, landing, written)
        failpoint("after_extract_record")
        return ExtractResult(table.identifier, key, info)


def _state(table: TableConfig, ledger: FileLedger, landing: LandingZone) -> tuple[ExtractInfo | None, ListedObject | None]:
    """(the newest recorded extract, a newer extract file landed but not recorded)."""
    recorded = {e.key for e in ledger.entries(table.identifier)}
    numbered: dict[int, str] = {}
    for key in recorded:
        parsed = _extract_number(table, key)
        if parsed is not None:
            numbered[parsed] = key
    last = None
    if numbered:
        key = numbered[max(numbered)]
        last = read_extract_info(key, landing.read(key))
    unrecorded = [o for o in landing.list(table.landing_prefix)
                  if o.key not in recorded and (_extract_number(table, o.key) or 0) > (last.number if last else 0)]
    return last, (min(unrecorded, key=lambda o: o.key) if unrecorded else None)


def _extract_number(table: TableConfig, key: str) -> int | None:
    name = key.removeprefix(table.landing_prefix)
    if "/" in name or not name.endswith(".parquet"):
        return None
    parsed = parse_extract_name(name.removesuffix(".parquet"))
    return parsed[0] if parsed else None


def _record(table: TableConfig, ledger: FileLedger, landing: LandingZone, obj: ListedObject) -> None:
    ledger.record([LandedFile(obj.key, landing.checksum(obj.key), obj.size, obj.version, table.identifier, dedupe=False)])


def _full_due(spec: ExtractSpec, last: ExtractInfo | None, now: dt.datetime) -> bool:
    if last is None:
        return True  # the first extract is the whole table
    if spec.full_every_extracts is not None:
        return last.number + 1 - last.last_full_number >= spec.full_every_extracts
    every = spec.full_every_duration
    assert every is not None
    return now - dt.datetime.fromisoformat(last.last_full_at) >= every


def _quote(name: str) -> str:
    return name if name.startswith('"') else '"' + name.replace('"', '""') + '"'


def relation(table: TableConfig) -> str:
    """What the extract selects from: the query as a subquery, or the (schema-qualified) table."""
    spec = table.extract
    assert spec is not None
    if spec.query is not None:
        return f"({spec.query}) AS extract_query"
    name = spec.table or f"{table.schema}.{table.source_table}"
    return ".".join(_quote(p) for p in name.split("."))


def _scrub(message: str, dsn: str) -> str:
    """A driver's message without the DSN or a password in it: neither may reach a log."""
    message = message.replace(dsn, "<dsn>")
    message = re.sub(r"(password\s*=\s*)\S+", r"\1***", message, flags=re.IGNORECASE)
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", message)


def _connect(table: TableConfig, connect: Callable[[str], Any] | None) -> tuple[Any, str]:
    assert table.connection is not None
    name = table.connection.dsn_env
    dsn = os.environ.get(name)
    if not dsn:
        raise ExtractError(f"{table.identifier}: field connection.dsn_env: environment variable {name} is not set; it holds "
                           f"the DSN of source {table.source}'s database ({table.config_file})")
    if connect is None:
        import adbc_driver_postgresql.dbapi as pg  # a run's import, not the definitions'

        connect = pg.connect
    try:
        return connect(dsn), dsn
    except Exception as e:  # noqa: BLE001 - whatever the driver raises, said without the DSN
        raise ExtractError(f"{table.identifier}: cannot connect to source {table.source}'s database (field connection.dsn_env: "
                           f"{name}): {_scrub(str(e), dsn).strip()}") from None


def _read_source(table: TableConfig, last: ExtractInfo | None, kind: str, number: int, now: dt.datetime,
                 connect: Callable[[str], Any] | None) -> tuple[pa.Table, ExtractInfo]:
    spec = table.extract
    assert spec is not None
    conn, dsn = _connect(table, connect)
    rel = relation(table)
    try:
        cur = conn.cursor()
        cur.execute("SET TimeZone = 'UTC'")
        try:
            cur.execute(f"SELECT * FROM {rel} LIMIT 0")
            columns = cur.fetch_arrow_table().schema
        except Exception as e:  # noqa: BLE001 - the driver's error (no such table, a bad query), named by field
            raise ExtractError(f"{table.identifier}: field extract.{'query' if spec.query else 'table'}: cannot read {rel}: "
                               f"{_scrub(str(e), dsn).strip()}") from None
        wm = spec.watermark
        pg_type = _watermark_type(table, columns, rel)
        missing = [k for k in table.primary_key if k not in columns.names]
        if missing:
            raise ExtractError(f"{table.identifier}: field primary_key: column(s) {missing} are not in {rel} "
                               f"(its columns: {', '.join(columns.names)})")
        if pg_type in TIME_TYPES:
            lag = parse_duration(spec.lag)
            cur.execute(f"SELECT CAST(clock_timestamp() - CAST($1 AS interval) AS {pg_type})::text",
                        (f"{int(lag.total_seconds())} seconds",))
        else:
            cur.execute(f"SELECT (MAX({_quote(wm)}) + 1)::text FROM {rel}")
        high = cur.fetchone()[0]
        low = last.high if last is not None else None
        params: list[str] = []
        if kind == FULL:
            sql = f"SELECT * FROM {rel}"
        else:
            conditions: list[str] = []
            if low is not None:
                params.append(low)
                conditions.append(f"{_quote(wm)} >= CAST(${len(params)} AS {pg_type})")
            if high is None:
                conditions.append("false")  # an empty table (integer watermark): nothing to bound, nothing to read
            else:
                params.append(high)
                conditions.append(f"{_quote(wm)} < CAST(${len(params)} AS {pg_type})")
            sql = f"SELECT * FROM {rel} WHERE {' AND '.join(conditions)}"
        cur.execute(sql, tuple(params) if params else None)
        rows = _plain(cur.fetch_arrow_table())
        conn.rollback()  # a read: nothing to commit
    finally:
        conn.close()
    full_number = number if kind == FULL else (last.last_full_number if last else number)
    full_at = now.isoformat() if kind == FULL or last is None else last.last_full_at
    info = ExtractInfo(number=number, kind=kind, watermark=wm, pg_type=pg_type, low=None if kind == FULL else low,
                       high=high if high is not None else low, rows=rows.num_rows, extracted_at=now.isoformat(),
                       last_full_number=full_number, last_full_at=full_at)
    return rows, info


def _watermark_type(table: TableConfig, columns: pa.Schema, rel: str) -> str:
    spec = table.extract
    assert spec is not None
    if spec.watermark not in columns.names:
        raise ExtractError(f"{table.identifier}: field extract.watermark: column {spec.watermark!r} is not in {rel} "
                           f"(its columns: {', '.join(columns.names)}; {table.config_file})")
    field = columns.field(spec.watermark)
    pg_type = (field.metadata or {}).get(_PG_TYPE, b"").decode()
    if pg_type not in INTEGER_TYPES + TIME_TYPES:
        raise ExtractError(f"{table.identifier}: field extract.watermark: column {spec.watermark!r} of {rel} is "
                           f"{pg_type or field.type}; a watermark is an increasing integer, date or timestamp column")
    return pg_type


def _plain(rows: pa.Table) -> pa.Table:
    """Rows as plain Arrow: the driver's opaque types (numeric arrives as its text) as their storage,
    without the driver's field metadata. Declare such columns in the registry (decimal(p,s)) to type them."""
    arrays, fields = [], []
    for name, col in zip(rows.column_names, rows.columns, strict=True):
        if isinstance(col.type, pa.ExtensionType) or hasattr(col.type, "storage_type"):
            col = pa.chunked_array([c.storage for c in col.chunks], type=col.type.storage_type)
        arrays.append(col)
        fields.append(pa.field(name, col.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
