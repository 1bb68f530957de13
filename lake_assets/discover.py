"""Schema discovery: a draft registry YAML from what has landed, for a person to review.

`python -m lake_assets.discover PATH [--source NAME] [--out FILE] [--sample N]` lists PATH (a local
directory or `s3://bucket/prefix`, through the lake's own landing-zone classes), groups the files into
table folders and reads a few files of each (`--sample`, 3 by default; the draft says how many of how
many) to write the `tables:` of one source file:

- Table folders follow the landing layout `<source>/<schema>/<table>/`. PATH may be the landing root,
  a source, a schema or a table folder: the levels PATH itself stands for are taken from its own
  folder names (inside the configured landing zone, from its place there). Under a table folder, DMS
  date folders (`YYYY/MM/DD`) and Hive-style `key=value` folders are part of the table, not tables
  of their own; the Hive keys become the table's partition keys.
- What the files are, from their names and content: AWS DMS (`LOAD00000001.parquet`, CDC names
  `yyyyMMdd-HHmmssSSS`, csv or parquet) and Debezium envelopes (a JSON line with `op` and a `source`
  block) are change files (`load: cdc`); other csv / json / jsonl / parquet files, zipped or not, are
  file drops whose load a person chooses (a commented choice, snapshot by default).
- Columns and types in the registry's type names (`lake_assets.core.types`); a type the sample
  cannot tell (a column with no values, mixed kinds) is string with a TODO.
- The primary key only where the format says it: a DMS Parquet file's key metadata, the key schema
  or key struct of the Kafka Connect sink's key files (`*.keys.json`). Otherwise the draft says
  `primary_key: []  # TODO`, which the registry refuses until a person fills it: a guessed key would
  merge rows that are not the same row.

Nothing is written to the lake; the draft goes to `--out` or stdout, the summary to stderr.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import re
import sys
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from lake_assets.core.cdc.dms import CDC_NAME, LOAD_NAME
from lake_assets.core.landing import LandingZone, LocalLandingZone, S3LandingZone
from lake_assets.core.naming import IDENTIFIER
from lake_assets.core.types import UnsupportedTypeError, normalize_arrow_type

SAMPLE_FILES = 3  # files read per table folder
SAMPLE_LINES = 1_000  # JSON lines read per file
DATE_PART = re.compile(r"^\d{4}$"), re.compile(r"^\d{2}$"), re.compile(r"^\d{2}$")
HIVE_FOLDER = re.compile(r"^([^=/]+)=([^/]*)$")
DMS_EXTENSIONS = (".csv.gz", ".parquet", ".csv")
# Extension -> the format a file drop of it is; zip is looked into.
DROP_EXTENSIONS = {
    ".csv.gz": "csv", ".csv": "csv", ".json.gz": "json", ".json": "json", ".jsonl.gz": "jsonl", ".jsonl": "jsonl",
    ".ndjson": "jsonl", ".parquet": "parquet",
}
KEY_FILE = re.compile(r"\.keys\.json(\.gz)?$")  # Kafka Connect S3 sink, store.kafka.keys=true
# Schema-level Parquet metadata that names a table's key (as DMS-side tooling and other writers put it).
PK_METADATA = ("primary_key", "primary_keys", "primary-key", "pk", "key_columns", "dms.primary_key")
# Kafka Connect schema types -> registry types (logical types first, by their schema name).
CONNECT_TYPES = {"int8": "int", "int16": "int", "int32": "int", "int64": "long", "float32": "float", "float64": "double",
                 "boolean": "boolean", "string": "string", "bytes": "binary"}
CONNECT_LOGICAL = {
    "io.debezium.time.ZonedTimestamp": ("timestamptz", None),
    "io.debezium.time.Date": ("int", "io.debezium.time.Date: days since 1970-01-01; the lake reads the number"),
    "org.apache.kafka.connect.data.Date": ("int", "Connect Date: days since 1970-01-01; the lake reads the number"),
    "io.debezium.time.Timestamp": ("long", "io.debezium.time.Timestamp: epoch milliseconds; the lake reads the number"),
    "io.debezium.time.MicroTimestamp": ("long", "io.debezium.time.MicroTimestamp: epoch microseconds; the lake reads the number"),
    "org.apache.kafka.connect.data.Timestamp": ("long", "Connect Timestamp: epoch milliseconds; the lake reads the number"),
    "org.apache.kafka.connect.data.Decimal": (
        "string", "Connect Decimal arrives base64-encoded; set the connector's decimal.handling.mode=string and declare decimal(p,s)"),
}
_REGISTRY_NAMES = {
    pa.string(): "string", pa.int32(): "int", pa.int64(): "long", pa.float32(): "float", pa.float64(): "double",
    pa.bool_(): "boolean", pa.date32(): "date", pa.timestamp("us"): "timestamp", pa.timestamp("us", tz="UTC"): "timestamptz",
    pa.binary(): "binary",
}
# Widenings two sample files may disagree by: the wider type is the column's.
_WIDER = {("int", "long"): "long", ("float", "double"): "double", ("int", "double"): "double", ("long", "double"): "double",
          ("int", "float"): "double", ("long", "float"): "double", ("date", "timestamp"): "timestamp",
          ("timestamp", "timestamptz"): "timestamptz"}


class DiscoveryError(ValueError):
    """PATH cannot be discovered (nothing there, several sources and no --source, ...)."""


# ---------------------------------------------------------------------------------------------
# Where the files are


@dataclass
class Column:
    name: str
    type: str
    note: str | None = None  # why the type is a guess, shown as a TODO comment


@dataclass
class Folder:
    """One table folder of the landing layout and what discovery found in it."""

    source: str
    schema: str
    table: str  # the folder name (source_table)
    keys: list[str] = field(default_factory=list)  # landed keys, relative to the landing zone listed
    partition_keys: list[str] = field(default_factory=list)  # Hive key=value folder keys, outermost first
    kind: str = "unknown"  # dms | debezium | drop | unknown
    format: str | None = None
    columns: list[Column] = field(default_factory=list)
    primary_key: list[str] = field(default_factory=list)
    key_from: str | None = None  # where primary_key comes from
    sampled: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # comments for the reviewer
    csv_header: bool | None = None
    csv_null_marker: str | None = None

    @property
    def prefix(self) -> str:
        return f"{self.source}/{self.schema}/{self.table}/"


def open_landing(path: str) -> LandingZone:
    """The landing zone to list: a local directory, or `s3://bucket/prefix` with the lake's S3 client setup
    (boto3 reads AWS_ENDPOINT_URL, credentials and region from the environment, as the lake does)."""
    if path.startswith("s3://"):
        import boto3

        bucket, _, prefix = path[len("s3://"):].partition("/")
        if not bucket:
            raise DiscoveryError(f"{path}: no bucket in the S3 URI (s3://bucket/prefix)")
        return S3LandingZone(bucket, prefix, boto3.client("s3"))
    root = Path(path)
    if not root.is_dir():
        raise DiscoveryError(f"{path}: not a directory (give a landing folder or an s3:// URI)")
    return LocalLandingZone(root)


def _path_names(path: str) -> list[str]:
    """PATH's folder names, outermost first (the bucket excluded), for the layout levels PATH stands for."""
    if path.startswith("s3://"):
        return [p for p in path[len("s3://"):].split("/")[1:] if p]
    return list(Path(path).resolve().parts[1:])


