"""Event streams: newline-delimited JSON events as Kinesis Data Firehose writes them to S3.

Layout: `<source>/<schema>/<table>/YYYY/MM/DD/HH/<name>[.gz]` (Firehose's default prefix below the
table folder; its names, `<stream>-<version>-YYYY-MM-DD-HH-MM-SS-<uuid>`, sort by time). A file is
gzip when its name ends `.gz` or its bytes start with gzip's magic (Firehose names need not say).
Files sort by that path, then their version; every event is an insert (I) at its file position,
appended once (`load: events`, mode history) to a table partitioned by day or hour of the event
time (`events.time_field`).

An event that is not JSON, not an object, lacks a required field (the time field, the primary key,
`events.required`) or whose time does not read is a bad row: it goes to `<table>__errors` with its
raw line, line number and the reason, through the quarantine sidecar every table has (written
before the commit and idempotent by batch id); the file's good events still land. A file that
cannot be read at all (zero bytes, corrupt gzip, binary) fails alone and stays retryable.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lake_assets.core.cdc.dms import (
    GZIP_MAGIC,
    OP,
    ROW,
    FileChanges,
    FileReadError,
    LandingKeyError,
    QuarantinedRow,
    SourceFile,
    check_not_empty,
    gunzip,
    landing_folder,
    printable,
    read_guarded,
    typed_changes,
)
from lake_assets.core.cdc.jsonrows import json_lines, records_table
from lake_assets.core.naming import IDENTIFIER
from lake_assets.core.registry import EventsSpec, TableConfig
from lake_assets.core.types import cast_column

HOUR_FOLDERS = re.compile(r"[0-9]{4}/[0-9]{2}/[0-9]{2}/[0-9]{2}")
GZ = ".gz"
EVENT_TIME = pa.timestamp("us", tz="UTC")
_EPOCH_UNITS = {"epoch_seconds": 1_000_000, "epoch_millis": 1_000}  # microseconds per unit


def parse_key(key: str) -> SourceFile:
    """An event file's key: `YYYY/MM/DD/HH/<name>[.gz]` under the table folder, a real hour."""
    source, schema, table = landing_folder(key)
    parts = key.strip("/").split("/")
    rest = parts[3:]
    shown = printable(key)
    if len(rest) != 5 or not HOUR_FOLDERS.fullmatch("/".join(rest[:4])):
        raise LandingKeyError(f"{shown}: an event file lands as <source>/<schema>/<table>/YYYY/MM/DD/HH/<name>[.gz] "
                              "(Firehose's default prefix)")
    try:
        dt.datetime(*(int(p) for p in rest[:4]))
    except ValueError as e:
        raise LandingKeyError(f"{shown}: hour folders {'/'.join(rest[:4])} are not a calendar hour ({e})") from None
    name = rest[4]
    ext = GZ if name.endswith(GZ) else ""
    if not name[: len(name) - len(ext)]:
        raise LandingKeyError(f"{shown}: empty event file name")
    path = "/".join(rest)
    return SourceFile(key, source, schema, table, path[: len(path) - len(ext)], ext, None)


def read_events_file(f: SourceFile, data: bytes, table: TableConfig) -> FileChanges:
    return read_guarded(f, table, lambda where: _read(where, f, data, table))


def _spec(table: TableConfig) -> EventsSpec:
    if table.events is None:  # the registry refuses a load events table without one
        raise FileReadError(f"table {table.identifier} has no events block")
    return table.events


def _read(where: str, f: SourceFile, data: bytes, table: TableConfig) -> FileChanges:
    spec = _spec(table)
    check_not_empty(where, data)
    if f.extension == GZ or data.startswith(GZIP_MAGIC):
        data = gunzip(where, data)
    required = tuple(dict.fromkeys((spec.time_field, *table.primary_key, *spec.required)))
    errors: list[QuarantinedRow] = []
    records: list[dict] = []
    numbers: list[int] = []
    texts: dict[int, str] = {}
    good_names: set[str] = set()
    for line in json_lines(where, data):
        problem = line.problem
        value = line.value
        if problem is None:
            problem = _event_problem(value, required, good_names)
        if problem is not None:
            errors.append(QuarantinedRow(line.number, problem, line.text))
            continue
        records.append(value)
        numbers.append(line.number)
        texts[line.number] = line.text
    raw = records_table(where, records, required=required)
    raw = raw.append_column(ROW, pa.array(numbers, pa.int64()))
    raw = _with_event_time(raw, spec, errors, texts)
    raw = raw.append_column(OP, pa.array(["I"] * raw.num_rows, pa.string()))
    out = typed_changes(where, f, table, raw, [])
    # A value that does not fit its declared column is an error of its event: its raw line, as Firehose keeps it.
    errors += [QuarantinedRow(q.row, q.reason, texts.get(q.row, q.raw)) for q in out.quarantined]
    errors.sort(key=lambda q: q.row)
    return FileChanges(f, out.table, errors, out.file_columns)


def _event_problem(value: Any, required: tuple[str, ...], good_names: set[str]) -> str | None:
    """Why one parsed line is not an event the table takes, or None."""
    if not isinstance(value, dict):
        return f"event is a JSON {type(value).__name__}, not an object"
    for name in value:
        if name in good_names:
            continue
        low = name.lower() if isinstance(name, str) else ""
        if low.startswith("_") or not IDENTIFIER.fullmatch(low):
            return f"field {printable(repr(name), 100)} is not a valid lake column name ([a-z][a-z0-9_]*)"
        good_names.add(name)
    for field in required:
        if field in value:
            present = value[field]
        else:
            matches = [v for k, v in value.items() if k.lower() == field]
            if not matches:
                return f"required field {field} is missing"
            present = matches[0]
        if present is None:
            return f"required field {field} is null"
    return None


def _with_event_time(raw: pa.Table, spec: EventsSpec, errors: list[QuarantinedRow], texts: dict[int, str]) -> pa.Table:
    """The time field as timestamptz; events whose time does not read move to the errors."""
    name = spec.time_field
    if raw.num_rows == 0:
        return raw.set_column(raw.schema.get_field_index(name), name, pa.array([], EVENT_TIME))
    col = raw.column(name)
    if spec.time_format == "iso8601":
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            times, bad = pa.nulls(len(col), EVENT_TIME), list(range(len(col)))
        else:
            times, bad = cast_column(col, EVENT_TIME)
        expected = "ISO 8601 text with a zone (Z or +hh:mm)"
    else:
        unit = _EPOCH_UNITS[spec.time_format]
        if pa.types.is_integer(col.type):
            numbers, bad = col, []
            micros = pc.multiply_checked(pc.cast(col, pa.int64()), unit)
        else:  # fractions, or numbers in text
            numbers, bad = cast_column(col, pa.float64())
            micros = pc.cast(pc.floor(pc.multiply(numbers, float(unit))), pa.int64(), safe=False)
        times = pc.cast(micros, EVENT_TIME)
        expected = f"a number ({spec.time_format.replace('_', ' ')})"
    if bad:
        rows = raw.column(ROW)
        for i in bad:
            number = rows[i].as_py()
            shown = printable(repr(col[i].as_py()), 100)
            errors.append(QuarantinedRow(number, f"time field {name}: value {shown} is not {expected}", texts[number]))
        keep = pc.invert(pc.is_in(pa.array(range(raw.num_rows)), pa.array(bad, pa.int64())))
        raw, times = raw.filter(keep), pc.filter(times, keep)
    return raw.set_column(raw.schema.get_field_index(name), name, times)
