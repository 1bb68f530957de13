"""Change batches: a batch's files read into one Arrow table of changes, each with its position.

Reading is per file: a file that cannot be read, or lacks its sequence_by column, or orders by
another kind than the table, fails alone and the rest of the batch goes on. Rows whose sequence
value is null (in a CDC file) or does not parse as the table's kind are bad rows, quarantined with
the reason, never silently "late".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from lake_assets.core.cdc.dms import OP, ROW, FileChanges, FileReadError, QuarantinedRow, SourceFile
from lake_assets.core.cdc.formats import read_file
from lake_assets.core.cdc.iceberg import SchemaDriftError
from lake_assets.core.cdc.position import (
    EncodedSequence,
    SequenceKind,
    SequenceTypeError,
    encode_sequence,
    file_positions,
    sequence_kind,
)
from lake_assets.core.registry import TableConfig
from lake_assets.core.types import arrow_type

SEQ = "_lake_seq"
FILE = "_lake_file"
# The lake columns every source-aligned row carries besides its position (core/cdc/pipeline.py writes them).
LAKE_OP, BATCH, INGESTED_AT = "_lake_op", "_lake_batch_id", "_lake_ingested_at"


@dataclass(frozen=True)
class LandedInput:
    """One landed file handed to a merge: where it is, its bytes, and its version in the ledger."""

    file: SourceFile
    data: bytes
    version: int = 1

    @property
    def key(self) -> str:
        return self.file.key


@dataclass
class ChangeBatch:
    table: TableConfig
    changes: pa.Table  # data columns + _op + _row + _lake_file + _lake_seq (the position)
    files: list[SourceFile]
    sequence_kind: SequenceKind | None = None
    quarantined: list[tuple[str, QuarantinedRow]] = field(default_factory=list)
    rows_read: int = 0
    per_file: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (rows read, quarantined)
    versions: dict[str, int] = field(default_factory=dict)  # key -> file version

    @property
    def load_numbers(self) -> list[int]:
        return sorted(f.load_number for f in self.files if f.load_number is not None)


def deletes_at(schema: pa.Schema, keyed: pa.Table, keys: tuple[str, ...], *, seq: str, file: str, row: int) -> pa.Table:
    """Changes of `schema` deleting each key of `keyed` at one position (a truncate's, a snapshot's)."""
    n = keyed.num_rows
    at = {OP: "D", SEQ: seq, FILE: file, ROW: row}
    columns = []
    for f in schema:
        if f.name in keys:
            columns.append(keyed.column(f.name).cast(f.type))
        elif f.name in at:
            columns.append(pa.array([at[f.name]] * n, f.type))
        else:
            columns.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def declared_sequence_kind(table: TableConfig) -> SequenceKind | None:
    """The kind the registry's declared sequence_by column orders by (None: not declared, or the
    column's type comes from the files)."""
    if table.sequence_by is None or table.columns is None:
        return None
    for c in table.columns:
        if c.name == table.sequence_by:
            return sequence_kind(arrow_type(c.type))
    return None


def _row_values(t: pa.Table, i: int) -> str:
    values = {c: t.column(c)[i].as_py() for c in t.column_names if c != ROW}
    if OP in values:
        values["Op"] = values.pop(OP)
    return json.dumps(values, default=str)


