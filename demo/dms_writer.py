"""Write files exactly as the AWS DMS S3 target does, so demos and tests land what production lands.

Layout and names follow DMS: `<landing>/<source>/<schema>/<table>/LOAD00000001.parquet` for full load
(8 uppercase hex digits) and `[YYYY/MM/DD/]yyyyMMdd-HHmmssSSS.<ext>` for CDC, where the name is the
file's creation time. CDC files carry `Op` (I/U/D) as their first column; U rows hold the after-image
and D rows the before-image. Full-load files have no `Op` unless IncludeOpForFullLoad is set.

Parquet is written with the DMS endpoint defaults (uncompressed unless CompressionType=GZIP, row groups
of 10,000 rows). CSV follows the DMS CSV defaults: no header, `,` delimiter, `\\n` row delimiter,
fields quoted only when they must be. A string equal to the null marker (an empty string with the
default empty marker) is quoted, so a reader that keeps quoted strings non-null round-trips nulls exactly.
Values: dates `YYYY-MM-DD`, timestamps `YYYY-MM-DD HH:MM:SS.ffffff` (timestamptz in UTC with `+00:00`),
booleans `true`/`false`, decimals plain at the column's scale, binary as uppercase hex.
"""

from __future__ import annotations

import decimal
import gzip as gzip_module
import io
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lake_assets.core.types import arrow_type

OP_COLUMN = "Op"
OPS = ("I", "U", "D")
# DMS S3 endpoint defaults for Parquet (ParquetSettings): RowGroupLength 10,000, CompressionType NONE.
PARQUET_ROW_GROUP_ROWS = 10_000

_DECIMAL_CONTEXT = decimal.Context(prec=76)


def load_file_name(n: int) -> str:
    """Name of the n-th full-load file (1-based): 1 -> LOAD00000001, 10 -> LOAD0000000A."""
    if not 1 <= n <= 0xFFFFFFFF:
        raise ValueError(f"full-load file number {n} is outside 1..{0xFFFFFFFF}")
    return f"LOAD{n:08X}"


def cdc_file_name(ts: datetime) -> str:
    """Name of a CDC file created at ts: yyyyMMdd-HHmmssSSS (milliseconds, the creation time)."""
    return ts.strftime("%Y%m%d-%H%M%S") + f"{ts.microsecond // 1000:03d}"


def date_folder(ts: datetime) -> str:
    """Folder of a CDC file created at ts when DatePartitionEnabled is set (sequence YYYYMMDD, '/')."""
    return ts.strftime("%Y/%m/%d")


def table_dir(landing: Path, source: str, schema: str, table: str) -> Path:
    return Path(landing) / source / schema / table


def arrow_schema(columns: Sequence[tuple[str, str]], *, with_op: bool) -> pa.Schema:
    fields = [pa.field(OP_COLUMN, pa.string())] if with_op else []
    fields += [pa.field(name, arrow_type(t)) for name, t in columns]
    return pa.schema(fields)


def file_extension(fmt: str, gzip: bool) -> str:
    if fmt == "parquet":
        return ".parquet"  # DMS compresses Parquet internally; the name does not change
    if fmt == "csv":
        return ".csv.gz" if gzip else ".csv"
    raise ValueError(f"unknown DMS file format {fmt!r}; use 'parquet' or 'csv'")


