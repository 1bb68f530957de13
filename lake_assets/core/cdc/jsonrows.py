"""JSON text as rows: the lines of a JSON Lines file, and records (dicts) as one Arrow table of raw
columns for `dms.typed_changes` to cast. Shared by the Debezium reader and the JSON file drops."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from lake_assets.core.cdc.dms import REASON_CHARS, UTF8_BOM, FileReadError, column_name, printable

PARQUET_MAGIC = b"PAR1"
NOT_JSON = object()  # a line that does not parse (the reason is in JsonLine.problem)


@dataclass(frozen=True)
class JsonLine:
    number: int  # 1-based line number in the file
    text: str
    value: Any = NOT_JSON  # the parsed value (None for a JSON null)
    problem: str | None = None  # why the line is not JSON


def check_text(where: str, data: bytes) -> bytes:
    """The bytes of a text file, or FileReadError when they are plainly not text."""
    if data.startswith(PARQUET_MAGIC):
        raise FileReadError(f"{where}: not a JSON file: starts with Parquet magic 'PAR1'")
    if data.startswith(b"\x1f\x8b"):
        raise FileReadError(f"{where}: not a JSON file: starts with gzip magic 1f 8b (a compressed file needs the .gz extension)")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise FileReadError(f"{where}: not a JSON file: NUL byte at offset {nul} (binary content, or text in UTF-16)")
    return data.removeprefix(UTF8_BOM)


def json_lines(where: str, data: bytes) -> Iterator[JsonLine]:
    """Every non-blank line of a JSON Lines file, parsed or with the reason it is not JSON."""
    for number, raw in enumerate(check_text(where, data).split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield JsonLine(number, raw.decode("utf-8", errors="replace"), problem=f"line is not UTF-8 text: {e}")
            continue
        try:
            yield JsonLine(number, text, json.loads(text))
        except ValueError as e:  # json.JSONDecodeError, and RecursionError-free ValueErrors
            yield JsonLine(number, text, problem=f"line is not JSON: {printable(str(e), REASON_CHARS)}")


def json_document(where: str, data: bytes) -> Any:
    """A whole-file JSON document; a file that does not parse fails as a whole."""
    try:
        return json.loads(check_text(where, data).decode("utf-8"))
    except UnicodeDecodeError as e:
        raise FileReadError(f"{where}: not UTF-8 text: {e}") from None
    except ValueError as e:
        raise FileReadError(f"{where}: not a JSON document: {printable(str(e), REASON_CHARS)}") from None


def _column(values: list) -> pa.Array:
    """One raw column: the type JSON gives it (numbers, booleans, text); nested values and columns
    of mixed types as JSON text, which the declared type (if any) then parses."""
    plain = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in values]
    try:
        return pa.array(plain)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v) for v in plain], pa.string())


def records_table(where: str, records: list[dict], required: tuple[str, ...] = ()) -> pa.Table:
    """Records as raw columns under their lake names (lowercase); `required` columns are present
    (as nulls) even when no record has them. Two names of one record that are one lake column fail
    the file: the file is ambiguous."""
    names: dict[str, str] = {}  # file name -> lake name
    order: list[str] = []
    rows: list[dict[str, Any]] = []
    for record in records:
        row: dict[str, Any] = {}
        for name, value in record.items():
            low = names.get(name)
            if low is None:
                low = names[name] = column_name(where, name)
                if low not in order:
                    order.append(low)
            if low in row:
                raise FileReadError(f"{where}: two fields of one record are both lake column {low} (names are lowercased)")
            row[low] = value
        rows.append(row)
    columns = {c: _column([r.get(c) for r in rows]) for c in order}
    for c in required:
        if c not in columns:
            columns[c] = pa.nulls(len(rows), pa.string())
    return pa.table(columns) if columns else pa.table({c: pa.array([], pa.string()) for c in required})