def _configured_depth(path: str) -> int | None:
    """How many layout levels (source, schema, table) PATH is below the configured landing zone, if inside it."""
    try:
        from lake_assets.core.settings import current_settings

        settings = current_settings()
    except Exception:  # noqa: BLE001 - no usable settings: the folder names decide
        return None
    if path.startswith("s3://"):
        if settings.aws is None:
            return None
        root = settings.aws.landing_uri.rstrip("/") + "/"
        inside = path.rstrip("/") + "/"
        return len([p for p in inside[len(root):].split("/") if p]) if inside.startswith(root) else None
    try:
        rel = Path(path).resolve().relative_to(settings.landing_dir.resolve())
    except ValueError:
        return None
    return len(rel.parts)


def _layout_start(dirs: list[str]) -> int:
    """Index of the first folder that is a DMS date folder or a Hive key=value folder (len when none)."""
    for i, d in enumerate(dirs):
        if HIVE_FOLDER.match(d):
            return i
        if i + 3 <= len(dirs) and all(p.match(x) for p, x in zip(DATE_PART, dirs[i:i + 3])):
            return i
    return len(dirs)


def group_folders(keys: list[str], path: str) -> tuple[list[Folder], list[str]]:
    """Table folders of the listed keys, and the keys that fit no table folder (with why)."""
    names = _path_names(path)
    split = [(k, k.split("/")[:-1]) for k in keys]
    table_dirs = {k: dirs[:_layout_start(dirs)] for k, dirs in split}
    depth = _configured_depth(path)
    # How many layout levels PATH itself stands for: its place in the configured landing zone, else
    # what the deepest table folder under it lacks of <source>/<schema>/<table>.
    need = depth if depth is not None else max(0, 3 - max((len(d) for d in table_dirs.values()), default=0))
    folders: dict[tuple[str, str, str], Folder] = {}
    outside: list[str] = []
    for key, dirs in split:
        own = table_dirs[key]
        full = (names[len(names) - need:] if need > 0 else []) + own
        if need > len(names) or len(full) < 3:
            outside.append(f"{key}: not under a <source>/<schema>/<table>/ folder")
            continue
        source, schema, table = full[:3]
        f = folders.setdefault((source, schema, table), Folder(source, schema, table))
        f.keys.append(key)
        for d in dirs[len(own):]:
            m = HIVE_FOLDER.match(d)
            if m and m.group(1) not in f.partition_keys:
                f.partition_keys.append(m.group(1))
    return [folders[k] for k in sorted(folders)], outside