def write_raw(path: Path, data: bytes) -> Path:
    """Write bytes exactly (corrupt, truncated or hand-made files for tests of bad input)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_dms_file(
    path: Path,
    rows: list[dict],
    columns: list[tuple[str, str]],
    *,
    fmt: str = "parquet",
    cdc: bool,
    include_op_for_full_load: bool = False,
    csv_header: bool = False,
    null_marker: str = "",
    gzip: bool = False,
    delimiter: str = ",",
) -> Path:
    """Write one DMS file from row dicts; `path` has no extension, the right one is appended.

    Rows are projected onto `columns` (missing keys are nulls, other keys are ignored). CDC rows need
    "Op" in I/U/D; full-load rows get Op "I" when include_op_for_full_load is set.
    """
    ops = _ops(rows, cdc=cdc, include_op=include_op_for_full_load)
    if fmt == "parquet":
        table = _rows_to_arrow(rows, columns, ops)
        return _write_parquet(path, table, gzip=gzip)
    if fmt == "csv":
        return _write_csv(
            path, rows, columns, ops, header=csv_header, null_marker=null_marker, gzip=gzip, delimiter=delimiter
        )
    raise ValueError(f"unknown DMS file format {fmt!r}; use 'parquet' or 'csv'")


def write_dms_table(
    path: Path,
    table: pa.Table,
    columns: list[tuple[str, str]],
    *,
    fmt: str = "parquet",
    cdc: bool,
    include_op_for_full_load: bool = False,
    gzip: bool = False,
    **csv_options: Any,
) -> Path:
    """Write one DMS file from an Arrow table (the fast path for big synthetic tables).

    `table` holds the declared columns (any order) and, for CDC, an "Op" column; they are cast to the
    declared types and written with Op first.
    """
    with_op = cdc or include_op_for_full_load
    if cdc and OP_COLUMN not in table.column_names:
        raise ValueError(f"{path}: a CDC file needs an {OP_COLUMN!r} column")
    if fmt == "csv":
        return write_dms_file(
            path, table.to_pylist(), columns, fmt="csv", cdc=cdc, include_op_for_full_load=include_op_for_full_load, gzip=gzip, **csv_options
        )
    schema = arrow_schema(columns, with_op=with_op)
    arrays = []
    for f in schema:
        if f.name == OP_COLUMN and not cdc:
            arrays.append(pa.array(["I"] * table.num_rows, pa.string()))
        elif f.name not in table.column_names:
            arrays.append(pa.nulls(table.num_rows, f.type))
        else:
            arrays.append(table.column(f.name).cast(f.type))
    return _write_parquet(path, pa.Table.from_arrays(arrays, schema=schema), gzip=gzip)


def _final_path(path: Path, ext: str) -> Path:
    path = Path(path)
    if not path.name.endswith(ext):
        path = path.with_name(path.name + ext)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _ops(rows: list[dict], *, cdc: bool, include_op: bool) -> list[str] | None:
    if cdc:
        ops = []
        for i, r in enumerate(rows):
            op = r.get(OP_COLUMN)
            if op not in OPS:
                raise ValueError(f"CDC row {i + 1}: Op must be one of {OPS}, got {op!r}")
            ops.append(op)
        return ops
    if include_op:
        return ["I"] * len(rows)
    return None


# --- Parquet -----------------------------------------------------------------------------------


def _rows_to_arrow(rows: list[dict], columns: Sequence[tuple[str, str]], ops: list[str] | None) -> pa.Table:
    schema = arrow_schema(columns, with_op=ops is not None)
    arrays = [pa.array(ops, pa.string())] if ops is not None else []
    for name, col_type in columns:
        t = arrow_type(col_type)
        prepare = _parquet_value(t)
        values = [prepare(r.get(name)) for r in rows]
        try:
            arrays.append(pa.array(values, type=t))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as e:
            raise ValueError(f"column {name} ({col_type}): {e}") from None
    return pa.Table.from_arrays(arrays, schema=schema)


def _parquet_value(t: pa.DataType) -> Callable[[Any], Any]:
    if pa.types.is_decimal(t):
        quantum = decimal.Decimal(1).scaleb(-t.scale)

        def dec(v):
            if v is None or isinstance(v, str):
                return v
            d = v if isinstance(v, decimal.Decimal) else decimal.Decimal(str(v))
            return d.quantize(quantum, context=_DECIMAL_CONTEXT)

        return dec
    if pa.types.is_timestamp(t) and t.tz is None:
        return lambda v: _utc_naive(v) if isinstance(v, datetime) and v.tzinfo is not None else v
    if pa.types.is_timestamp(t):
        return lambda v: v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v
    if pa.types.is_date(t):
        return lambda v: v.date() if isinstance(v, datetime) else v
    return lambda v: v


def _write_parquet(path: Path, table: pa.Table, *, gzip: bool) -> Path:
    out = _final_path(path, ".parquet")
    pq.write_table(
        table,
        out,
        row_group_size=PARQUET_ROW_GROUP_ROWS,
        compression="gzip" if gzip else "none",
        use_dictionary=True,
    )
    return out


# --- CSV ---------------------------------------------------------------------------------------


def _utc_naive(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(tzinfo=None)


def _csv_formatter(col_type: str) -> Callable[[Any], str]:
    """Text DMS writes for a non-null value of a column; strings pass through as they are."""
    t = arrow_type(col_type)
    if pa.types.is_decimal(t):
        quantum = decimal.Decimal(1).scaleb(-t.scale)

        def dec(v):
            d = v if isinstance(v, decimal.Decimal) else decimal.Decimal(str(v))
            return format(d.quantize(quantum, context=_DECIMAL_CONTEXT), "f")

        return dec
    if pa.types.is_timestamp(t):
        # timestamptz values are converted to UTC and keep an explicit +00:00 so no reader guesses a zone.
        suffix = "+00:00" if t.tz is not None else ""

        def ts(v):
            if isinstance(v, datetime):
                v = _utc_naive(v) if v.tzinfo is not None else v
                return v.isoformat(sep=" ", timespec="microseconds") + suffix
            if isinstance(v, date):
                return datetime(v.year, v.month, v.day).isoformat(sep=" ", timespec="microseconds") + suffix
            return str(v)

        return ts
    if pa.types.is_date(t):
        return lambda v: (v.date() if isinstance(v, datetime) else v).isoformat() if isinstance(v, date) else str(v)
    if pa.types.is_boolean(t):
        return lambda v: ("true" if v else "false") if isinstance(v, bool) else str(v)
    if pa.types.is_binary(t):
        return lambda v: bytes(v).hex().upper() if isinstance(v, (bytes, bytearray, memoryview)) else str(v)
    if pa.types.is_floating(t):
        return lambda v: repr(float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
    return str


def _write_csv(
    path: Path,
    rows: list[dict],
    columns: Sequence[tuple[str, str]],
    ops: list[str] | None,
    *,
    header: bool,
    null_marker: str,
    gzip: bool,
    delimiter: str,
) -> Path:
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise ValueError(f"CSV delimiter must be one character other than a quote or newline, got {delimiter!r}")
    specials = (delimiter, '"', "\n", "\r")

    def field(text: str) -> str:
        if text == null_marker or any(c in text for c in specials):
            return '"' + text.replace('"', '""') + '"'
        return text

    names = [name for name, _ in columns]
    formatters = [_csv_formatter(t) for _, t in columns]
    buf = io.StringIO()
    if header:
        buf.write(delimiter.join(field(n) for n in ([OP_COLUMN] if ops is not None else []) + names) + "\n")
    for i, row in enumerate(rows):
        fields = [ops[i]] if ops is not None else []
        for name, fmt in zip(names, formatters):
            v = row.get(name)
            fields.append(null_marker if v is None else field(fmt(v)))
        buf.write(delimiter.join(fields) + "\n")
    data = buf.getvalue().encode("utf-8")
    if gzip:
        # mtime=0 and no file name in the header: the same rows give byte-identical files.
        out = io.BytesIO()
        with gzip_module.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
            gz.write(data)
        data = out.getvalue()
    final = _final_path(path, file_extension("csv", gzip))
    final.write_bytes(data)
    return final
