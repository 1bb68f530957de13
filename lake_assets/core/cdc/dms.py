"""AWS DMS S3-target files: names, landing layout, and reading them into typed change rows.

DMS writes `<source>/<schema>/<table>/LOADxxxxxxxx.<ext>` (8 uppercase hex digits) for full load and
`<source>/<schema>/<table>/[YYYY/MM/DD/]yyyyMMdd-HHmmssSSS.<ext>` for CDC, with `Op` (I/U/D) as the
first column of CDC files. A U row carries the after-image and a D row the before-image.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from lake_assets.core.types import arrow_type, cast_column, normalize_arrow_type
from lake_assets.core.naming import IDENTIFIER
from lake_assets.core.registry import TableConfig

LOAD_NAME = re.compile(r"^LOAD([0-9A-F]{8})$")
CDC_NAME = re.compile(r"^(\d{8}-\d{9})$")
DATE_FOLDERS = re.compile(r"^\d{4}/\d{2}/\d{2}$")
EXTENSIONS = (".csv.gz", ".parquet", ".csv")
VALID_OPS = ("I", "U", "D")

OP = "_op"
ROW = "_row"


class LandingKeyError(ValueError):
    """A landed object whose path or name is not a DMS table file."""


class FileReadError(ValueError):
    """A whole file that cannot be read (corrupt, truncated, zero bytes). It stays landed for retry."""


@dataclass(frozen=True)
class DmsFile:
    """Where a landed DMS file belongs and where it sorts."""

    key: str  # relative to the landing root
    source: str
    schema: str
    table: str  # the source table folder name
    base: str  # file name without extension
    extension: str
    load_number: int | None  # full-load file number, None for CDC

    @property
    def is_load(self) -> bool:
        return self.load_number is not None

    @property
    def order_key(self) -> str:
        """File order: every full-load file before every CDC file, then by name (CDC names are times)."""
        return ("0" if self.is_load else "1") + self.base


def parse_landing_key(key: str) -> DmsFile:
    parts = key.strip("/").split("/")
    if len(parts) not in (4, 7):
        raise LandingKeyError(
            f"{key}: expected <source>/<schema>/<table>/[YYYY/MM/DD/]<file> as AWS DMS writes it"
        )
    source, schema, table = parts[0], parts[1], parts[2]
    if len(parts) == 7 and not DATE_FOLDERS.match("/".join(parts[3:6])):
        raise LandingKeyError(f"{key}: date folders must be YYYY/MM/DD")
    name = parts[-1]
    ext = next((e for e in EXTENSIONS if name.endswith(e)), None)
    if ext is None:
        raise LandingKeyError(f"{key}: file extension must be one of {', '.join(EXTENSIONS)}")
    base = name[: -len(ext)]
    m = LOAD_NAME.match(base)
    if m:
        if len(parts) == 7:
            raise LandingKeyError(f"{key}: full-load files are never under date folders")
        return DmsFile(key, source, schema, table, base, ext, int(m.group(1), 16))
    if CDC_NAME.match(base):
        return DmsFile(key, source, schema, table, base, ext, None)
    raise LandingKeyError(
        f"{key}: file name {name!r} is neither a DMS full-load name (LOAD + 8 hex digits) "
        "nor a CDC name (yyyyMMdd-HHmmssSSS)"
    )


@dataclass
class QuarantinedRow:
    row: int
    reason: str
    raw: str  # the raw values as JSON text


@dataclass
class FileChanges:
    """The typed changes of one file: data columns, `_op` and `_row` (1-based row in the file)."""

    file: DmsFile
    table: pa.Table
    quarantined: list[QuarantinedRow] = field(default_factory=list)

    @property
    def rows_read(self) -> int:
        return self.table.num_rows + len(self.quarantined)


def _raw_json(values: dict) -> str:
    return json.dumps(values, default=str, sort_keys=False)


def read_dms_file(f: DmsFile, data: bytes, table: TableConfig) -> FileChanges:
    """Read one landed file into typed change rows; bad rows are set aside with a reason."""
    where = f"{f.key} (table {table.identifier})"
    if len(data) == 0:
        raise FileReadError(f"{where}: zero-byte file (an upload still in progress or a failed producer write)")
    if f.extension == ".parquet":
        raw = _read_parquet(where, data)
    else:
        if f.extension == ".csv.gz":
            try:
                data = gzip.decompress(data)
            except (EOFError, OSError, zlib.error) as e:
                raise FileReadError(f"{where}: truncated or corrupt gzip: {e}") from None
        raw, bad_rows = _read_csv(where, data, f, table)
        return _typed(where, f, table, raw, bad_rows)
    return _typed(where, f, table, raw, [])


def _read_parquet(where: str, data: bytes) -> pa.Table:
    try:
        t = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError) as e:
        raise FileReadError(f"{where}: not a readable Parquet file: {e}") from None
    return t.rename_columns([_column_name(where, c) for c in t.column_names])


def _column_name(where: str, name: str) -> str:
    if name == "Op":
        return OP
    low = name.lower()
    if not IDENTIFIER.match(low):
        raise FileReadError(f"{where}: column {name!r} is not a valid lake column name ([a-z][a-z0-9_]*)")
    return low


def _csv_field_counts(data: bytes, opts, sample_rows: int = 1000) -> Counter:
    """How many rows have how many fields, over the first rows: one bad row, even the first, decides nothing."""
    text = data[: 1 << 20].decode("utf-8", errors="replace")
    counts: Counter = Counter()
    try:
        for i, fields in enumerate(csv.reader(io.StringIO(text, newline=""), delimiter=opts.delimiter, quotechar=opts.quote)):
            if i >= sample_rows:
                break
            if fields:
                counts[len(fields)] += 1
    except csv.Error:  # the sample cut a quoted value short: the rows counted so far decide
        pass
    return counts


def _read_csv(where: str, data: bytes, f: DmsFile, table: TableConfig) -> tuple[pa.Table, list[QuarantinedRow]]:
    opts = table.csv
    if not data.strip():
        cols = [OP] + [c.name for c in table.columns or ()]
        return pa.table({c: pa.array([], pa.string()) for c in cols}), []
    if opts.header:
        header = data.split(b"\n", 1)[0].decode("utf-8", errors="replace")
        names = [_column_name(where, c.strip().strip(opts.quote)) for c in header.split(opts.delimiter)]
        skip = 1
    else:
        declared = [c.name for c in table.columns or ()]
        counts = _csv_field_counts(data, opts)
        # CDC files always start with Op; full-load files only when IncludeOpForFullLoad is set.
        with_op = (not f.is_load) or counts[len(declared) + 1] > counts[len(declared)]
        names = ([OP] if with_op else []) + declared
        skip = 0
    bad: list[tuple[int, str, str]] = []

    def on_invalid(row) -> str:
        bad.append((row.number, f"row has {row.actual_columns} fields, expected {row.expected_columns}", row.text))
        return "skip"

    try:
        t = pcsv.read_csv(
            io.BytesIO(data),
            read_options=pcsv.ReadOptions(column_names=names, skip_rows=skip, use_threads=False),
            parse_options=pcsv.ParseOptions(
                delimiter=opts.delimiter, quote_char=opts.quote, newlines_in_values=True, invalid_row_handler=on_invalid
            ),
            convert_options=pcsv.ConvertOptions(
                column_types={c: pa.string() for c in names},
                null_values=[opts.null_marker],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        raise FileReadError(f"{where}: not a readable CSV file: {e}") from None
    bad_numbers = {b[0] for b in bad}
    total = t.num_rows + len(bad)
    good_numbers = [i for i in range(1, total + 1) if i not in bad_numbers]
    t = t.append_column(ROW, pa.array(good_numbers, pa.int64()))
    quarantined = [QuarantinedRow(n, reason, _raw_json({"line": text})) for n, reason, text in bad]
    return t, quarantined


def _typed(where: str, f: DmsFile, table: TableConfig, raw: pa.Table, quarantined: list[QuarantinedRow]) -> FileChanges:
    n = raw.num_rows
    if ROW not in raw.column_names:
        raw = raw.append_column(ROW, pa.array(range(1, n + 1), pa.int64()))
    reasons: dict[int, str] = {}  # index in raw -> first reason

    if OP in raw.column_names:
        ops = pc.utf8_upper(pc.utf8_trim_whitespace(raw.column(OP).cast(pa.string())))
        if f.is_load:
            ops = pc.if_else(pc.is_null(ops), "I", ops)
        ok = pc.is_in(ops, pa.array(VALID_OPS))
        for i in pc.indices_nonzero(pc.invert(pc.fill_null(ok, False))).to_pylist():
            reasons.setdefault(i, f"unknown Op {raw.column(OP)[i].as_py()!r} (expected I, U or D)")
    elif f.is_load:
        ops = pa.array(["I"] * n, pa.string())
    else:
        raise FileReadError(f"{where}: CDC file has no Op column")

    for k in table.primary_key:
        if k not in raw.column_names:
            raise FileReadError(f"{where}: primary key column {k!r} is missing from the file")
    columns: dict[str, pa.Array] = {}
    declared = {c.name: arrow_type(c.type) for c in table.columns} if table.columns is not None else {}
    data_names = [c for c in raw.column_names if c not in (OP, ROW)]
    ordered = list(declared) + [c for c in data_names if c not in declared]
    for name in ordered:
        if name not in raw.column_names:
            columns[name] = pa.nulls(n, declared[name])
            continue
        col = raw.column(name)
        target = declared.get(name) or normalize_arrow_type(col.type)
        cast, bad = cast_column(col, target)
        for i in bad:
            reasons.setdefault(i, f"value {col[i].as_py()!r} does not fit column {name} ({target})")
        columns[name] = cast

    for k in table.primary_key:
        for i in pc.indices_nonzero(pc.is_null(columns[k])).to_pylist():
            reasons.setdefault(i, f"null primary key column {k}")

    out = pa.table({**columns, OP: ops, ROW: raw.column(ROW)})
    if reasons:
        rows = raw.column(ROW)
        for i in sorted(reasons):
            values = {c: raw.column(c)[i].as_py() for c in raw.column_names if c != ROW}
            if OP in values:
                values["Op"] = values.pop(OP)
            quarantined.append(QuarantinedRow(rows[i].as_py(), reasons[i], _raw_json(values)))
        keep = pa.array([i not in reasons for i in range(n)])
        out = out.filter(keep)
    quarantined.sort(key=lambda q: q.row)
    return FileChanges(f, out, quarantined)
