"""Debezium change events as Kafka Connect's S3 sink writes them: one JSON envelope per line.

Layout: `<source>/<schema>/<table>/[<partition folders>/]<topic>+<partition>+<start offset>.json`
(`.json.gz` compressed, `.jsonl` accepted): the sink's `topics.dir` is `<source>/<schema>` and the
table folder is the topic (or `source_table` names it). A line is an envelope, with its `schema`
part (`{"schema": ..., "payload": {...}}`, JsonConverter with schemas.enable) or without it.

- `op` c (create), u (update), r (snapshot read), d (delete), t (truncate) become I, U, I, D, T.
  c/u/r rows are the `after` image, d rows the `before` image (its key columns at least, as
  REPLICA IDENTITY DEFAULT gives); r rows rank like full-load rows, below every streamed change.
- The sequence is the source position, one typed rule: `source.lsn` when the event carries one
  (PostgreSQL), else the number `source.ts_ms`, `source.pos`, `source.row` (MySQL's binlog
  position: pos zero-padded to 20 digits, row to 10), compared numerically as DESIGN.md orders a
  sequence. One connector gives one kind; a table's events do not mix them.
- Tombstones (a `null` line, or a `null` payload) follow a delete for Kafka's log compaction: ignored.
- A line that is not JSON, not an envelope, lacks an op or a position, or lacks the image its op
  needs is a bad row (quarantined with its line number and the reason); the file goes on.
"""

from __future__ import annotations

import pyarrow as pa

from lake_assets.core.cdc.dms import (
    OP,
    ROW,
    FileChanges,
    LandingKeyError,
    QuarantinedRow,
    SourceFile,
    check_not_empty,
    gunzip,
    landing_folder,
    printable,
    raw_json,
    read_guarded,
    typed_changes,
)
from lake_assets.core.cdc.jsonrows import json_lines, records_table
from lake_assets.core.registry import TableConfig

EXTENSIONS = (".json.gz", ".jsonl.gz", ".json", ".jsonl")
OPS = {"c": "I", "r": "I", "u": "U", "d": "D", "t": "T"}
VALID_OPS = ("I", "U", "D", "T")
POS_WIDTH, ROW_WIDTH = 20, 10


def parse_key(key: str) -> SourceFile:
    """A Debezium file's key: any name under the table folder with a JSON extension."""
    source, schema, table = landing_folder(key)
    rest = key.strip("/").split("/", 3)[3]
    ext = next((e for e in EXTENSIONS if rest.endswith(e)), None)
    if ext is None or not rest[: -len(ext)].rsplit("/", 1)[-1]:
        raise LandingKeyError(f"{printable(key)}: a Debezium file's name ends in {', '.join(EXTENSIONS)}")
    return SourceFile(key, source, schema, table, rest[: -len(ext)], ext, None)


def source_position(event: dict) -> str:
    """The event's sequence as number text (see the module docstring), or ValueError saying why not."""
    source = event.get("source")
    if not isinstance(source, dict):
        raise ValueError("no source block: the event carries no source position")
    lsn = source.get("lsn")
    if lsn is not None:
        return _natural(lsn, "source.lsn")
    ts, pos, row = source.get("ts_ms"), source.get("pos"), source.get("row", 0)
    if ts is None or pos is None:
        raise ValueError("no source position: neither source.lsn nor source.ts_ms with source.pos")
    ts_text, pos_text, row_text = _natural(ts, "source.ts_ms"), _natural(pos, "source.pos"), _natural(row or 0, "source.row")
    if len(pos_text) > POS_WIDTH or len(row_text) > ROW_WIDTH:
        raise ValueError(f"source.pos {pos_text} or source.row {row_text} is wider than {POS_WIDTH} / {ROW_WIDTH} digits")
    return f"{ts_text}{pos_text.zfill(POS_WIDTH)}{row_text.zfill(ROW_WIDTH)}"


def _natural(v: object, field: str) -> str:
    """A whole number >= 0 as text (JSON numbers, or digits in a string as some converters write)."""
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ValueError(f"{field} {printable(repr(v), 60)} is not a whole number")
    text = str(v).strip()
    if not text.isdigit():
        raise ValueError(f"{field} {printable(repr(v), 60)} is not a whole number >= 0")
    return text.lstrip("0") or "0"


def _change(value: object) -> tuple[str, dict, str] | str:
    """(Debezium op, image, position) of one line's value, or the reason it is a bad row."""
    if not isinstance(value, dict):
        return f"not a Debezium change event: a JSON {type(value).__name__}, not an object"
    event = value
    if "op" not in event and "payload" in event:
        event = event["payload"]
        if not isinstance(event, dict):
            return f"not a Debezium change event: payload is a JSON {type(event).__name__}, not an object"
    op = event.get("op")
    if op is None:
        return "not a Debezium change event: no op field" + (" (fields: " + ", ".join(sorted(event))[:200] + ")" if event else "")
    if op not in OPS:
        return f"unknown Debezium op {printable(repr(op), 60)} (expected c, u, d, r or t)"
    try:
        position = source_position(event)
    except ValueError as e:
        return str(e)
    if op == "t":
        return op, {}, position
    side = "before" if op == "d" else "after"
    image = event.get(side)
    if not isinstance(image, dict):
        return f"op {op} without a {side} image ({side} is {printable(repr(image), 40)})"
    return op, image, position


def read_debezium_file(f: SourceFile, data: bytes, table: TableConfig) -> FileChanges:
    return read_guarded(f, table, lambda where: _read(where, f, data, table))


def _read(where: str, f: SourceFile, data: bytes, table: TableConfig) -> FileChanges:
    check_not_empty(where, data)
    if f.extension.endswith(".gz"):
        data = gunzip(where, data)
    quarantined: list[QuarantinedRow] = []
    images: list[dict] = []
    numbers: list[int] = []
    ops: list[str] = []
    positions: dict[int, tuple[str, bool]] = {}  # line -> (position, ranks like a full-load row)
    for line in json_lines(where, data):
        if line.problem is not None:
            quarantined.append(QuarantinedRow(line.number, line.problem, raw_json({"line": line.text})))
            continue
        if line.value is None or (isinstance(line.value, dict) and "op" not in line.value
                                  and "payload" in line.value and line.value["payload"] is None):
            continue  # a tombstone: Kafka's compaction marker after a delete, no change
        change = _change(line.value)
        if isinstance(change, str):
            quarantined.append(QuarantinedRow(line.number, change, raw_json({"line": line.text})))
            continue
        op, image, position = change
        images.append(image)
        numbers.append(line.number)
        ops.append(OPS[op])
        positions[line.number] = (position, op == "r")
    raw = records_table(where, images, required=table.primary_key)
    raw = raw.append_column(OP, pa.array(ops, pa.string())).append_column(ROW, pa.array(numbers, pa.int64()))
    out = typed_changes(where, f, table, raw, quarantined, valid_ops=VALID_OPS)
    kept = out.table.column(ROW).to_pylist()
    out.sequence = pa.array([positions[n][0] for n in kept], pa.string())
    out.load_rows = pa.array([positions[n][1] for n in kept], pa.bool_())
    return out

