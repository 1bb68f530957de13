"""File drops: files of plain rows (no op), whole snapshots or appends or keyed upserts (`load:`).

Layout: `<source>/<schema>/<table>/[any folders/]<name>.<ext>`, ext by the table's format: csv
(`.csv`, `.csv.gz`), json (`.json`, `.json.gz`: one array of objects, or one object), jsonl
(`.jsonl`, `.ndjson`, `.jsonl.gz`: one object per line), parquet (`.parquet`); any of them may be
zipped (`<name>.zip`, or `<name>.<ext>.zip`) with exactly one file inside (folders and macOS
`__MACOSX/` entries aside). Files sort by their path under the table folder, then their version:
name daily drops with a sortable date (`customers_2026-11-21.csv`), or overwrite one name.

Every row is an insert (I) of the file's position; `load` decides the rest in the pipeline
(`snapshots.py` for snapshot loads). A snapshot file with no rows would delete every row of the
table: it fails (retryable) unless the table says `allow_empty_snapshot: true`.
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pyarrow as pa

from lake_assets.core.cdc.dms import (
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
    raw_json,
    read_csv,
    read_guarded,
    read_parquet,
    typed_changes,
)
from lake_assets.core.cdc.jsonrows import json_document, json_lines, records_table
from lake_assets.core.registry import TableConfig

EXTENSIONS = {
    "csv": (".csv.gz", ".csv"),
    "json": (".json.gz", ".json"),
    "jsonl": (".jsonl.gz", ".ndjson", ".jsonl"),
    "parquet": (".parquet",),
    "sql": (".parquet",),  # the lake's own extracts (extracts.py), never zipped
}
ZIP = ".zip"


def _extension(name: str, fmt: str) -> str | None:
    return next((e for e in EXTENSIONS[fmt] if name.endswith(e)), None)


def parse_key(key: str, fmt: str) -> SourceFile:
    """A file drop's key: any name under the table folder with the format's extension (or .zip)."""
    source, schema, table = landing_folder(key)
    rest = key.strip("/").split("/", 3)[3]
    ext = (next((e + ZIP for e in EXTENSIONS[fmt] if rest.endswith(e + ZIP)), None) or
           (ZIP if rest.endswith(ZIP) else _extension(rest, fmt)))
    if ext is None or not rest[: -len(ext)].rsplit("/", 1)[-1]:
        allowed = ", ".join(EXTENSIONS[fmt])
        raise LandingKeyError(f"{printable(key)}: a {fmt} file drop's name ends in {allowed} (or {ZIP})")
    return SourceFile(key, source, schema, table, rest[: -len(ext)], ext, None)


def unzip(where: str, data: bytes, fmt: str) -> tuple[bytes, str]:
    """The one file inside a zip, and its extension; FileReadError when there is not exactly one."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            members = [m for m in z.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
            if len(members) != 1:
                names = ", ".join(printable(m.filename, 80) for m in members[:5]) + (" ..." if len(members) > 5 else "")
                raise FileReadError(f"{where}: the zip holds {len(members)} files ({names or 'none'}); "
                                    "a file drop's zip must hold exactly one")
            member = members[0]
            ext = _extension(member.filename, fmt)
            if ext is None:
                raise FileReadError(f"{where}: the zip's file {printable(member.filename, 80)} is not a {fmt} file "
                                    f"({', '.join(EXTENSIONS[fmt])})")
            return z.read(member), ext
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as e:
        raise FileReadError(f"{where}: not a readable zip file: {printable(str(e), 200)}") from None


def read_drop_file(f: SourceFile, data: bytes, table: TableConfig) -> FileChanges:
    return read_guarded(f, table, lambda where: _read(where, f, data, table))


def _read(where: str, f: SourceFile, data: bytes, table: TableConfig) -> FileChanges:
    check_not_empty(where, data)
    ext = f.extension
    if ext.endswith(ZIP):
        data, ext = unzip(where, data, table.format)
        check_not_empty(where, data)
    if ext.endswith(".gz"):
        data = gunzip(where, data)
    quarantined: list[QuarantinedRow] = []
    if table.format == "csv":
        raw, quarantined = read_csv(where, data, f, table, changes=False)
    elif table.format in ("parquet", "sql"):
        raw = read_parquet(where, data)
    else:
        raw = _read_json(where, data, table, quarantined)
    if ROW not in raw.column_names:
        raw = raw.append_column(ROW, pa.array(range(1, raw.num_rows + 1), pa.int64()))
    raw = raw.append_column(OP, pa.array(["I"] * raw.num_rows, pa.string()))
    out = typed_changes(where, f, table, raw, quarantined)
    if table.load == "snapshot" and out.table.num_rows == 0 and not table.allow_empty_snapshot:
        bad = f" ({len(out.quarantined)} rows, every one quarantined)" if out.quarantined else ""
        raise FileReadError(
            f"{where}: the snapshot file has no rows{bad}: merged, it would delete every row of the table. "
            f"Land a corrected file, or set allow_empty_snapshot: true for the table ({table.config_file}) "
            "if an empty table is a real state of the source"
        )
    return out


def _read_json(where: str, data: bytes, table: TableConfig, quarantined: list[QuarantinedRow]) -> pa.Table:
    """JSON rows as raw columns; a row that is not an object (or a line that is not JSON) is a bad row."""
    records: list[dict] = []
    numbers: list[int] = []
    items: list[tuple[int, Any, str | None, str | None]]  # (row number, value, why it is not JSON, line text)
    if table.format == "jsonl":
        items = [(line.number, line.value, line.problem, line.text) for line in json_lines(where, data)]
    else:
        doc = json_document(where, data)
        values = doc if isinstance(doc, list) else [doc]
        items = [(n, v, None, None) for n, v in enumerate(values, start=1)]
    for number, value, problem, text in items:
        if problem is None and not isinstance(value, dict):
            problem = f"row is a JSON {type(value).__name__}, not an object"
        if problem is not None:
            quarantined.append(QuarantinedRow(number, problem, raw_json({"line": text} if text is not None else {"value": value})))
            continue
        records.append(value)
        numbers.append(number)
    raw = records_table(where, records, required=table.primary_key)
    return raw.append_column(ROW, pa.array(numbers, pa.int64()))
