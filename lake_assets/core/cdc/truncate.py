"""Truncates (T changes, Debezium op `t`): "removes every row of the table with a lower position".

Decided once for every engine, as changes the rest of the pipeline already knows how to apply:
- the table's truncate position (`lake.truncated-below`, carried by every lake commit after the
  first truncate) is the highest T position merged; a change below it is rejected wherever it
  arrives, in the truncate's batch or late in a later one (counted with the tombstone rejections);
- a T newer than the table's truncate position becomes, at its own position, a delete of every
  key the table holds with a lower position (`_lake_seq`), so the engines delete those rows and
  leave tombstones as for any delete;
- a reload replaces the table, and with it what earlier truncates removed.
History tables append T changes like any other (the pipeline does not call this); only Debezium
files carry truncates, and the registry refuses a debezium table in mode scd2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.table import Table

from lake_assets.core.cdc.batch import FILE, SEQ, deletes_at
from lake_assets.core.cdc.dms import OP, ROW
from lake_assets.core.cdc.iceberg import BATCH_ID, lake_snapshots

TRUNCATED_BELOW = "lake.truncated-below"
TRUNCATE = "T"


@dataclass
class Truncation:
    changes: pa.Table  # the batch's changes without T rows, with the deletes they make
    rejected: int = 0  # changes below the truncate position
    summary: dict[str, str] = field(default_factory=dict)


def truncated_below(tbl: Table) -> str | None:
    """The table's truncate position, from its newest lake commit (None: never truncated)."""
    for snap in lake_snapshots(tbl):
        props = snap.summary.additional_properties if snap.summary else {}
        if BATCH_ID in props:
            return props.get(TRUNCATED_BELOW)
    return None


def apply_truncates(tbl: Table, changes: pa.Table, keys: tuple[str, ...], *, reload: bool) -> Truncation:
    """The batch's changes with its truncates applied (see the module docstring)."""
    is_truncate = pc.fill_null(pc.equal(changes.column(OP), TRUNCATE), False)
    truncates = changes.filter(is_truncate)
    rest = changes.filter(pc.invert(is_truncate))
    before = None if reload else truncated_below(tbl)
    newest_ix = None
    if truncates.num_rows:
        newest_ix = pc.index(truncates.column(SEQ), pc.max(truncates.column(SEQ))).as_py()
    newest = truncates.column(SEQ)[newest_ix].as_py() if newest_ix is not None else None
    cutoff = max((p for p in (before, newest) if p is not None), default=None)
    if cutoff is None:
        return Truncation(rest)
    below = pc.less(rest.column(SEQ), cutoff)
    rejected = pc.sum(below.cast(pa.int64())).as_py() or 0
    rest = rest.filter(pc.invert(below))
    if newest is not None and newest == cutoff and newest != before and not reload and tbl.current_snapshot() is not None:
        held = tbl.scan(selected_fields=(*keys, SEQ)).to_arrow()
        held = held.filter(pc.less(held.column(SEQ), newest))
        if held.num_rows:
            t = truncates.slice(newest_ix, 1)
            rest = pa.concat_tables([rest, deletes_at(rest.schema, held, keys, seq=newest, file=t.column(FILE)[0].as_py(),
                                                      row=t.column(ROW)[0].as_py())])
    return Truncation(rest, rejected, {TRUNCATED_BELOW: cutoff})