def _with_positions(table: TableConfig, r: FileChanges, version: int, kind: SequenceKind | None) -> tuple[FileChanges, SequenceKind | None]:
    """The file's changes with their positions; sequence bad rows moved to quarantine.

    Raises FileReadError when the file cannot be ordered at all (its sequence_by column is missing
    or of another kind than the table orders by)."""
    f, t = r.file, r.table
    where = f"{f.key} (table {table.identifier})"
    sequence = None
    quarantined = list(r.quarantined)
    is_load: bool | pa.Array = f.is_load
    if r.sequence is not None:  # the format's own order (Debezium's source position): number text, never null
        if kind is not None and kind is not SequenceKind.NUMBER:
            raise FileReadError(f"{where}: the file's changes are ordered by their source position (a number), "
                                f"but the table orders its changes by {kind.name.lower()}s")
        kind = SequenceKind.NUMBER
        encoded = encode_sequence(r.sequence, kind, "source position")
        if encoded.bad:
            rows = t.column(ROW)
            quarantined += [QuarantinedRow(rows[i].as_py(), encoded.bad[i], _row_values(t, i)) for i in sorted(encoded.bad)]
            keep = pa.array([i not in encoded.bad for i in range(t.num_rows)])
            t, sequence = t.filter(keep), encoded.values.filter(keep)
            is_load = r.load_rows.filter(keep) if r.load_rows is not None else f.is_load
        else:
            sequence = encoded.values
            is_load = r.load_rows if r.load_rows is not None else f.is_load
        quarantined.sort(key=lambda q: q.row)
    elif table.sequence_by is not None:
        col = table.sequence_by
        if col not in r.file_columns:
            raise FileReadError(
                f"{where}: sequence_by column {col!r} is missing from the file; "
                "its changes cannot be ordered (the lake never falls back to file order for such a table)"
            )
        column = t.column(col) if col in t.column_names else None  # None: present in the file, but no value in it
        if column is None or (t.num_rows and column.null_count == t.num_rows):
            # No value to order by: full-load rows rank lowest (an empty part), CDC rows are bad (below).
            encoded = EncodedSequence(pa.nulls(t.num_rows, pa.string()), {})
        else:
            try:
                file_kind = sequence_kind(column.type)
            except SequenceTypeError as e:
                raise FileReadError(f"{where}: sequence_by column {col!r}: {e}") from None
            if kind is not None and file_kind != kind:
                raise FileReadError(
                    f"{where}: sequence_by column {col!r} is {column.type} ({file_kind.name.lower()}s) in this file, "
                    f"but the table orders its changes by {kind.name.lower()}s"
                )
            kind = file_kind
            encoded = encode_sequence(column, kind, col)
        reasons = dict(encoded.bad)
        if not f.is_load:  # a full-load row may carry no sequence: it ranks below every CDC change anyway
            for i in pc.indices_nonzero(pc.is_null(encoded.values)).to_pylist():
                reasons.setdefault(i, f"sequence_by column {col} is null: the change cannot be ordered")
        if reasons:
            rows = t.column(ROW)
            quarantined += [QuarantinedRow(rows[i].as_py(), reasons[i], _row_values(t, i)) for i in sorted(reasons)]
            keep = pa.array([i not in reasons for i in range(t.num_rows)])
            t = t.filter(keep)
            sequence = encoded.values.filter(keep)
        else:
            sequence = encoded.values
        quarantined.sort(key=lambda q: q.row)
    positions = file_positions(is_load=is_load, sequence=sequence, name=f.base, version=version, rows=t.column(ROW), key=f.key)
    t = t.append_column(FILE, pa.array([f.key] * t.num_rows, pa.string())).append_column(SEQ, positions)
    return FileChanges(f, t, quarantined, r.file_columns), kind


def _type_conflict(table: TableConfig, reads: list[FileChanges]) -> str:
    seen: dict[str, tuple[pa.Field, str]] = {}
    for r in reads:
        for f in r.table.schema:
            if f.name not in seen:
                seen[f.name] = (f, r.file.key)
                continue
            first, key = seen[f.name]
            try:
                pa.unify_schemas([pa.schema([first]), pa.schema([f])], promote_options="permissive")
            except (pa.ArrowTypeError, pa.ArrowInvalid):
                return (f"table {table.identifier}: column {f.name} is {first.type} in {key} but {f.type} in {r.file.key}; "
                        "files of one batch must agree (only widenings are merged)")
    return f"table {table.identifier}: the batch's files have incompatible column types"


def read_batch(
    table: TableConfig, inputs: list[LandedInput], *, sequence_kind: SequenceKind | None = None
) -> tuple[ChangeBatch, dict[str, str]]:
    """Read every file into one batch. Returns the batch and, per file that failed, the reason.

    sequence_kind: the kind the table already orders by (from the Iceberg table), else the
    registry's declared kind, else the first readable file's.
    """
    kind = sequence_kind or declared_sequence_kind(table)
    reads: list[FileChanges] = []
    failed: dict[str, str] = {}
    versions: dict[str, int] = {}
    for landed in inputs:
        try:
            read = read_file(landed.file, landed.data, table)
            read, kind = _with_positions(table, read, landed.version, kind)
        except FileReadError as e:
            failed[landed.key] = str(e)
            continue
        except Exception as e:  # noqa: BLE001 - one file's surprise must not wedge its batch
            failed[landed.key] = f"{landed.key} (table {table.identifier}): cannot read: {type(e).__name__}: {str(e)[:500]}"
            continue
        reads.append(read)
        versions[landed.key] = landed.version
    parts = [r.table for r in reads]
    if parts:
        try:
            changes = pa.concat_tables(parts, promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            raise SchemaDriftError(_type_conflict(table, reads)) from None
    else:
        changes = pa.table({OP: pa.array([], pa.string()), ROW: pa.array([], pa.int64()),
                            FILE: pa.array([], pa.string()), SEQ: pa.array([], pa.string())})
    return ChangeBatch(
        table=table,
        changes=changes,
        files=[r.file for r in reads],
        sequence_kind=kind,
        quarantined=[(r.file.key, q) for r in reads for q in r.quarantined],
        rows_read=sum(r.rows_read for r in reads),
        per_file={r.file.key: (r.rows_read, len(r.quarantined)) for r in reads},
        versions=versions,
    ), failed
