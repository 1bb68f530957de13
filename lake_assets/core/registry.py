"""The table registry: one YAML per operational source, validated once at load.

Errors name the file, the table and the field, so a bad entry in one of hundreds of YAML files is
found at once. A bad file fails its own source only: `load_registry` loads every valid file and
collects the errors of the others in `Registry.errors` (`strict=True` raises instead).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import pickle
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from lake_assets.core import naming
from lake_assets.core.naming import (
    ERRORS_SUFFIX,
    QUARANTINE_SUFFIX,
    TOMBSTONE_SUFFIX,
    NamingError,
    check_identifier,
    errors_identifier,
    quarantine_identifier,
    source_aligned_key,
    table_identifier,
)
from lake_assets.core.types import SEQUENCE_TYPES_TEXT, canonical_type, orders_by_kind

BUILTIN_SOURCES_DIR = Path(__file__).resolve().parents[1] / "sources"
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster on big registries

TRANSFORM = re.compile(r"^(identity|year|month|day|hour|void|bucket\[\d+\]|truncate\[\d+\])$")

# What the landed files are. With `load: cdc` (the default): AWS DMS files (`parquet`, `csv`) or
# Debezium change events (`debezium`); with `load: snapshot | append | upsert`: file drops of plain
# rows (`csv`, `json` (one array or object per file), `jsonl`, `parquet`), each optionally zipped;
# with `load: events`: newline-delimited JSON events as Kinesis Data Firehose writes them (`jsonl`).
# `sql`: the lake extracts the table from a database itself (`extract:`), into Parquet files it lands.
Format = Literal["parquet", "csv", "debezium", "json", "jsonl", "sql"]
# How a file's rows change the table: `cdc` files carry changes (an op per row); a `snapshot` file is
# the whole table (the newest file wins, rows absent from it are deleted); `append` files are
# appended (mode history); `upsert` files are keyed inserts-or-updates; `events` files are appended
# (mode history) to a table partitioned by an event time, bad events going to `<table>__errors`.
Load = Literal["cdc", "snapshot", "append", "upsert", "events"]
DROP_FORMATS = ("csv", "json", "jsonl", "parquet")
Mode = Literal["current", "history", "scd2"]
Engine = Literal["inprocess", "spark"]
# How a merge removes replaced rows: rewrite the data files that hold them (copy-on-write), write
# position-delete files (merge-on-read), or choose per data file by the share of its rows replaced.
Write = Literal["copy_on_write", "merge_on_read", "auto"]


class RegistryError(ValueError):
    """Invalid registry configuration; the message names file, table and field."""


@dataclass(frozen=True)
class RegistryFileError:
    """One invalid registry file: none of its tables are loaded; the other files are."""

    path: str
    source: str | None  # None when the file does not say (unreadable, or not YAML at all)
    message: str  # names the file, the table and the field

    def __str__(self) -> str:
        return self.message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Strict):
    name: str
    type: str = "string"
    description: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_identifier(v, "column name")

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        return canonical_type(v)


class PartitionField(_Strict):
    column: str
    transform: str = "identity"

    @field_validator("transform")
    @classmethod
    def _transform(cls, v: str) -> str:
        if not TRANSFORM.match(v):
            raise ValueError(f"unknown partition transform {v!r}; use identity, year, month, day, hour, bucket[N], truncate[N]")
        return v


class EventsSpec(_Strict):
    """An event stream's table (`load: events`, lake_assets/core/cdc/events.py): which field is the
    event time the table is partitioned by, which fields an event must have, and how long the raw
    landed files are kept once merged (the raw backup)."""

    time_field: str
    partition: Literal["day", "hour"] = "day"  # day(time_field) or hour(time_field)
    # How the time field's values read: ISO 8601 text with a zone (Z or +hh:mm; a time without a zone
    # is ambiguous, so an error), or epoch numbers.
    time_format: Literal["iso8601", "epoch_seconds", "epoch_millis"] = "iso8601"
    required: tuple[str, ...] = ()  # besides the time field and the primary key, which always are
    raw_retention_days: int | None = Field(default=30, ge=0)  # None: landed files are kept for ever

    @field_validator("time_field")
    @classmethod
    def _time_field(cls, v: str) -> str:
        return check_identifier(v, "events.time_field")

    @field_validator("required")
    @classmethod
    def _required(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for c in v:
            check_identifier(c, "events.required field")
        return v

    @property
    def partition_field(self) -> PartitionField:
        return PartitionField(column=self.time_field, transform=self.partition)


class CsvOptions(_Strict):
    header: bool = False
    delimiter: str = ","
    null_marker: str = ""
    quote: str = '"'


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> dt.timedelta:
    """'90s', '15m', '12h', '1d' as a timedelta; ValueError otherwise."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a duration: a number and a unit s, m, h or d (e.g. 30m, 1d)")
    return dt.timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


