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
import io
import json
import re
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

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
    column_names,
    gunzip,
    landing_folder,
    printable,
    read_guarded,
    typed_changes,
)
from lake_assets.core.cdc.jsonrows import check_text, json_lines, records_table
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
        year, month, day, hour = (int(p) for p in rest[:4])
        dt.datetime(year, month, day, hour)
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
    data = check_text(where, data)
    required = tuple(dict.fromkeys((spec.time_field, *table.primary_key, *spec.required)))
    errors: list[QuarantinedRow] = []
    fast = _read_clean(where, data, table, required)
    if fast is not None:
        raw, text = fast
        raw = _without_missing(raw, required, errors, text)
    else:
        raw, text = _read_lines(where, data, required, errors)
    raw = _with_event_time(raw, spec, errors, text)
    raw = raw.append_column(OP, pa.repeat(pa.scalar("I", pa.string()), raw.num_rows))
    out = typed_changes(where, f, table, raw, [])
    # A value that does not fit its declared column is an error of its event: its raw line, as Firehose keeps it.
    errors += [QuarantinedRow(q.row, q.reason, text(q.row)) for q in out.quarantined]
    errors.sort(key=lambda q: q.row)
    return FileChanges(f, out.table, errors, out.file_columns)


def _read_lines(where: str, data: bytes, required: tuple[str, ...],
                errors: list[QuarantinedRow]) -> tuple[pa.Table, Callable[[int], str]]:
    """Line by line: each line that is not an event the table takes goes to the errors."""
    records: list[dict] = []
    numbers: list[int] = []
    texts: dict[int, str] = {}
    good_names: set[str] = set()
    for line in json_lines(where, data):
        problem = line.problem
        if problem is None:
            problem = _event_problem(line.value, required, good_names)
        if problem is not None:
            errors.append(QuarantinedRow(line.number, problem, line.text))
            continue
        records.append(line.value)
        numbers.append(line.number)
        texts[line.number] = line.text
    raw = records_table(where, records, required=required)
    return raw.append_column(ROW, pa.array(numbers, pa.int64())), texts.__getitem__


_PLAIN_TYPES = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_string, pa.types.is_null)


def _read_clean(where: str, data: bytes, table: TableConfig,
                required: tuple[str, ...]) -> tuple[pa.Table, Callable[[int], str]] | None:
    """The common case at Arrow's speed: every line a JSON object of plain values under names the
    lake takes, no blank lines, every required field present somewhere. None: read line by line,
    which gives the same rows and finds the bad lines (the two agree: tests/test_events.py)."""
    body = data[:-1] if data.endswith(b"\n") else data
    if not body:
        return None
    spec = _spec(table)
    # Text stays text (Arrow would read "2026-11-21 10:00:00" as a timestamp, the line reader as a string).
    strings = {c.name for c in table.columns or () if c.type == "string"}
    if spec.time_format == "iso8601":
        strings.add(spec.time_field)
    try:
        t = pj.read_json(io.BytesIO(data), parse_options=pj.ParseOptions(
            explicit_schema=pa.schema([(c, pa.string()) for c in sorted(strings)]), unexpected_field_behavior="infer"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError):
        return None  # a line that is not an object, not JSON, not UTF-8, or values of mixed types
    # Arrow skips blank lines: with one, its row numbers would not be line numbers.
    if t.num_rows != body.count(b"\n") + 1 or not all(any(ok(f.type) for ok in _PLAIN_TYPES) for f in t.schema):
        return None
    try:
        t = t.rename_columns(column_names(where, t.column_names))
    except FileReadError:
        return None  # a field name the lake cannot take: the line reader sets its events aside
    if any(c not in t.column_names for c in required):
        return None
    t = t.select([c for c in t.column_names if c not in strings or c in required or pc.count(t.column(c)).as_py()])
    t = t.append_column(ROW, pa.array(range(1, t.num_rows + 1), pa.int64()))
    lines: list[bytes] = []  # split only when a line is shown (an error's raw text)

    def text(number: int) -> str:
        if not lines:
            lines.extend(body.split(b"\n"))
        return lines[number - 1].rstrip(b"\r").decode("utf-8", errors="replace")

    return t, text


def _without_missing(raw: pa.Table, required: tuple[str, ...], errors: list[QuarantinedRow],
                     text: Callable[[int], str]) -> pa.Table:
    """Events whose required field is missing or null (both are a null in the Arrow table) moved to
    the errors, each with the reason the line reader gives it."""
    missing = None
    for c in required:
        null = pc.is_null(raw.column(c))
        missing = null if missing is None else pc.or_(missing, null)
    if missing is None or not pc.any(missing).as_py():
        return raw
    rows = raw.column(ROW)
    for i in pc.indices_nonzero(missing).to_pylist():
        number = rows[i].as_py()
        line = text(number)
        problem = _event_problem(json.loads(line), required, set()) or f"a required field ({', '.join(required)}) is null"
        errors.append(QuarantinedRow(number, problem, line))
    return raw.filter(pc.invert(missing))


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


def _with_event_time(raw: pa.Table, spec: EventsSpec, errors: list[QuarantinedRow], text: Callable[[int], str]) -> pa.Table:
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
            errors.append(QuarantinedRow(number, f"time field {name}: value {shown} is not {expected}", text(number)))
        keep = pc.invert(pc.is_in(pa.array(range(raw.num_rows)), pa.array(bad, pa.int64())))
        raw, times = raw.filter(keep), pc.filter(times, keep)
    return raw.set_column(raw.schema.get_field_index(name), name, times)
