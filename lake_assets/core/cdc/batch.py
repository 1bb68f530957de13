"""Change batches: the changes of one merge, in one Arrow table, each with its sortable sequence.

The sequence (`_lake_seq`) is a string that sorts in change order and is stored in the table, so
later batches can tell an older late change from a newer one:
  "1<sequence_by value, fixed width>" or "0" when absent, then "~<file order>", then "~<row>".
Full-load files sort before CDC files; CDC file names are creation times.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from lake_assets.core.cdc.dms import OP, ROW, DmsFile, FileChanges, QuarantinedRow
from lake_assets.core.cdc.iceberg import SchemaDriftError
from lake_assets.core.registry import TableConfig

SEQ = "_lake_seq"
FILE = "_lake_file"
_INT_OFFSET = 2**63


class SequenceError(ValueError):
    pass


@dataclass
class ChangeBatch:
    table: TableConfig
    changes: pa.Table  # data columns + _op + _lake_seq + _lake_file + _row
    files: list[DmsFile]
    quarantined: list[tuple[str, QuarantinedRow]] = field(default_factory=list)
    rows_read: int = 0
    per_file: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (rows read, quarantined)

    @property
    def load_numbers(self) -> list[int]:
        return sorted(f.load_number for f in self.files if f.is_load)


def _encode_sequence(values: pa.Array, column: str) -> pa.Array:
    t = values.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        values = values.cast(pa.int64())
        t = values.type
    if pa.types.is_integer(t):
        shifted = pc.add(values.cast(pa.decimal128(19, 0)), pa.scalar(_INT_OFFSET, pa.decimal128(19, 0)))
        return pc.utf8_lpad(shifted.cast(pa.string()), width=20, padding="0")
    if pa.types.is_decimal(t) or pa.types.is_string(t) or pa.types.is_large_string(t):
        text = values.cast(pa.string())
        if pa.types.is_string(t) and not pc.all(pc.fill_null(pc.utf8_is_digit(text), True)).as_py():
            return text  # non-numeric text sequences sort as text
        return pc.utf8_lpad(text, width=40, padding="0")
    raise SequenceError(f"sequence_by column {column} has type {t}; use an integer, decimal, date, timestamp or numeric string")


def sequence_keys(changes: pa.Table, files: pa.Array, order_keys: dict[str, str], sequence_by: str | None) -> pa.Array:
    n = changes.num_rows
    if sequence_by is not None and sequence_by in changes.column_names:
        enc = _encode_sequence(changes.column(sequence_by).combine_chunks(), sequence_by)
        head = pc.if_else(pc.is_null(enc), "0", pc.binary_join_element_wise("1", enc, ""))
    else:
        head = pa.array(["0"] * n, pa.string())
    encoded = files.dictionary_encode()
    order = pa.array([order_keys[k] for k in encoded.dictionary.to_pylist()], pa.string()).take(encoded.indices)
    rows = pc.utf8_lpad(changes.column(ROW).cast(pa.string()), width=12, padding="0")
    return pc.binary_join_element_wise(head, order, rows, "~")


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


def build_batch(table: TableConfig, reads: list[FileChanges]) -> ChangeBatch:
    """Concatenate the files' changes and give every change its sequence."""
    parts = []
    for r in reads:
        t = r.table
        parts.append(t.append_column(FILE, pa.array([r.file.key] * t.num_rows, pa.string())))
    if parts:
        try:
            changes = pa.concat_tables(parts, promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            raise SchemaDriftError(_type_conflict(table, reads)) from None
    else:
        changes = pa.table({OP: pa.array([], pa.string()), ROW: pa.array([], pa.int64()), FILE: pa.array([], pa.string())})
    order_keys = {r.file.key: r.file.order_key for r in reads}
    seq = sequence_keys(changes, changes.column(FILE).combine_chunks(), order_keys, table.sequence_by)
    changes = changes.append_column(SEQ, seq)
    quarantined = [(r.file.key, q) for r in reads for q in r.quarantined]
    return ChangeBatch(
        table=table,
        changes=changes,
        files=[r.file for r in reads],
        quarantined=quarantined,
        rows_read=sum(r.rows_read for r in reads),
        per_file={r.file.key: (r.rows_read, len(r.quarantined)) for r in reads},
    )