class ConnectionSpec(_Strict):
    """How a SQL source is reached. Only the *name* of an environment variable: the DSN (and its
    password) comes from the environment or a secret mounted there, never from a registry file."""

    dsn_env: str

    @field_validator("dsn_env")
    @classmethod
    def _dsn_env(cls, v: str) -> str:
        if not _ENV_NAME.match(v):
            raise ValueError("dsn_env must name an environment variable (letters, digits, _) that holds the DSN; "
                             "the DSN itself never goes in the registry")
        return v


class ExtractSpec(_Strict):
    """How a `format: sql` table is extracted (lake_assets/core/sql_source.py): rows changed since the
    last extract by the `watermark` column, and every `full_every` a full extract whose diff against
    the lake table deletes the rows the source deleted."""

    watermark: str  # an increasing column: updated_at (timestamp, timestamptz, date) or an id (integer, numeric)
    full_every: int | str = "1d"  # a duration (12h, 1d) since the last full extract, or a number of extracts
    # Timestamp watermarks: a delta reads rows up to the database clock minus `lag`, so a transaction
    # that commits within `lag` of stamping its rows is not missed (longer ones: the full extract).
    lag: str = "1m"
    table: str | None = None  # the relation in the database (default <schema>.<source_table>)
    query: str | None = None  # or a SELECT whose rows are the table

    @field_validator("watermark")
    @classmethod
    def _watermark(cls, v: str) -> str:
        return check_identifier(v, "watermark column")

    @field_validator("full_every")
    @classmethod
    def _full_every(cls, v: int | str) -> int | str:
        if isinstance(v, int):
            if v < 1:
                raise ValueError("full_every: a number of extracts must be at least 1 (1: every extract is full)")
            return v
        parse_duration(v)
        return v

    @field_validator("lag")
    @classmethod
    def _lag(cls, v: str) -> str:
        parse_duration(v)
        return v

    @model_validator(mode="after")
    def _one_relation(self) -> ExtractSpec:
        if self.table is not None and self.query is not None:
            raise ValueError("extract: give table or query, not both")
        return self

    @property
    def full_every_extracts(self) -> int | None:
        return self.full_every if isinstance(self.full_every, int) else None

    @property
    def full_every_duration(self) -> dt.timedelta | None:
        return parse_duration(self.full_every) if isinstance(self.full_every, str) else None


def _sql_problem(t: Any) -> str | None:
    """What a `format: sql` table needs: an extract, its source's connection, a cadence."""
    if t.extract is None:
        return "field extract: a format sql table needs extract: {watermark: <column>} (how changed rows are found)"
    if t.connection is None:
        return ("field connection: a format sql table's source needs connection: {dsn_env: <VARIABLE>} at the top of "
                "its file: the environment variable that holds the database's DSN")
    if t.load != "upsert":
        return (f"field load: a sql table's files are its extracts (deltas upsert, full extracts are snapshots); "
                f"leave load unset (it is {t.load})")
    if t.mode != "current":
        return f"field mode: a sql table is kept equal to its source table: it needs mode current (mode is {t.mode})"
    if t.sequence_by is not None:
        return "field sequence_by: a sql table's changes are ordered by their extracts; the watermark goes in extract.watermark"
    if not t.refresh or t.refresh == "on_arrival":
        return "field refresh: a sql table is extracted on its cadence: refresh needs a cron expression (e.g. '*/15 * * * *')"
    if t.columns is not None and t.extract.watermark not in {c.name for c in t.columns}:
        return f"field extract.watermark: column {t.extract.watermark!r} is not in columns"
    return None


# ---------------------------------------------------------------------------------------------
# Rules shared by the YAML entry (TableSpec) and the resolved table (TableConfig)