# ---------------------------------------------------------------------------------------------
# What a file is


def _name(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def dms_name(key: str) -> bool:
    name = _name(key)
    ext = next((e for e in DMS_EXTENSIONS if name.endswith(e)), None)
    return ext is not None and bool(LOAD_NAME.fullmatch(name[: -len(ext)]) or CDC_NAME.fullmatch(name[: -len(ext)]))


def drop_format(key: str) -> str | None:
    name = _name(key)
    if name.endswith(".zip"):
        name = name[: -len(".zip")]
        return next((f for e, f in DROP_EXTENSIONS.items() if name.endswith(e)), "zip")
    return next((f for e, f in DROP_EXTENSIONS.items() if name.endswith(e)), None)


def _plain_bytes(key: str, data: bytes) -> tuple[bytes, str]:
    """A file's content with gzip and zip removed, and the name it stands for."""
    name = _name(key)
    if name.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            members = [m for m in z.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
            if len(members) != 1:
                raise ValueError(f"the zip holds {len(members)} files; a file drop's zip must hold exactly one")
            data, name = z.read(members[0]), members[0].filename
    if name.endswith(".gz"):
        data, name = gzip.decompress(data), name[: -len(".gz")]
    return data, name


def _json_values(data: bytes) -> tuple[list[Any], bool]:
    """The values of a JSON Lines file (its first SAMPLE_LINES lines), or of one JSON document; and
    whether they were lines."""
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff")
    out = []
    for line in text.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                out = []
                break
            if len(out) >= SAMPLE_LINES:
                return out, True
    if len(out) > 1:
        return out, True
    doc = json.loads(text)
    return (doc if isinstance(doc, list) else [doc]), False


def _envelope(value: Any) -> dict | None:
    """The change event of a Debezium line (its payload when the line has the schema part)."""
    if not isinstance(value, dict):
        return None
    event = value.get("payload") if "op" not in value and isinstance(value.get("payload"), dict) else value
    if isinstance(event, dict) and event.get("op") in ("c", "u", "d", "r", "t") and isinstance(event.get("source"), dict):
        return event
    return None


# ---------------------------------------------------------------------------------------------
# Types


def registry_type(t: pa.DataType) -> tuple[str, str | None]:
    """The registry type of a landed Arrow type, and a note when it is a guess."""
    try:
        lake = normalize_arrow_type(t)
    except UnsupportedTypeError as e:
        return "string", f"{e}; declared string"
    if pa.types.is_null(lake):
        return "string", "no values in the sample: type unknown"
    if pa.types.is_decimal(lake):
        return f"decimal({lake.precision},{lake.scale})", None
    return _REGISTRY_NAMES[lake], None


def _text_type(values: pa.Array) -> str:
    """string, or date / timestamp / timestamptz when every value of a text column is one."""
    values = pc.drop_null(values)
    if len(values) == 0:
        return "string"
    for target, name in ((pa.date32(), "date"), (pa.timestamp("us"), "timestamp"), (pa.timestamp("us", tz="UTC"), "timestamptz")):
        try:
            pc.cast(values, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            continue
        if name == "date" and not all(len(v) == 10 for v in values.to_pylist()):
            continue
        return name
    return "string"


def _columns_of_table(t: pa.Table) -> list[Column]:
    out = []
    for name, col in zip(t.column_names, t.columns):
        kind, note = registry_type(col.type)
        if kind == "string" and note is None and (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            kind = _text_type(col.combine_chunks())
        out.append(Column(name, kind, note))
    return out


def _json_columns(records: list[dict]) -> list[Column]:
    """Columns of JSON records: the type JSON gives each, text that is a date or time as such."""
    order: list[str] = []
    for r in records:
        order += [k for k in r if k not in order]
    out = []
    for name in order:
        values = [r.get(name) for r in records]
        if any(isinstance(v, (dict, list)) for v in values):
            out.append(Column(name, "string", "nested JSON: the lake keeps it as JSON text"))
            continue
        try:
            arr = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            out.append(Column(name, "string", "values of mixed kinds in the sample"))
            continue
        kind, note = registry_type(arr.type)
        if kind == "string" and note is None:
            kind = _text_type(arr)
        out.append(Column(name, kind, note))
    return out


def _merge(columns: list[Column], more: list[Column]) -> list[Column]:
    """Columns of two sample files: the union in first-seen order, the wider type where they differ."""
    by_name = {c.name: c for c in columns}
    for c in more:
        have = by_name.get(c.name)
        if have is None:
            by_name[c.name] = c
            columns.append(c)
        elif have.note and "no values" in have.note:
            have.type, have.note = c.type, c.note
        elif have.type != c.type and not (c.note and "no values" in c.note):
            decimals = [re.fullmatch(r"decimal\((\d+),(\d+)\)", t) for t in (have.type, c.type)]
            if decimals[0] and decimals[1]:
                have.type = f"decimal({max(int(m.group(1)) for m in decimals if m)},{max(int(m.group(2)) for m in decimals if m)})"
                continue
            if any(decimals) and {have.type, c.type} & {"double", "long"}:
                have.type, have.note = "double", None
                continue
            wider = _WIDER.get((have.type, c.type)) or _WIDER.get((c.type, have.type))
            if wider:
                have.type = wider
            else:
                have.type, have.note = "string", f"sample files disagree ({have.type} and {c.type})"
    return columns


# ---------------------------------------------------------------------------------------------
# Reading the samples


def _lake_names(folder: Folder, columns: list[Column]) -> list[Column]:
    """Columns under their lake names (lowercase); names the lake refuses are left out with a note."""
    out, seen = [], set()
    for c in columns:
        low = c.name.lower()
        if c.name == "Op" and folder.kind == "dms":
            continue  # DMS's Op column: the change's op, not a table column
        if low.startswith("_") or not IDENTIFIER.fullmatch(low):
            folder.notes.append(f"column {c.name!r} is not a lake column name ([a-z][a-z0-9_]*): the lake refuses "
                                "files with it until the producer renames it")
            continue
        if low in seen:
            folder.notes.append(f"column {c.name!r} is a second column {low!r} (names are lowercased): the lake refuses these files")
            continue
        seen.add(low)
        out.append(Column(low, c.type, c.note))
    return out


def _parquet_key(schema: pa.Schema) -> list[str]:
    """The primary key a Parquet file's metadata names (schema-level keys of PK_METADATA, or fields
    whose metadata marks them as key), [] when it names none."""
    meta = {k.decode(errors="replace").lower(): v.decode(errors="replace") for k, v in (schema.metadata or {}).items()}
    for k in PK_METADATA:
        if k in meta:
            text = meta[k].strip()
            try:
                value = json.loads(text)
            except ValueError:
                value = [p.strip() for p in text.split(",")]
            if isinstance(value, str):
                value = [value]
            if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
                return [v.lower() for v in value]
    marked = [f.name.lower() for f in schema
              if f.metadata and any(k.decode(errors="replace").lower() in ("primary_key", "is_key", "key")
                                    and v.decode(errors="replace").lower() in ("true", "1", "yes") for k, v in f.metadata.items())]
    return marked


def _read_csv(data: bytes, folder: Folder, cdc: bool) -> list[Column]:
    """A CSV sample's columns. The first row is a header when every field of it is a name (DMS writes
    none by default; its CDC rows start with the op I, U or D, which is no header)."""
    def read(header: bool, as_text: bool) -> pa.Table:
        n = len(data.split(b"\n", 1)[0].split(b","))  # enough names for any first row; pyarrow checks the count
        return pcsv.read_csv(
            io.BytesIO(data), read_options=pcsv.ReadOptions(autogenerate_column_names=not header, use_threads=False),
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(strings_can_be_null=True, column_types={f"f{i}": pa.string() for i in range(n)}
                                                if as_text else None, null_values=[""] if as_text else None))

    raw = read(False, True)
    raw = raw.cast(pa.schema([(n, pa.string()) for n in raw.column_names]))  # a first row miscounted (quoted commas)
    first = list(raw.slice(0, 1).to_pylist()[0].values()) if raw.num_rows else []
    header = (bool(first) and len(set(first)) == len(first)
              and all(isinstance(v, str) and re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$ ]*", v) for v in first)
              and not (cdc and first[0] in ("I", "U", "D")))
    table = read(header, False)
    text = raw.slice(1) if header else raw
    if folder.csv_header is None:
        folder.csv_header = header
    if any(pc.any(pc.equal(c, "NULL")).as_py() for c in text.columns):
        folder.csv_null_marker = "NULL"
    columns = [_fixed_scale(c, text.column(i)) for i, c in enumerate(_columns_of_table(table))]
    if not header:
        ops = set(pc.drop_null(text.column(0)).to_pylist()) if text.num_columns else set()
        if columns and (cdc or (ops and ops <= {"I", "U", "D"})):
            columns = columns[1:]  # DMS's Op column (CDC files; full-load files with IncludeOpForFullLoad)
        columns = [Column(f"column_{i}", c.type, c.note) for i, c in enumerate(columns, start=1)]
    return columns


def _fixed_scale(c: Column, text: pa.ChunkedArray) -> Column:
    """A CSV number column whose every value has the same digits after the point (as DMS writes a
    decimal at its scale) is that decimal; the precision is a guess to check."""
    if c.type != "double":
        return c
    values = [v for v in text.to_pylist() if v is not None]
    scales = {len(v.split(".", 1)[1]) if re.fullmatch(r"-?\d+\.\d+", v) else -1 for v in values}
    if len(scales) != 1 or (scale := scales.pop()) < 1:
        return c
    digits = max(len(v.lstrip("-").replace(".", "")) for v in values)
    precision = min(38, max(18, digits))
    return Column(c.name, f"decimal({precision},{scale})", "decimal from the text's fixed scale: check the source's precision")


def _sample(folder: Folder, n: int) -> list[str]:
    """The files to read: the first full-load file and the newest others (DMS), else the newest files."""
    keys = sorted(k for k in folder.keys if not KEY_FILE.search(k))
    loads = [k for k in keys if LOAD_NAME.match(_name(k))]
    rest = [k for k in keys if k not in set(loads)]
    picked = loads[:1] + rest[-(n - len(loads[:1])):] if n > len(loads[:1]) else loads[:n]
    return sorted(picked) if picked else keys[-n:]


def _debezium_columns(events: list[tuple[dict, dict | None]]) -> list[Column]:
    """Columns of Debezium events: from the `after`/`before` schema when the envelope has it, else the images."""
    for _, schema in events:
        if schema is None:
            continue
        for part in schema.get("fields") or ():
            if part.get("field") in ("after", "before") and isinstance(part.get("fields"), list):
                return [_connect_column(f) for f in part["fields"]]
    records = [e.get("before") if e.get("op") == "d" else e.get("after") for e, _ in events]
    return _json_columns([r for r in records if isinstance(r, dict)])


def _connect_column(f: dict) -> Column:
    logical = CONNECT_LOGICAL.get(f.get("name") or "")
    if logical:
        return Column(f["field"], logical[0], logical[1])
    kind = CONNECT_TYPES.get(f.get("type") or "")
    return Column(f["field"], kind or "string", None if kind else f"Kafka Connect type {f.get('type')!r}: kept as JSON text")


def _key_fields(value: Any) -> list[str]:
    """Key column names of one key file line: its key schema's fields, else its key struct's."""
    if isinstance(value, dict) and isinstance(value.get("schema"), dict) and "payload" in value:
        fields = value["schema"].get("fields")
        if isinstance(fields, list) and fields:
            return [f["field"].lower() for f in fields if isinstance(f, dict) and "field" in f]
        value = value["payload"]
    return [k.lower() for k in value] if isinstance(value, dict) else []


def discover_folder(landing: LandingZone, folder: Folder, sample: int = SAMPLE_FILES) -> Folder:
    """Read a sample of one table folder's files: kind, format, columns, key (in place)."""
    keys = [k for k in folder.keys if not KEY_FILE.search(k)]
    key_files = sorted(k for k in folder.keys if KEY_FILE.search(k))
    if keys and all(dms_name(k) for k in keys):
        folder.kind = "dms"
        exts = Counter("csv" if ".csv" in _name(k) else "parquet" for k in keys)
        folder.format = exts.most_common(1)[0][0]
        if len(exts) > 1:
            folder.notes.append(f"the folder holds both csv and parquet DMS files ({dict(exts)}); a table reads one format")
    unknown = sorted(_name(k) for k in keys if drop_format(k) is None)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        folder.notes.append(f"{len(unknown)} files in no format the lake reads ({shown}): left out")
    # A table reads one format: the folder's most common (a zip's is inside it); the others are said.
    formats = Counter(f for k in keys if (f := drop_format(k)) not in (None, "zip"))
    main = folder.format or (formats.most_common(1)[0][0] if formats else None)
    others = {f: n for f, n in formats.items() if f != main and folder.kind != "dms"}
    if others:
        folder.notes.append("files of other formats (" + ", ".join(f"{n} {f}" for f, n in sorted(others.items()))
                            + f"): a table reads one format, the draft takes {main}")
    readable = keys if folder.kind == "dms" else [k for k in keys if (f := drop_format(k)) is not None and f in (main, "zip")]
    if folder.kind != "dms":
        folder.kind = "drop" if readable else "unknown"
    if not readable:
        return folder
    picked = _sample(Folder(folder.source, folder.schema, folder.table, readable), sample)
    columns: list[Column] = []
    events: list[tuple[dict, dict | None]] = []
    for key in picked:
        try:
            data, name = _plain_bytes(key, landing.read(key))
            fmt = drop_format(name)
            if fmt is None or fmt == "zip" or (main is not None and folder.kind != "dms" and fmt != main):
                folder.notes.append(f"{_name(key)} holds {name}, not a {main or 'csv, json, jsonl or parquet'} file: left out")
                continue
            if fmt == "parquet":
                pf = pq.ParquetFile(io.BytesIO(data))
                schema = pf.schema_arrow
                if not folder.primary_key:
                    folder.primary_key = _parquet_key(schema)
                    folder.key_from = "the Parquet files' key metadata" if folder.primary_key else None
                found = _columns_of_table(pf.read_row_group(0) if pf.num_row_groups else schema.empty_table())
            elif fmt == "csv":
                found = _read_csv(data, folder, cdc=folder.kind == "dms" and not LOAD_NAME.match(_name(key)))
            else:
                values, as_lines = _json_values(data)
                changes = [(e, v.get("schema") if isinstance(v, dict) and "payload" in v else None)
                           for v in values if (e := _envelope(v)) is not None]
                if changes and len(changes) * 2 >= len([v for v in values if v is not None]):
                    folder.kind, fmt = "debezium", "debezium"
                    events += changes
                    found = _debezium_columns(changes)
                else:
                    found = _json_columns([v for v in values if isinstance(v, dict)])
                    if fmt == "json" and as_lines and len(values) > 1:
                        folder.notes.append(f"{_name(key)} holds JSON lines, but format json reads one document per file: "
                                            "name such files .jsonl (format jsonl)")
        except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile, pa.ArrowException) as e:
            folder.notes.append(f"{_name(key)} could not be read: {str(e)[:200]}")
            continue
        folder.sampled.append(key)
        if folder.kind != "dms" and (folder.format is None or fmt == "debezium"):
            folder.format = fmt
        columns = _merge(columns, found)
    if not folder.sampled:
        folder.kind = "unknown"  # nothing could be read: no table to draft, the notes say why
        return folder
    folder.columns = _lake_names(folder, columns)
    if folder.kind == "debezium":
        if key_files:
            try:
                data, _ = _plain_bytes(key_files[-1], landing.read(key_files[-1]))
                values, _ = _json_values(data)
                folder.primary_key = _key_fields(values[0]) if values else []
                folder.key_from = f"the sink's key files ({_name(key_files[-1])}: the key schema)" if folder.primary_key else None
            except (OSError, ValueError, EOFError, zlib.error) as e:
                folder.notes.append(f"{_name(key_files[-1])} could not be read: {str(e)[:200]}")
            folder.notes.append(f"{len(key_files)} key files (*.keys.json) are in the table folder: the lake reads every "
                                "file there as change events; write the sink's keys elsewhere")
        elif not folder.primary_key:
            hint = _delete_key_hint([e for e, _ in events])
            if hint:
                folder.notes.append(f"the sampled deletes' before images carry only {hint} (REPLICA IDENTITY DEFAULT "
                                    "gives the key): the key is likely that")
    known = {c.name for c in folder.columns}
    if any(k not in known for k in folder.primary_key):
        folder.notes.append(f"the key the files name ({folder.primary_key}) is not among the columns: left for review")
        folder.primary_key, folder.key_from = [], None
    return folder


def _delete_key_hint(events: list[dict]) -> list[str] | None:
    befores = [e["before"] for e in events if e.get("op") == "d" and isinstance(e.get("before"), dict)]
    if not befores:
        return None
    always = [k for k in befores[0] if all(b.get(k) is not None for b in befores)]
    sometimes_null = any(v is None for b in befores for v in b.values())
    return [k.lower() for k in always] if always and sometimes_null else None


# ---------------------------------------------------------------------------------------------
# The draft


def _table_name(folder: str) -> str:
    name = re.sub(r"[^a-z0-9_]", "_", folder.lower()).strip("_") or "table"
    return name if name[0].isalpha() else f"t_{name}"


def _scalar(text: str) -> str:
    """A YAML scalar: plain when it is an identifier, else JSON-quoted (which YAML reads)."""
    return text if IDENTIFIER.fullmatch(text) else json.dumps(text)


def render(source: str, folders: list[Folder], *, path: str, sample: int, outside: tuple[str, ...] | list[str] = (),
           folder_source: str | None = None) -> str:
    """The draft registry YAML of one source's table folders (comments say what to review)."""
    lines = [
        f"# Draft registry for source {source}, discovered by `python -m lake_assets.discover {path}`.",
        f"# Read {sample} file(s) per table folder at most. Review every TODO, then move the file to a registry",
        "# directory (LAKE_SOURCES_DIR); primary_key: [] is refused until a key is filled in.",
    ]
    if folder_source and folder_source != source:
        lines.append(f"# The files are under {folder_source}/...: they route to this source once they land under {source}/...")
    lines += [f"source: {source}", "defaults:", "  mode: current", "  refresh: on_arrival", "tables:"]
    names: set[str] = set()
    readable = [f for f in folders if f.kind != "unknown"]
    for f in folders:
        if f.kind == "unknown":
            lines.append(f"  # {f.prefix}: {len(f.keys)} file(s), none the lake reads; no table drafted")
            lines += [f"  #   {n}" for n in f.notes]
    for f in readable:
        name = _table_name(f.table)
        while name in names:
            name += "_2"
        names.add(name)
        lines.append("")
        lines.append(f"  # {f.prefix}: {len(f.keys)} file(s), sampled {len(f.sampled)} ({', '.join(_name(k) for k in f.sampled)})")
        lines += [f"  # NOTE: {n}" for n in f.notes]
        lines.append(f"  - name: {name}")
        lines.append(f"    schema: {_scalar(f.schema)}")
        if name != f.table:
            lines.append(f"    source_table: {_scalar(f.table)}")
        if f.primary_key:
            lines.append(f"    primary_key: [{', '.join(f.primary_key)}]  # from {f.key_from}")
        else:
            lines.append("    primary_key: []  # TODO: primary_key: the columns that identify a row (the files do not say)")
        lines += _format_lines(f)
        present = {c.name for c in f.columns}
        parts = [k.lower() for k in f.partition_keys]
        if parts:
            kept = [k for k in parts if k in present]
            if kept:
                lines.append("    partition_by:  # from the key=value folders; Iceberg transforms (day, month, bucket[N]) also fit")
                lines += [f"      - {{column: {k}, transform: identity}}" for k in kept]
            for k in parts:
                if k not in present:
                    lines.append(f"    # partition folders {k}=...: {k} is not a column of the files (the lake reads the files' "
                                 "columns only), so the table is not partitioned by it")
        lines.append("    columns:")
        for c in f.columns:
            note = f"  # TODO: {c.note}" if c.note else ""
            type_text = f'"{c.type}"' if "(" in c.type else c.type
            lines.append(f"      - {{name: {c.name}, type: {type_text}}}{note}")
        if not f.columns:
            lines[-1] = "    columns: []  # TODO: no columns could be read from the sample"
    if outside:
        lines.append("")
        lines.append("# Files outside the <source>/<schema>/<table>/ layout, not drafted:")
        lines += [f"#   {o}" for o in outside[:20]]
    return "\n".join(lines) + "\n"


def _format_lines(f: Folder) -> list[str]:
    if f.kind == "dms":
        out = [f"    format: {f.format}  # AWS DMS files", "    load: cdc"]
        if f.format == "csv":
            csv = [f"header: {'true' if f.csv_header else 'false'}"] + ([f'null_marker: "{f.csv_null_marker}"'] if f.csv_null_marker else [])
            out.append(f"    csv: {{{', '.join(csv)}}}")
            if not f.csv_header:
                out.append("    # TODO: header-less CSV: name the columns (in file order); DMS writes them in the source table's order")
        seq = [c.name for c in f.columns if re.search(r"(^|_)(seq|lsn|change_seq|scn)$", c.name)]
        if seq:
            out.append(f"    # sequence_by: {seq[0]}  # TODO: if it is DMS's change sequence ($AR_H_CHANGE_SEQ), order changes by it")
        return out
    if f.kind == "debezium":
        return ["    format: debezium  # Debezium change events (Kafka Connect S3 sink)", "    load: cdc"]
    out = [f"    format: {f.format}  # file drop",
           "    load: snapshot  # TODO: snapshot (each file is the whole table) | append (rows are added; needs mode: history)"
           " | upsert (keyed inserts-or-updates)"]
    if f.format == "csv":
        csv = [f"header: {'true' if f.csv_header else 'false'}"] + ([f'null_marker: "{f.csv_null_marker}"'] if f.csv_null_marker else [])
        out.append(f"    csv: {{{', '.join(csv)}}}")
    return out


def discover(path: str, *, source: str | None = None, sample: int = SAMPLE_FILES) -> tuple[str, list[Folder]]:
    """The draft YAML for what landed under PATH (one source), and the table folders it drafts."""
    landing = open_landing(path)
    keys = sorted(o.key for o in landing.list())
    if not keys:
        raise DiscoveryError(f"{path}: no landed files to discover")
    folders, outside = group_folders(keys, path)
    sources = sorted({f.source for f in folders})
    if source is None:
        if len(sources) != 1:
            raise DiscoveryError(f"{path}: files of {len(sources)} sources ({', '.join(sources) or 'none'}) are here: "
                                 "pass --source NAME (a registry file holds one source)")
        source = sources[0]
    mine = [f for f in folders if f.source == source]
    folder_source = None
    if not mine:
        if len(sources) != 1:
            raise DiscoveryError(f"{path}: no folder of source {source!r} (found {', '.join(sources)})")
        mine, folder_source = folders, sources[0]
    if not IDENTIFIER.fullmatch(source):
        raise DiscoveryError(f"source {source!r} is not a lake identifier (lowercase [a-z][a-z0-9_]*): pass --source NAME "
                             "and land the files under that folder")
    for f in mine:
        discover_folder(landing, f, sample)
    return render(source, mine, path=path, sample=sample, outside=outside, folder_source=folder_source), mine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lake_assets.discover", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a landing folder (root, source, schema or table) or s3://bucket/prefix")
    parser.add_argument("--source", help="the source to draft (when PATH holds several), or its name")
    parser.add_argument("--out", type=Path, help="write the draft here (default: stdout)")
    parser.add_argument("--sample", type=int, default=SAMPLE_FILES, help=f"files read per table folder (default {SAMPLE_FILES})")
    args = parser.parse_args(argv)
    try:
        text, folders = discover(args.path, source=args.source, sample=max(1, args.sample))
    except DiscoveryError as e:
        print(f"discover: {e}", file=sys.stderr)
        return 1
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    todo = sum(1 for f in folders if f.kind != "unknown" and not f.primary_key)
    print(f"discover: {len([f for f in folders if f.kind != 'unknown'])} table(s) drafted"
          + (f" to {args.out}" if args.out else "") + f"; {todo} need a primary_key", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
