"""AWS DMS S3-target files: names, landing layout, and reading them into typed change rows.

DMS writes `<source>/<schema>/<table>/LOADxxxxxxxx.<ext>` (8 uppercase hex digits) for full load and
`<source>/<schema>/<table>/[YYYY/MM/DD/]yyyyMMdd-HHmmssSSS.<ext>` for CDC, with `Op` (I/U/D) as the
first column of CDC files. A U row carries the after-image and a D row the before-image.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import re
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from lake_assets.core.naming import IDENTIFIER
from lake_assets.core.registry import CsvOptions, TableConfig
from lake_assets.core.types import UnsupportedTypeError, arrow_type, cast_column, normalize_arrow_type

LOAD_NAME = re.compile(r"LOAD([0-9A-F]{8})")
CDC_NAME = re.compile(r"[0-9]{8}-[0-9]{9}")
DATE_FOLDERS = re.compile(r"[0-9]{4}/[0-9]{2}/[0-9]{2}")
EXTENSIONS = (".csv.gz", ".parquet", ".csv")
VALID_OPS = ("I", "U", "D")
PARQUET_MAGIC = b"PAR1"
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
REASON_CHARS = 500  # longest piece of foreign text (an exception, a value) a reason quotes

OP = "_op"
ROW = "_row"


class LandingKeyError(ValueError):
    """A landed object whose path or name is not a DMS table file."""


class FileReadError(ValueError):
    """A whole file that cannot be read (corrupt, truncated, zero bytes). It stays landed for retry."""


@dataclass(frozen=True)
class SourceFile:
    """Where a landed file belongs and where it sorts (a DMS file, a Debezium file, a file drop:
    `formats.parse_table_key` names each by its table's format)."""

    key: str  # relative to the landing root
    source: str
    schema: str
    table: str  # the source table folder name
    base: str  # the name a file sorts by: DMS file name, or path under the table folder, without extension
    extension: str
    load_number: int | None  # full-load file number, None for CDC

    @property
    def is_load(self) -> bool:
        return self.load_number is not None

    @property
    def order_key(self) -> str:
        """File order: every full-load file before every CDC file, then by name (CDC names are times)."""
        return ("0" if self.is_load else "1") + self.base


def landing_folder(key: str) -> tuple[str, str, str]:
    """(source, schema, table folder) of a landed key: its first three folders, whatever the format."""
    parts = key.strip("/").split("/")
    if len(parts) < 4:
        raise LandingKeyError(f"{printable(key)}: expected <source>/<schema>/<table>/.../<file>")
    if not all(parts):
        raise LandingKeyError(f"{printable(key)}: empty folder name in the key")
    return parts[0], parts[1], parts[2]


def parse_landing_key(key: str) -> SourceFile:
    """A DMS file's key: its table folder, its full-load number or CDC time name."""
    shown = printable(key)
    parts = key.strip("/").split("/")
    if len(parts) not in (4, 7):
        raise LandingKeyError(
            f"{shown}: expected <source>/<schema>/<table>/[YYYY/MM/DD/]<file> as AWS DMS writes it"
        )
    if not all(parts):
        raise LandingKeyError(f"{shown}: empty folder name in the key")
    source, schema, table = parts[0], parts[1], parts[2]
    if len(parts) == 7:
        folders = "/".join(parts[3:6])
        if not DATE_FOLDERS.fullmatch(folders):
            raise LandingKeyError(f"{shown}: date folders must be YYYY/MM/DD")
        try:
            dt.date(*(int(p) for p in parts[3:6]))
        except ValueError as e:
            raise LandingKeyError(f"{shown}: date folders {folders} are not a calendar date ({e})") from None
    name = parts[-1]
    ext = next((e for e in EXTENSIONS if name.endswith(e)), None)
    if ext is None:
        raise LandingKeyError(f"{shown}: file extension must be one of {', '.join(EXTENSIONS)}")
    base = name[: -len(ext)]
    m = LOAD_NAME.fullmatch(base)
    if m:
        if len(parts) == 7:
            raise LandingKeyError(f"{shown}: full-load files are never under date folders")
        return SourceFile(key, source, schema, table, base, ext, int(m.group(1), 16))
    if CDC_NAME.fullmatch(base):
        try:
            dt.datetime.strptime(base[:15], "%Y%m%d-%H%M%S")
        except ValueError as e:
            raise LandingKeyError(f"{shown}: CDC file name {base!r} is not a real time yyyyMMdd-HHmmssSSS ({e})") from None
        return SourceFile(key, source, schema, table, base, ext, None)
    raise LandingKeyError(
        f"{shown}: file name {printable(name)!r} is neither a DMS full-load name (LOAD + 8 hex digits) "
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

    file: SourceFile
    table: pa.Table
    quarantined: list[QuarantinedRow] = field(default_factory=list)
    file_columns: frozenset[str] = frozenset()  # data columns the file itself carries (not filled in)
    # A format that carries its own order (Debezium's source position) gives each row's sequence
    # as number text, and which rows rank like full-load rows (snapshot reads); None: the file's
    # kind (LOAD or CDC) and the table's sequence_by decide.
    sequence: pa.Array | None = None
    load_rows: pa.Array | None = None

    @property
    def rows_read(self) -> int:
        return self.table.num_rows + len(self.quarantined)


def printable(text: str, limit: int | None = None) -> str:
    """Text safe to show in a reason: unprintable characters escaped, cut at limit characters."""
    if limit is not None:
        text = text[: limit + 1]  # enough to know whether it was cut, without escaping a huge text
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if limit is not None and len(text) > limit:
        return text[:limit] + "..."
    return text


def _show(value: object) -> str:
    """A value as a reason quotes it: its Python repr, printable and short."""
    return printable(repr(value), 100)


def _scalar(col: pa.ChunkedArray | pa.Array, i: int) -> Any:
    """The Python value of one cell; as text where Python has no exact value (nanosecond times)."""
    try:
        return col[i].as_py()
    except (ValueError, OverflowError, pa.ArrowException):
        return col.slice(i, 1).cast(pa.string())[0].as_py()


def raw_json(values: dict) -> str:
    return json.dumps(values, default=str, sort_keys=False)


def _raw_rows(raw: pa.Table, indices: list[int]) -> list[dict]:
    """The file's values of some rows, under the file's column names (`Op`, not `_op`)."""
    picked = raw.take(pa.array(indices, pa.int64()))
    columns: dict[str, list] = {}
    for name in picked.column_names:
        if name == ROW:
            continue
        col = picked.column(name)
        try:
            values = col.to_pylist()
        except (ValueError, OverflowError, pa.ArrowException):  # nanoseconds Python cannot hold: as text
            values = col.cast(pa.string()).to_pylist()
        columns["Op" if name == OP else name] = values
    return [{c: v[j] for c, v in columns.items()} for j in range(len(indices))]


def read_dms_file(f: SourceFile, data: bytes, table: TableConfig) -> FileChanges:
    """Read one landed DMS file into typed change rows; bad rows are set aside with a reason."""
    return read_guarded(f, table, lambda where: _read(where, f, data, table))


def read_guarded(f: SourceFile, table: TableConfig, read: Callable[[str], FileChanges]) -> FileChanges:
    """Run one format's reader on one file: `read(where)`, where names the file and the table.

    Whatever goes wrong with the file itself raises FileReadError, and only that: its reason names
    the file and the table, and is short, printable text. The file stays landed for a retry.
    """
    where = f"{printable(f.key)} (table {table.identifier})"
    try:
        return read(where)
    except FileReadError as e:
        text = str(e)
        if len(text) <= len(where) + 2 * REASON_CHARS and text.isprintable():
            raise
        raise FileReadError(printable(text, len(where) + 2 * REASON_CHARS)) from e
    except Exception as e:  # one bad file fails alone, whatever broke
        detail = printable(str(e), REASON_CHARS)
        raise FileReadError(f"{where}: could not read the file: {type(e).__name__}: {detail}") from e


def check_not_empty(where: str, data: bytes) -> None:
    if len(data) == 0:
        raise FileReadError(f"{where}: zero-byte file (an upload still in progress or a failed producer write)")


def gunzip(where: str, data: bytes) -> bytes:
    if not data.startswith(GZIP_MAGIC):
        raise FileReadError(f"{where}: not a gzip file: {_describe_start(data)}")
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:
        raise FileReadError(f"{where}: truncated or corrupt gzip: {printable(str(e), REASON_CHARS)}") from None


def _read(where: str, f: SourceFile, data: bytes, table: TableConfig) -> FileChanges:
    check_not_empty(where, data)
    if f.extension == ".parquet":
        return typed_changes(where, f, table, read_parquet(where, data), [])
    if f.extension == ".csv.gz":
        data = gunzip(where, data)
    raw, bad_rows = read_csv(where, data, f, table)
    return typed_changes(where, f, table, raw, bad_rows)


def _describe_start(data: bytes) -> str:
    if data.startswith(PARQUET_MAGIC):
        return "starts with Parquet magic 'PAR1'"
    if data.startswith(GZIP_MAGIC):
        return "starts with gzip magic 1f 8b (a compressed file needs the .csv.gz extension)"
    return f"starts with {data[:16]!r}"


def _not_text(data: bytes) -> str | None:
    """Why bytes that should be CSV text are not, or None when they may be."""
    if data.startswith(PARQUET_MAGIC) or data.startswith(GZIP_MAGIC):
        return _describe_start(data)
    nul = data.find(b"\x00")
    if nul >= 0:
        return f"NUL byte at offset {nul} (binary content, or text in UTF-16)"
    return None


def read_parquet(where: str, data: bytes) -> pa.Table:
    try:
        # INT96 timestamps (Spark, Hive) as microseconds: nanoseconds overflow before 1677.
        file = pq.ParquetFile(io.BytesIO(data), coerce_int96_timestamp_unit="us")
        names = column_names(where, file.schema_arrow.names)  # before reading any data
        t = file.read()
    except (pa.ArrowException, OSError, ValueError) as e:
        if isinstance(e, FileReadError):
            raise
        raise FileReadError(f"{where}: not a readable Parquet file: {printable(str(e), REASON_CHARS)}") from None
    return t.rename_columns(names)


def column_name(where: str, name: str) -> str:
    if name == "Op":
        return OP
    low = name.lower()
    if low.startswith("_"):
        raise FileReadError(
            f"{where}: column {_show(name)} starts with '_', which the lake reserves for its own columns (_op, _row, _lake_...)"
        )
    if not IDENTIFIER.fullmatch(low):
        raise FileReadError(f"{where}: column {_show(name)} is not a valid lake column name ([a-z][a-z0-9_]*)")
    return low


def column_names(where: str, names: list[str]) -> list[str]:
    """The lake names of a file's columns (lowercase, Op as _op); two columns may not share one."""
    out = [column_name(where, n) for n in names]
    first: dict[str, str] = {}
    for name, low in zip(names, out):
        if low not in first:
            first[low] = name
        elif first[low] == name:
            raise FileReadError(f"{where}: column {_show(name)} appears more than once")
        else:
            raise FileReadError(
                f"{where}: columns {_show(first[low])} and {_show(name)} are both lake column {low} "
                "(names are lowercased): ambiguous, the file is not read"
            )
    return out


def _csv_token(opts: CsvOptions) -> re.Pattern:
    q, d = re.escape(opts.quote.encode()), re.escape(opts.delimiter.encode())
    quoted = rb"%s[^%s]*(?:%s%s[^%s]*)*(?:%s|\Z)" % (q, q, q, q, q, q)
    return re.compile(rb"%s|(%s)|(\r\n|\n|\r)|[^%s%s\r\n]+|." % (quoted, d, d, q), re.DOTALL)


def _csv_field_counts(data: bytes, opts: CsvOptions, sample_rows: int = 1000, sample_bytes: int = 1 << 20) -> Counter:
    """How many rows have how many fields, over the first rows: one bad row, even the first, decides nothing.

    One pattern matches a quoted value, a delimiter, a line end or other text, so a value of any
    length is one match; counting stops at a row end once enough rows or bytes are seen.
    """
    counts: Counter = Counter()
    delimiters, content = 0, False
    for m in _csv_token(opts).finditer(data):
        if m.group(1) is not None:
            delimiters, content = delimiters + 1, True
        elif m.group(2) is not None:
            if content:
                counts[delimiters + 1] += 1
                if counts.total() >= sample_rows or m.end() >= sample_bytes:
                    return counts
            delimiters, content = 0, False
        else:
            content = True
    if content:
        counts[delimiters + 1] += 1
    return counts


def read_csv(where: str, data: bytes, f: SourceFile, table: TableConfig, *, changes: bool = True) -> tuple[pa.Table, list[QuarantinedRow]]:
    """A CSV file's rows as text columns. changes: the file may carry an Op column (DMS); False: plain rows."""
    opts = table.csv
    why = _not_text(data)
    if why:
        raise FileReadError(f"{where}: not a CSV file: {why}")
    data = data.removeprefix(UTF8_BOM)
    if not data.strip():
        cols = ([OP] if changes else []) + [c.name for c in table.columns or ()]
        return pa.table({c: pa.array([], pa.string()) for c in cols}), []
    if opts.header:
        header = data.split(b"\n", 1)[0].decode("utf-8", errors="replace")
        names = column_names(where, [c.strip().strip(opts.quote) for c in header.split(opts.delimiter)])
        skip = 1
    else:
        declared = [c.name for c in table.columns or ()]
        counts = _csv_field_counts(data, opts)
        # CDC files always start with Op; full-load files only when IncludeOpForFullLoad is set.
        with_op = changes and ((not f.is_load) or counts[len(declared) + 1] > counts[len(declared)])
        names = ([OP] if with_op else []) + declared
        skip = 0
    bad: list[tuple[int, str, str]] = []

    def on_invalid(row: Any) -> str:  # a pyarrow.csv.InvalidRow
        bad.append((row.number, f"row has {row.actual_columns} fields, expected {row.expected_columns}", row.text))
        return "skip"

    try:
        t = pcsv.read_csv(
            io.BytesIO(data),
            read_options=pcsv.ReadOptions(
                column_names=names,
                skip_rows=skip,
                use_threads=False,
                # A row (a value may hold newlines) must fit in one block: make the file one block.
                block_size=min(max(len(data) + 1, 1 << 20), (1 << 31) - 1),
            ),
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
        raise FileReadError(f"{where}: not a readable CSV file: {printable(str(e), REASON_CHARS)}") from None
    bad_numbers = {b[0] for b in bad}
    total = t.num_rows + len(bad)
    good_numbers = [i for i in range(1, total + 1) if i not in bad_numbers]
    t = t.append_column(ROW, pa.array(good_numbers, pa.int64()))
    quarantined = [QuarantinedRow(n, reason, raw_json({"line": text})) for n, reason, text in bad]
    return t, quarantined


def _ops(where: str, f: SourceFile, raw: pa.Table, reasons: dict[int, str], valid: tuple[str, ...] = VALID_OPS) -> pa.Array:
    """The Op of every row (full-load rows without one are inserts); unknown Ops are bad rows."""
    n = raw.num_rows
    if OP not in raw.column_names:
        if f.is_load:
            return pa.array(["I"] * n, pa.string())
        raise FileReadError(f"{where}: CDC file has no Op column")
    col = raw.column(OP)
    value_type = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
    if not (pa.types.is_null(value_type) or pa.types.is_string(value_type) or pa.types.is_large_string(value_type)
            or pa.types.is_string_view(value_type)):
        raise FileReadError(f"{where}: the Op column has Arrow type {col.type}; DMS writes it as text (I, U or D)")
    ops = pc.utf8_upper(pc.utf8_trim_whitespace(col.cast(pa.string())))
    if f.is_load:
        ops = pc.if_else(pc.is_null(ops), "I", ops)
    ok = pc.is_in(ops, pa.array(valid))
    for i in pc.indices_nonzero(pc.invert(pc.fill_null(ok, False))).to_pylist():
        reasons.setdefault(i, f"unknown Op {_show(col[i].as_py())} (expected {', '.join(valid[:-1])} or {valid[-1]})")
    return ops


def typed_changes(where: str, f: SourceFile, table: TableConfig, raw: pa.Table, quarantined: list[QuarantinedRow],
           valid_ops: tuple[str, ...] = VALID_OPS) -> FileChanges:
    """Raw columns cast to the table's types; rows that do not fit (or lack a key) quarantined.

    A T (truncate) row concerns no key: it carries none."""
    n = raw.num_rows
    if ROW not in raw.column_names:
        raw = raw.append_column(ROW, pa.array(range(1, n + 1), pa.int64()))
    reasons: dict[int, str] = {}  # index in raw -> first reason
    ops = _ops(where, f, raw, reasons, valid_ops)
    truncates = pc.fill_null(pc.equal(ops, "T"), False)

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
        try:
            target = declared.get(name) or normalize_arrow_type(col.type)
            if pa.types.is_null(target):
                if name in table.primary_key:
                    # Every row lacks its key, and no type can be given to the key column.
                    raise FileReadError(f"{where}: primary key column {name} has Arrow type null (no values in the file)")
                continue  # no values and no declared type: a later file with values adds the column
            cast, bad = cast_column(col, target)
        except UnsupportedTypeError as e:
            raise FileReadError(f"{where}: column {name}: {e}") from None
        for i in bad:
            reasons.setdefault(i, f"value {_show(_scalar(col, i))} does not fit column {name} ({target})")
        columns[name] = cast

    for k in table.primary_key:
        for i in pc.indices_nonzero(pc.and_(pc.is_null(columns[k]), pc.invert(truncates))).to_pylist():
            reasons.setdefault(i, f"null primary key column {k}")

    out = pa.table({**columns, OP: ops, ROW: raw.column(ROW)})
    if reasons:
        bad_rows = sorted(reasons)
        row_numbers = raw.column(ROW).take(pa.array(bad_rows, pa.int64())).to_pylist()
        for i, number, values in zip(bad_rows, row_numbers, _raw_rows(raw, bad_rows)):
            quarantined.append(QuarantinedRow(number, reasons[i], raw_json(values)))
        keep = pa.array([i not in reasons for i in range(n)])
        out = out.filter(keep)
    quarantined.sort(key=lambda q: q.row)
    return FileChanges(f, out, quarantined, frozenset(data_names))