# (name, low, high, names) of the five cron fields; what Dagster's scheduler accepts, no more, so a
# registry that loads never makes the code location fail on a schedule.
_CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    ("day of week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)
_CRON_ITEM = re.compile(r"^(?P<range>\*|\?|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/(?P<step>\d+))?$")


def _cron_value(text: str, low: int, high: int, names: tuple[str, ...]) -> int | None:
    if text.isdigit():
        v = int(text)
    elif text in names:
        v = names.index(text) + (1 if low == 1 else 0)
    else:
        return None
    return v if low <= v <= high else None


def _cron_field_problem(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> str | None:
    for item in text.lower().split(","):
        m = _CRON_ITEM.match(item)
        if not m:
            return f"{name} {item!r} is not a value, a range a-b, '*' or a step x/n"
        if m["step"] is not None and int(m["step"]) == 0:
            return f"{name} {item!r} has a step of 0"
        part = m["range"]
        if part == "?" and name not in ("day of month", "day of week"):
            return f"'?' is only allowed for the day of month or week, not the {name}"
        if part in ("*", "?"):
            continue
        parts = part.split("-")
        bounds = [v for v in (_cron_value(b, low, high, names) for b in parts) if v is not None]
        if len(bounds) < len(parts):
            return f"{name} {item!r} is outside {low}-{high}" + (f" (or {names[0].upper()}-{names[-1].upper()})" if names else "")
        if len(bounds) == 2 and bounds[0] > bounds[1]:
            return f"{name} range {part!r} runs backwards"
    return None


def check_cron(v: str | None) -> str | None:
    """A refresh cadence: None, 'on_arrival' or a 5-field cron expression Dagster can schedule."""
    if v is None or v == "on_arrival":
        return v
    parts = v.split()
    if len(parts) != 5:
        raise ValueError(f"refresh {v!r} is neither a 5-field cron expression (minute hour day month weekday) nor 'on_arrival'")
    for text, (name, low, high, names) in zip(parts, _CRON_FIELDS):
        problem = _cron_field_problem(text, name, low, high, names)
        if problem:
            raise ValueError(f"refresh {v!r} is not a valid cron expression: {problem}")
    if parts[3].lower() in ("2", "feb") and parts[2] in ("30", "31"):
        raise ValueError(f"refresh {v!r} never fires: February has no day {parts[2]}")
    return v


def _columns_problem(columns: tuple[ColumnSpec, ...] | None) -> str | None:
    if columns is None:
        return None
    names = [c.name for c in columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    return f"duplicate column(s) {dupes}" if dupes else None


def _undeclared(info: ValidationInfo, names: tuple[str, ...]) -> None:
    """Raise when a column the field names is not in the table's declared columns (if any)."""
    columns = info.data.get("columns")
    if columns is None:  # no column list (columns come from the files), or the list itself is invalid
        return
    known = {c.name for c in columns}
    missing = [c for c in names if c not in known]
    if missing:
        raise ValueError(f"column(s) {missing} are not in columns")


def _sequence_problem(info: ValidationInfo, column: str | None) -> None:
    if column is None:
        return
    _undeclared(info, (column,))
    for c in info.data.get("columns") or ():
        if c.name == column and not orders_by_kind(c.type):
            raise ValueError(
                f"column {column!r} has type {c.type}, which the merge cannot order by kind; "
                f"a sequence_by column must be {SEQUENCE_TYPES_TEXT}"
            )


def _primary_key_problem(v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
    if not v:
        raise ValueError("primary_key needs at least one column")
    for c in v:
        check_identifier(c, "primary key column")
    _undeclared(info, v)
    return v


def _selection_problem(t: Any) -> str | None:
    """scd2's options and the column selection, checked against each other and the declared columns."""
    if t.mode == "scd2" and t.sequence_by is None:
        return ("field sequence_by: mode scd2 needs sequence_by: a version's _valid_from and _valid_to are "
                "the sequence_by values of the changes that open and close it")
    if t.track_history_on is not None and t.mode != "scd2":
        return f"field track_history_on: only mode scd2 tracks history on columns (mode is {t.mode})"
    if t.except_columns and t.include_columns is not None:
        return "field except_columns: use except_columns or include_columns, not both"
    for field_name in ("except_columns", "include_columns", "track_history_on"):
        names = getattr(t, field_name) or ()
        for c in names:
            check_identifier(c, f"{field_name} column")
        if t.columns is not None:
            missing = [c for c in names if c not in {col.name for col in t.columns}]
            if missing:
                return f"field {field_name}: column(s) {missing} are not in columns"
    kept = [c for c in t.except_columns if c in t.primary_key or c == t.sequence_by]
    if kept:
        return f"field except_columns: {kept} are the primary key or sequence_by, which always land"
    dropped = [c for c in (t.track_history_on or ()) if c in t.except_columns
               or (t.include_columns is not None and c not in t.include_columns and c not in t.primary_key)]
    if dropped:
        return f"field track_history_on: column(s) {dropped} do not land in the table (except_columns / include_columns)"
    return None


def _format_load_problem(t: Any) -> str | None:
    """Which formats go with which loads, and what each load needs of the table."""
    if t.format == "sql":
        return _sql_problem(t)
    if t.extract is not None:
        return f"field extract: only a format sql table is extracted from a database (format is {t.format})"
    if t.load == "cdc":
        if t.format not in ("parquet", "csv", "debezium"):
            return (f"field format: {t.format} files carry rows, not changes: give the table a load "
                    "(snapshot, append or upsert), or use format parquet/csv (AWS DMS) or debezium for change files")
    elif t.format not in DROP_FORMATS:
        return f"field load: {t.format} files carry changes; load {t.load} takes {', '.join(DROP_FORMATS)} files"
    if t.format == "debezium" and t.mode == "scd2":
        return ("field mode: a debezium table cannot be mode scd2: versions open and close at sequence_by values, "
                "while Debezium changes are ordered by their source position and a truncate (op t) carries no value "
                "to close versions at; use mode current or history")
    if t.format == "debezium" and t.sequence_by is not None:
        return ("field sequence_by: Debezium changes are ordered by their source position (source.lsn, else "
                "source.ts_ms, source.pos and source.row); a debezium table declares no sequence_by")
    if t.load == "snapshot":
        if t.mode != "current":
            return f"field mode: load snapshot keeps the table equal to the newest file: it needs mode current (mode is {t.mode})"
        if t.sequence_by is not None:
            return "field sequence_by: load snapshot orders files by name and version: the newest file is the table"
    if t.load in ("append", "events") and t.mode != "history":
        return f"field mode: load {t.load} appends every row once: it needs mode history (mode is {t.mode})"
    problem = _events_problem(t)
    if problem:
        return problem
    if t.allow_empty_snapshot and t.load != "snapshot":
        return f"field allow_empty_snapshot: only a load snapshot table has snapshot files (load is {t.load})"
    return None


def _events_problem(t: Any) -> str | None:
    """What `load: events` needs: JSON Lines files, an `events:` block, the partition it derives."""
    if t.load != "events":
        return f"field events: only a load events table has an events block (load is {t.load})" if t.events else None
    if t.format != "jsonl":
        return f"field format: load events reads newline-delimited JSON events: it needs format jsonl (format is {t.format})"
    if t.events is None:
        return "field events: load events needs an events block with at least time_field (the event time it is partitioned by)"
    if t.sequence_by is not None:
        return "field sequence_by: events are appended in file order (path, then version, then line): declare no sequence_by"
    if tuple(t.partition_by) != (t.events.partition_field,):
        return ("field partition_by: an events table is partitioned by events.partition of events.time_field; "
                "declare no partition_by")
    if t.columns is not None:
        declared = {c.name: c.type for c in t.columns}
        missing = [c for c in (t.events.time_field, *t.events.required) if c not in declared]
        if missing:
            return f"field events: field(s) {missing} are not in columns"
        kind = declared[t.events.time_field]
        if kind != "timestamptz":
            return (f"field events.time_field: column {t.events.time_field!r} has type {kind}; the event time is "
                    "stored as timestamptz (declare it so, or leave it out of columns)")
    return None


def _table_name(v: str) -> str:
    check_identifier(v, "table name")
    if v.endswith(TOMBSTONE_SUFFIX) or v.endswith(QUARANTINE_SUFFIX) or v.endswith(ERRORS_SUFFIX):
        raise ValueError(f"table name {v!r} is reserved for the lake's own tables")
    return v


class _TableRules(_Strict):
    """Field checks of a table, shared by the YAML entry and the resolved config. Fields are
    validated in declaration order, so `columns` comes first and the others check against it."""

    @field_validator("columns", check_fields=False)
    @classmethod
    def _columns(cls, v: tuple[ColumnSpec, ...] | None) -> tuple[ColumnSpec, ...] | None:
        problem = _columns_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("name", check_fields=False)
    @classmethod
    def _name(cls, v: str) -> str:
        return _table_name(v)

    @field_validator("primary_key", check_fields=False)
    @classmethod
    def _pk(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        return _primary_key_problem(v, info)

    @field_validator("sequence_by", check_fields=False)
    @classmethod
    def _sequence_by(cls, v: str | None, info: ValidationInfo) -> str | None:
        _sequence_problem(info, v)
        return v

    @field_validator("pii", check_fields=False)
    @classmethod
    def _pii(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        _undeclared(info, v)
        return v

    @field_validator("partition_by", check_fields=False)
    @classmethod
    def _partition_by(cls, v: tuple[PartitionField, ...], info: ValidationInfo) -> tuple[PartitionField, ...]:
        _undeclared(info, tuple(p.column for p in v))
        return v

    @field_validator("refresh", check_fields=False)
    @classmethod
    def _refresh(cls, v: str | None) -> str | None:
        return check_cron(v)


class MaintenanceSpec(_Strict):
    """How a table is kept fast and bounded (lake_assets/core/maintenance.py): when maintenance runs,
    and what it keeps."""

    schedule: str | None = "0 3 * * *"  # cron; None: only when materialized by hand
    target_file_mb: int = Field(default=128, ge=1)
    small_file_share: float = Field(default=0.75, gt=0, le=1)  # files under this share of the target are compacted
    min_files_to_compact: int = Field(default=2, ge=2)
    keep_snapshots: int = Field(default=5, ge=1)
    max_snapshot_age_hours: float = Field(default=24.0, ge=0)
    orphan_age_hours: float = Field(default=24.0, ge=0)
    quarantine_retention_days: int = Field(default=30, ge=0)
    max_manifests: int = Field(default=8, ge=1)
    max_delete_files: int = Field(default=4, ge=0)  # data files with more delete files than this are rewritten,
    max_deleted_share: float = Field(default=0.1, ge=0, le=1)  # and those whose delete files remove more of their rows
    small_files_warn: int = Field(default=200, ge=1)  # the health check warns above these
    snapshots_warn: int = Field(default=500, ge=1)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str | None) -> str | None:
        if v == "on_arrival":
            raise ValueError("maintenance.schedule must be a cron expression or null")
        return check_cron(v)


class TableDefaults(_Strict):
    """Settings a source sets once for all its tables; a table may override each."""

    format: Format = "parquet"
    load: Load = "cdc"
    archive: bool = False
    allow_empty_snapshot: bool = False
    csv: CsvOptions = CsvOptions()
    mode: Mode = "current"
    engine: Engine = "inprocess"
    write: Write = "auto"
    refresh: str | None = "on_arrival"
    tombstone_retention_days: int = Field(default=7, ge=0)
    quarantine_max_rate: float = Field(default=0.01, ge=0, le=1)
    owners: tuple[str, ...] = ()
    maintenance: MaintenanceSpec = MaintenanceSpec()

    @field_validator("refresh")
    @classmethod
    def _refresh(cls, v: str | None) -> str | None:
        return check_cron(v)


class TableSpec(_TableRules):
    """One entry of a source file's `tables:`, as written (None = inherit the source default)."""

    columns: tuple[ColumnSpec, ...] | None = None
    name: str
    schema_: str = Field(alias="schema")
    source_table: str | None = None  # folder name in the landing zone when it differs from name
    primary_key: tuple[str, ...]
    sequence_by: str | None = None
    partition_by: tuple[PartitionField, ...] = ()
    pii: tuple[str, ...] = ()
    description: str | None = None
    format: Format | None = None
    load: Load | None = None
    archive: bool | None = None
    allow_empty_snapshot: bool | None = None
    csv: CsvOptions | None = None
    mode: Mode | None = None
    engine: Engine | None = None
    write: Write | None = None
    refresh: str | None = None
    tombstone_retention_days: int | None = Field(default=None, ge=0)
    quarantine_max_rate: float | None = Field(default=None, ge=0, le=1)
    owners: tuple[str, ...] | None = None
    track_history_on: tuple[str, ...] | None = None
    except_columns: tuple[str, ...] = ()
    include_columns: tuple[str, ...] | None = None
    maintenance: MaintenanceSpec | None = None
    events: EventsSpec | None = None  # load events: the event time, required fields, raw retention
    extract: ExtractSpec | None = None


class SourceSpec(_Strict):
    source: str
    description: str | None = None
    connection: ConnectionSpec | None = None  # a database the lake extracts from (format sql tables)
    defaults: TableDefaults = TableDefaults()
    tables: tuple[TableSpec, ...]

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return check_identifier(v, "source name")


class TableConfig(_TableRules):
    """One registry table with the source defaults applied: what every engine and asset reads.

    Validated like the YAML it comes from, so a TableConfig built in code (tests, the Spark job's
    spec) obeys the same rules as one loaded from a file."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    columns: tuple[ColumnSpec, ...] | None
    source: str
    name: str
    # `schema` would shadow BaseModel.schema; the field is `schema_`, read and written as `schema`.
    schema_: str = Field(alias="schema")
    source_table: str
    primary_key: tuple[str, ...]
    sequence_by: str | None
    partition_by: tuple[PartitionField, ...]
    pii: tuple[str, ...]
    format: Format
    csv: CsvOptions
    mode: Mode
    engine: Engine
    load: Load = "cdc"
    archive: bool = False  # after its commit, a landed file moves to the landing zone's archive
    allow_empty_snapshot: bool = False  # an empty snapshot file empties the table instead of failing
    refresh: str | None
    tombstone_retention_days: int = Field(ge=0)
    write: Write = "auto"
    quarantine_max_rate: float = Field(ge=0, le=1)
    owners: tuple[str, ...]
    description: str | None
    config_file: str
    # scd2: only changes to these columns open a new version (None: every column but sequence_by)
    track_history_on: tuple[str, ...] | None = None
    except_columns: tuple[str, ...] = ()  # source columns that never land in the table
    include_columns: tuple[str, ...] | None = None  # when set, only these (and the key and sequence) land
    maintenance: MaintenanceSpec = MaintenanceSpec()
    events: EventsSpec | None = None  # load events only
    extract: ExtractSpec | None = None  # format sql: how the table is extracted from its database
    connection: ConnectionSpec | None = None  # format sql: the source's database

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return check_identifier(v, "source name")

    @model_validator(mode="after")
    def _csv_needs_columns(self) -> TableConfig:
        if self.format == "csv" and not self.csv.header and self.columns is None:
            raise ValueError("field columns: header-less CSV needs the ordered column list")
        return self

    @model_validator(mode="after")
    def _format_and_load(self) -> TableConfig:
        problem = _format_load_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _history_options(self) -> TableConfig:
        problem = _selection_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    def lands(self, column: str) -> bool:
        """Whether a source column lands in the table (except_columns / include_columns)."""
        if column in self.primary_key or column == self.sequence_by:
            return True
        if column in self.except_columns:
            return False
        return self.include_columns is None or column in self.include_columns

    @property
    def schema(self) -> str:  # type: ignore[override]
        return self.schema_

    @property
    def identifier(self) -> str:
        return table_identifier(self.source, self.name)

    @property
    def quarantine_identifier(self) -> str:
        """Where the table's bad rows go: `<table>__errors` for an event stream (Firehose's error
        output), `<table>__quarantine` for every other table. Same columns, same writes."""
        if self.load == "events":
            return errors_identifier(self.source, self.name)
        return quarantine_identifier(self.source, self.name)

    @property
    def asset_key_path(self) -> list[str]:
        return source_aligned_key(self.source, self.name)

    @property
    def landing_prefix(self) -> str:
        """Folder of this table in the landing zone, relative to the landing root."""
        return f"{self.source}/{self.schema}/{self.source_table}/"

    @property
    def landing_folder(self) -> tuple[str, str, str]:
        """(source, schema, source_table): the landing folder a file is routed by."""
        return (self.source, self.schema, self.source_table)

    def to_json_dict(self) -> dict:
        """Plain form handed to out-of-process engines (the Spark job)."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_json_dict(cls, d: dict) -> TableConfig:
        return cls.model_validate(d)


@dataclass(frozen=True)
class Registry:
    """The valid tables of every registry file, and the errors of the files that are not valid."""

    tables: tuple[TableConfig, ...]
    errors: tuple[RegistryFileError, ...] = ()

    def by_source(self) -> dict[str, list[TableConfig]]:
        out: dict[str, list[TableConfig]] = {}
        for t in self.tables:
            out.setdefault(t.source, []).append(t)
        return out

    def get(self, source: str, name: str) -> TableConfig:
        for t in self.tables:
            if t.source == source and t.name == name:
                return t
        raise KeyError(f"no table {source}.{name} in the registry")

    def for_landing_folder(self) -> dict[tuple[str, str, str], TableConfig]:
        """(source, schema, source_table) -> table, to route a landed file to its table."""
        return {t.landing_folder: t for t in self.tables}

    def error_for_source(self, source: str) -> RegistryFileError | None:
        """The error of an invalid registry file declaring `source`, if any: why a file landed for
        that source may route nowhere ("source X's registry file is invalid: ...")."""
        return next((e for e in self.errors if e.source == source), None)

    def raise_for_errors(self) -> Registry:
        """The old all-or-nothing behaviour: raise RegistryError naming every invalid file."""
        if self.errors:
            raise RegistryError("\n".join(e.message for e in self.errors))
        return self


# ---------------------------------------------------------------------------------------------
# Loading one file


class _FileResult(NamedTuple):
    """What one file yields on its own (before the checks across files): tables or an error."""

    source: str | None
    tables: tuple[TableConfig, ...]
    error: str | None


_SOURCE_LINE = re.compile(r"""^source:\s*["']?([a-z][a-z0-9_]*)["']?\s*(?:#.*)?$""", re.MULTILINE)


def _source_of(raw: object, text: str) -> str | None:
    """The source a file declares, even when the file is invalid (a YAML error elsewhere)."""
    if isinstance(raw, dict):
        source = raw.get("source")
        return source if isinstance(source, str) and naming.IDENTIFIER.match(source) else None
    m = _SOURCE_LINE.search(text)
    return m.group(1) if m else None


def _format_validation_error(path: Path, raw: dict, err: ValidationError, table: str | None = None) -> str:
    lines = []
    tables = raw.get("tables") if isinstance(raw, dict) else None
    for e in err.errors():
        loc = list(e["loc"])
        where = f"{path}" + (f": table {table!r}" if table else "")
        if table is None and len(loc) >= 2 and loc[0] == "tables" and isinstance(loc[1], int):
            name = None
            if isinstance(tables, list) and loc[1] < len(tables) and isinstance(tables[loc[1]], dict):
                name = tables[loc[1]].get("name")
            where += f": table {name!r}" if name else f": tables[{loc[1]}]"
            loc = loc[2:]
        msg = e["msg"].removeprefix("Value error, ")
        field = ".".join(str(p) for p in loc)
        lines.append(f"{where}: field {field}: {msg}" if field else f"{where}: {msg}")
    return "\n".join(lines)


def _parse_source_file(path: Path, text: str) -> _FileResult:
    try:
        raw = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as e:
        return _FileResult(_source_of(None, text), (), f"{path}: not valid YAML: {e}")
    source = _source_of(raw, text)
    if not isinstance(raw, dict):
        return _FileResult(source, (), f"{path}: expected a mapping with 'source' and 'tables'")
    try:
        spec = SourceSpec.model_validate(raw)
    except ValidationError as e:
        return _FileResult(source, (), _format_validation_error(path, raw, e))
    except NamingError as e:
        return _FileResult(source, (), f"{path}: {e}")
    d = spec.defaults
    out, problems = [], []
    for t in spec.tables:
        def pick(name: str, t: TableSpec = t) -> Any:  # t bound now, not looked up when called
            v = getattr(t, name)
            return getattr(d, name) if v is None else v

        load = pick("load")
        if pick("format") == "sql" and t.load is None and load == "cdc":
            load = "upsert"  # a sql table's delta extracts are upserts (its full extracts: snapshots)

        try:
            out.append(
                TableConfig(
                    source=spec.source,
                    name=t.name,
                    schema_=t.schema_,
                    source_table=t.source_table or t.name,
                    primary_key=t.primary_key,
                    sequence_by=t.sequence_by,
                    columns=t.columns,
                    partition_by=(t.events.partition_field,) if t.events and not t.partition_by else t.partition_by,
                    pii=t.pii,
                    format=pick("format"),
                    load=load,
                    archive=pick("archive"),
                    allow_empty_snapshot=pick("allow_empty_snapshot"),
                    csv=pick("csv"),
                    mode=pick("mode"),
                    engine=pick("engine"),
                    write=pick("write"),
                    refresh=pick("refresh"),
                    tombstone_retention_days=pick("tombstone_retention_days"),
                    quarantine_max_rate=pick("quarantine_max_rate"),
                    owners=pick("owners"),
                    description=t.description,
                    config_file=str(path),
                    track_history_on=t.track_history_on,
                    except_columns=t.except_columns,
                    include_columns=t.include_columns,
                    maintenance=pick("maintenance"),
                    events=t.events,
                    extract=t.extract,
                    connection=spec.connection if pick("format") == "sql" else None,
                )
            )
        except ValidationError as e:  # a rule of the table with its source defaults applied
            problems.append(_format_validation_error(path, raw, e, table=t.name))
    if problems:
        return _FileResult(source, (), "\n".join(problems))
    return _FileResult(spec.source, tuple(out), None)


def load_source_file(path: Path) -> list[TableConfig]:
    """The tables of one source file; raises RegistryError when the file is invalid."""
    result = _parse_source_file(path, path.read_bytes().decode("utf-8"))
    if result.error:
        raise RegistryError(result.error)
    return list(result.tables)


# ---------------------------------------------------------------------------------------------
# The parsed-file cache: PyYAML object construction is most of a 3,000-table load


def _code_version() -> str:
    """Parsed files are reused only by the code that parsed them: a changed rule re-validates."""
    h = hashlib.blake2b(digest_size=16)
    for source in (__file__, naming.__file__):
        h.update(Path(source).read_bytes())
    h.update(f"{pydantic.VERSION} {sys.version}".encode())
    return h.hexdigest()


def registry_cache_path() -> Path:
    from lake_assets.core.settings import current_settings

    return current_settings().cache_dir / "registry.pickle"


def _read_cache(path: Path, version: str) -> dict[str, tuple[str, _FileResult]]:
    try:
        with path.open("rb") as f:
            data = pickle.load(f)
    except Exception:  # noqa: BLE001 - missing, truncated or written by other code: parse again
        return {}
    if not isinstance(data, dict) or data.get("version") != version:
        return {}
    return data["files"]


def _write_cache(path: Path, version: str, files: dict[str, tuple[str, _FileResult]]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".registry-", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            pickle.dump({"version": version, "files": files}, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)  # readers see the old cache or the new one, never half of one
    except OSError:
        pass  # a read-only LAKE_HOME only costs the parse next time


# ---------------------------------------------------------------------------------------------
# Loading the registry


def source_dirs() -> list[Path]:
    """The settings' registry directories: LAKE_SOURCES_DIR's, preceded by the built-in one (the
    demo source) when LAKE_SOURCES_DIR is unset or LAKE_BUILTIN_SOURCES=true."""
    from lake_assets.core.settings import current_settings

    settings = current_settings()
    return [*([BUILTIN_SOURCES_DIR] if settings.builtin_sources else []), *settings.sources_dirs]


def _source_files(dirs: list[Path], errors: list[RegistryFileError]) -> list[Path]:
    files, seen = [], set()
    for d in dirs:
        if not d.is_dir():
            errors.append(RegistryFileError(str(d), None, f"{d}: sources directory does not exist (LAKE_SOURCES_DIR?)"))
            continue
        if d.resolve() in seen:  # the same directory listed twice is not every table declared twice
            continue
        seen.add(d.resolve())
        files += sorted(list(d.glob("*.yaml")) + list(d.glob("*.yml")))
    return files


def load_registry(dirs: list[Path] | None = None, *, strict: bool = False, cache: bool | Path = True) -> Registry:
    """Every valid registry file's tables, and the errors of the invalid files (in load order).

    A table declared twice, or a landing folder used twice, is an error of the later file. With
    `strict`, any error raises RegistryError instead. `cache` (True: $LAKE_HOME/cache/registry.pickle,
    or a path) reuses the parsed form of files whose content is unchanged; it is keyed by each file's
    path and content digest, so an edited file is always parsed again."""
    errors: list[RegistryFileError] = []
    files = _source_files(dirs if dirs is not None else source_dirs(), errors)

    cache_path = (cache if isinstance(cache, Path) else registry_cache_path()) if cache else None
    version = _code_version() if cache_path else ""
    cached = _read_cache(cache_path, version) if cache_path else {}
    parsed: dict[str, tuple[str, _FileResult]] = {}  # path -> (content digest, what the file yields)
    misses = 0
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as e:
            errors.append(RegistryFileError(str(path), None, f"{path}: cannot be read: {e}"))
            continue
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        hit = cached.get(str(path))
        if hit is not None and hit[0] == digest:
            parsed[str(path)] = hit
            continue
        misses += 1
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            parsed[str(path)] = (digest, _FileResult(None, (), f"{path}: not UTF-8 text: {e}"))
            continue
        parsed[str(path)] = (digest, _parse_source_file(path, text))
    if cache_path:
        # Other registries (tests, LAKE_SOURCES_DIR variants) share the cache; files gone are dropped.
        kept = {k: v for k, v in cached.items() if k not in parsed and Path(k).is_file()}
        if misses or len(kept) + len(parsed.keys() & cached.keys()) != len(cached):
            _write_cache(cache_path, version, {**kept, **parsed})

    tables: list[TableConfig] = []
    declared: dict[str, str] = {}  # table identifier -> file
    folders: dict[tuple[str, str, str], str] = {}  # landing folder -> table identifier
    for path_text, (_, result) in parsed.items():
        if result.error:
            errors.append(RegistryFileError(path_text, result.source, result.error))
            continue
        problems = []
        mine: dict[str, str] = {}
        my_folders: dict[tuple[str, str, str], str] = {}
        for t in result.tables:
            where = declared.get(t.identifier) or (path_text if t.identifier in mine else None)
            used_by = folders.get(t.landing_folder) or my_folders.get(t.landing_folder)
            if where:
                problems.append(f"{path_text}: table {t.name!r}: field name: {t.identifier} is already declared in {where}")
            elif used_by:
                problems.append(
                    f"{path_text}: table {t.name!r}: field source_table: landing folder {t.landing_prefix} "
                    f"is already used by {used_by}"
                )
            mine[t.identifier] = path_text
            my_folders.setdefault(t.landing_folder, t.identifier)
        if problems:
            errors.append(RegistryFileError(path_text, result.source, "\n".join(problems)))
            continue
        declared.update(mine)
        folders.update(my_folders)
        tables.extend(result.tables)
    registry = Registry(tuple(tables), tuple(errors))
    return registry.raise_for_errors() if strict else registry
