"""What a change batch does to a table, decided once for every engine.

- For each key, the change with the highest position (`_lake_seq`) in the batch is its *winner*.
- A winner older than its key's tombstone (a delete kept for the retention period) is rejected: a
  late change never undoes a delete.
- Against the row the table holds for the key, a winner is an insert (no row), an update or a
  delete (newer than the row), or stale (not newer: ignored); a D for a key the table does not hold
  is an absent delete (it leaves a tombstone and changes no row).
- A reload (see `loads`) replaces the table: every non-D winner is an insert, every D an absent delete.

`outcome_sql` is the comparison with the table as one SQL expression; the in-process engine runs it
in DuckDB and the Spark job in Spark SQL, so neither engine restates the rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from lake_assets.core.cdc.batch import SEQ
from lake_assets.core.cdc.dms import OP

WIN = "__w"  # index of a change among the winners
INSERT, UPDATE, DELETE, ABSENT_DELETE, STALE = "insert", "update", "delete", "absent_delete", "stale"
OUTCOMES = (INSERT, UPDATE, DELETE, ABSENT_DELETE, STALE)


def quote(name: str) -> str:
    """A column name quoted for DuckDB SQL."""
    return '"' + name.replace('"', '""') + '"'


def winners(changes: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """The change with the highest position per key, in batch order."""
    if changes.num_rows == 0:
        return changes
    keyed = pa.table({**{k: changes.column(k) for k in keys}, SEQ: changes.column(SEQ)}).append_column(
        WIN, pa.array(range(changes.num_rows), pa.int64())
    )
    con = duckdb.connect()
    con.register("c", keyed)
    part = ", ".join(quote(k) for k in keys)
    idx = con.execute(
        f"SELECT {WIN} FROM c QUALIFY row_number() OVER (PARTITION BY {part} ORDER BY {SEQ} DESC, {WIN} DESC) = 1 ORDER BY {WIN}"
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
    on = " AND ".join(f"w.{quote(k)} = t.{quote(k)}" for k in keys)
    keep = con.execute(
        f"SELECT w.{WIN} FROM w LEFT JOIN t ON {on} WHERE t.tseq IS NULL OR w.{SEQ} >= t.tseq ORDER BY w.{WIN}"
    ).arrow().read_all().column(0)
    con.close()
    return win.take(keep), win.num_rows - len(keep)


def outcome_sql(*, op: str, change_seq: str, held_seq: str, held: str) -> str:
    """The outcome of a winner against the table's row, as a SQL CASE both engines evaluate.

    op, change_seq: the winner's op and position; held_seq: the table row's position; held: a
    boolean expression, true when the table holds a row for the key (an outer join matched)."""
    return (
        f"CASE WHEN NOT coalesce({held}, false) THEN (CASE WHEN {op} = 'D' THEN '{ABSENT_DELETE}' ELSE '{INSERT}' END) "
        f"WHEN {change_seq} > {held_seq} THEN (CASE WHEN {op} = 'D' THEN '{DELETE}' ELSE '{UPDATE}' END) "
        f"ELSE '{STALE}' END"
    )


@dataclass
class Classification:
    """What each winner does to the table (outcome[i] for winner i), and what the engine that
    computed it needs to write it (`private`: the in-process engine's touched files, for example)."""

    outcome: pa.Array  # string, one of OUTCOMES per winner
    private: object = None

    def indices(self, *names: str) -> pa.Array:
        return pc.indices_nonzero(pc.is_in(self.outcome, value_set=pa.array(list(names), pa.string())))

    def count(self, name: str) -> int:
        return len(self.indices(name))

    @property
    def written(self) -> pa.Array:
        """Winners whose rows go into the table."""
        return self.indices(INSERT, UPDATE)

    @property
    def tombstoned(self) -> pa.Array:
        """Winners that leave a tombstone: applied deletes, and deletes of keys the table lacks."""
        return self.indices(DELETE, ABSENT_DELETE)

    @property
    def changes_rows(self) -> bool:
        return len(self.indices(INSERT, UPDATE, DELETE)) > 0


def reload_classification(win: pa.Table) -> Classification:
    """A reload replaces the table: nothing is held, so every winner is an insert or an absent delete."""
    is_delete = pc.equal(win.column(OP), "D")
    return Classification(pc.if_else(is_delete, ABSENT_DELETE, INSERT))
