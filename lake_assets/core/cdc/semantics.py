"""What a change batch does to a table in `current` mode, decided once for every engine.

- For each key, the change with the highest `_lake_seq` in the batch is its *winner*.
- A winner applies only if it is newer than the row the table holds for that key, and not older than
  the key's tombstone (a delete kept for the retention period): late changes never overwrite newer state
  and never undo a delete.
- An applied I/U writes the winner's row; an applied D removes the row and leaves a tombstone.
- A batch with a full load that restarts numbering (a reload) replaces the table: existing rows and
  tombstones are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pyarrow as pa

from lake_assets.core.cdc.batch import SEQ
from lake_assets.core.cdc.dms import OP

POS = "__pos"  # position of an existing row in the scanned key table
FILE_IX = "__file"  # index of the data file the existing row lives in
WIN = "__w"  # index of a change in the batch


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def winners(changes: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """The last change per key (highest sequence)."""
    if changes.num_rows == 0:
        return changes
    keyed = pa.table({**{k: changes.column(k) for k in keys}, SEQ: changes.column(SEQ)}).append_column(
        WIN, pa.array(range(changes.num_rows), pa.int64())
    )
    con = duckdb.connect()
    con.register("c", keyed)
    part = ", ".join(_q(k) for k in keys)
    idx = con.execute(
        f"SELECT {WIN} FROM c QUALIFY row_number() OVER (PARTITION BY {part} ORDER BY {SEQ} DESC) = 1 ORDER BY {WIN}"
    ).arrow().read_all().column(0)
    con.close()
    return changes.take(idx)


def reject_tombstoned(win: pa.Table, tombstones: pa.Table | None, keys: tuple[str, ...]) -> tuple[pa.Table, int]:
    """Drop winners older than their key's tombstone. Returns (kept winners, number rejected)."""
    if tombstones is None or tombstones.num_rows == 0 or win.num_rows == 0:
        return win, 0
    w = pa.table({**{k: win.column(k) for k in keys}, SEQ: win.column(SEQ)}).append_column(
        WIN, pa.array(range(win.num_rows), pa.int64())
    )
    t = pa.table({**{k: tombstones.column(k) for k in keys}, "tseq": tombstones.column(SEQ)})
    con = duckdb.connect()
    con.register("w", w)
    con.register("t", t)
    on = " AND ".join(f"w.{_q(k)} = t.{_q(k)}" for k in keys)
    keep = con.execute(
        f"SELECT w.{WIN} FROM w LEFT JOIN t ON {on} WHERE t.tseq IS NULL OR w.{SEQ} >= t.tseq ORDER BY w.{WIN}"
    ).arrow().read_all().column(0)
    con.close()
    return win.take(keep), win.num_rows - len(keep)


@dataclass
class MergePlan:
    """The outcome of comparing winners with the rows the table holds for their keys."""

    inserts: pa.Array  # winner indices written as new keys
    updates: pa.Array  # winner indices that replace an existing row
    deletes: pa.Array  # winner indices (op D) that remove an existing row
    stale: int  # winners not newer than the table's row: ignored
    absent_deletes: pa.Array  # winner indices (op D) for keys the table does not hold
    removed: pa.Table  # (FILE_IX, POS) of existing rows replaced or deleted

    @property
    def written(self) -> pa.Array:
        """Winner indices whose rows go into the table."""
        return pa.concat_arrays([self.inserts.cast(pa.int64()), self.updates.cast(pa.int64())])

    @property
    def tombstoned(self) -> pa.Array:
        """Winner indices of applied deletes (including deletes of absent keys): they leave tombstones."""
        return pa.concat_arrays([self.deletes.cast(pa.int64()), self.absent_deletes.cast(pa.int64())])


def plan_merge(existing: pa.Table, win: pa.Table, keys: tuple[str, ...]) -> MergePlan:
    """existing: key columns + _lake_seq + __file + __pos of the rows in candidate data files."""
    w = pa.table({**{k: win.column(k) for k in keys}, SEQ: win.column(SEQ), OP: win.column(OP)}).append_column(
        WIN, pa.array(range(win.num_rows), pa.int64())
    )
    con = duckdb.connect()
    con.register("w", w)
    con.register("e", existing)
    on = " AND ".join(f"w.{_q(k)} = e.{_q(k)}" for k in keys)
    con.execute(
        f"""CREATE TEMP TABLE j AS
        SELECT w.{WIN} AS wi, w.{OP} AS op, w.{SEQ} AS wseq, e.{SEQ} AS eseq, e.{FILE_IX} AS fi, e.{POS} AS pos,
               e.{POS} IS NOT NULL AS found
        FROM w LEFT JOIN e ON {on}"""
    )

    def col(sql: str) -> pa.Array:
        return con.execute(sql).arrow().read_all().column(0).combine_chunks()

    newer = "(NOT found OR eseq IS NULL OR wseq > eseq)"
    plan = MergePlan(
        inserts=col(f"SELECT wi FROM j WHERE NOT found AND op <> 'D' ORDER BY wi"),
        updates=col(f"SELECT DISTINCT wi FROM j WHERE found AND {newer} AND op <> 'D' ORDER BY wi"),
        deletes=col(f"SELECT DISTINCT wi FROM j WHERE found AND {newer} AND op = 'D' ORDER BY wi"),
        stale=con.execute(f"SELECT count(*) FROM j WHERE found AND NOT {newer}").fetchone()[0],
        absent_deletes=col(f"SELECT wi FROM j WHERE NOT found AND op = 'D' ORDER BY wi"),
        removed=con.execute(
            f"SELECT fi AS {FILE_IX}, pos AS {POS} FROM j WHERE found AND {newer} ORDER BY fi, pos"
        ).arrow().read_all(),
    )
    con.close()
    return plan
