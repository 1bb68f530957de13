"""The files a SQL extract lands (`format: sql`): their names, and what each says about the extract.

`<source>/<schema>/<table>/<NNNNNNNN>-delta.parquet` (rows whose watermark is in the extract's range:
upserts) or `<NNNNNNNN>-full.parquet` (every row of the source table: a snapshot, diffed against the
lake table so rows the source deleted are deleted). The number counts the table's extracts, so file
order is extraction order: a later extract's rows are a later reading of the source and win. Each
file carries its extract's watermark range in its Parquet metadata (`lake.extract`), so the ledger
record of the file *is* the watermark's advance: nothing else has to be committed with it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq

EXTRACT_META = b"lake.extract"
DELTA, FULL = "delta", "full"
_NAME = re.compile(r"^(\d{8})-(delta|full)$")


@dataclass(frozen=True)
class ExtractInfo:
    """One extract, as its file's metadata records it."""

    number: int  # 1, 2, ... per table
    kind: str  # delta | full
    watermark: str  # the column
    pg_type: str  # its database type, for comparisons (CAST($1 AS <pg_type>))
    low: str | None  # rows with low <= watermark < high (delta; low None: from the start)
    high: str | None  # the next delta starts here (None: the table had no rows to bound)
    rows: int
    extracted_at: str  # ISO time (UTC) of the read
    last_full_number: int  # the newest full extract up to and including this one
    last_full_at: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()


def extract_name(number: int, kind: str) -> str:
    return f"{number:08d}-{kind}"


def parse_extract_name(base: str) -> tuple[int, str] | None:
    """(number, kind) of a landed extract's base name (the name without `.parquet`), else None."""
    m = _NAME.match(base.rsplit("/", 1)[-1])
    return (int(m.group(1)), m.group(2)) if m else None


def is_full_extract(base: str) -> bool:
    parsed = parse_extract_name(base)
    return parsed is not None and parsed[1] == FULL


def extract_file(rows: pa.Table, info: ExtractInfo) -> bytes:
    """The Parquet bytes of an extract, its ExtractInfo in the file's key-value metadata."""
    rows = rows.replace_schema_metadata({**(rows.schema.metadata or {}), EXTRACT_META: info.to_json()})
    sink = pa.BufferOutputStream()
    pq.write_table(rows, sink)
    return sink.getvalue().to_pybytes()


def read_extract_info(where: str, data: bytes) -> ExtractInfo:
    """The ExtractInfo of an extract file; ValueError naming `where` when it has none."""
    meta = pq.read_schema(pa.BufferReader(data)).metadata or {}
    if EXTRACT_META not in meta:
        raise ValueError(f"{where}: a sql table's file without its extract's metadata ({EXTRACT_META.decode()}): "
                         "only the lake's extracts land in a sql table's folder")
    return ExtractInfo(**json.loads(meta[EXTRACT_META]))
