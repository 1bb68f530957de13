"""Type-2 history (`mode: scd2`): each touched key's versions rebuilt from its events, decided once
for every engine.

A version is one row: the data of the latest change applied to it, `_valid_from` / `_valid_to` (the
`sequence_by` values of the changes that open and close it; `_valid_to` null while it is current)
and `_is_current`. Ordered by the same position as current mode (`_lake_seq`), prefixed by the
table's *era* (the number of reloads before it), so a reload's rows follow all history before it:

- a change whose tracked columns (`track_history_on`, default every column but `sequence_by`)
  differ from the open version's closes it and opens a new one; otherwise it updates the open
  version in place (data and `_lake_seq`, not `_valid_from`);
- a delete closes the open version; a later insert or update opens a new one;
- a late change is put at its place in the key's history: the version it falls in is split (closed
  at the late change, which opens the next), as Databricks' AUTO CDC does with SEQUENCE BY;
- a reload closes, at the new load, every open version whose key the new load lacks
  (`_valid_to`: the highest sequence_by value of the load's rows).

What a key's history is made of is kept in its rows: each version's opening position
(`_lake_from_seq`), its latest change (`_lake_seq`) and the position that closed it
(`_lake_end_seq`; a delete when no version opens there). Deletes that closed nothing (the key had
no open version) are kept as tombstones for the retention period, as in current mode.

One case cannot be rebuilt exactly and is quarantined instead of guessed: a late change that falls
inside a version updated in place after it (`_lake_from_seq` < change < `_lake_seq`), because the
version's data before the in-place update is no longer held.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.table import Table

from lake_assets.core.cdc.batch import BATCH, FILE, INGESTED_AT, LAKE_OP, SEQ
from lake_assets.core.cdc.dms import OP, ROW, QuarantinedRow
from lake_assets.core.cdc.iceberg import BATCH_ID, lake_snapshots
from lake_assets.core.cdc.position import LOAD_PHASE
from lake_assets.core.cdc.semantics import DELETE, INSERT, UPDATE

FROM_SEQ, END_SEQ = "_lake_from_seq", "_lake_end_seq"
VALID_FROM, VALID_TO, IS_CURRENT = "_valid_from", "_valid_to", "_is_current"
SCD2_COLUMNS = (FROM_SEQ, END_SEQ, VALID_FROM, VALID_TO, IS_CURRENT)
ERA = "lake.scd2-era"  # snapshot summary: reloads so far
LAKE_PREFIX = "_lake_"


def table_era(tbl: Table | None) -> int:
    """Reloads the table has had, from its newest lake commit (0 for a new table)."""
    for snap in lake_snapshots(tbl) if tbl is not None else ():
        props = snap.summary.additional_properties if snap.summary else {}
        if BATCH_ID in props and ERA in props:
            return int(props[ERA])
    return 0


def era_prefix(era: int) -> str:
    """Sorts below every position of its era and above every position of the eras before it."""
    return f"{era:04d}~"


def with_era(changes: pa.Table, era: int) -> pa.Table:
    """Changes whose positions carry the era they are merged in."""
    i = changes.schema.get_field_index(SEQ)
    return changes.set_column(i, SEQ, pc.binary_join_element_wise(era_prefix(era), changes.column(SEQ), ""))


def schema_of(current: pa.Schema, sequence_type: pa.DataType) -> pa.Schema:
    """An scd2 table's schema: the current-mode row (data and lake columns) and the version columns."""
    return pa.schema(list(current) + [
        pa.field(FROM_SEQ, pa.string()), pa.field(END_SEQ, pa.string()),
        pa.field(VALID_FROM, sequence_type), pa.field(VALID_TO, sequence_type), pa.field(IS_CURRENT, pa.bool_()),
    ])


@dataclass
class _Event:
    pos: str
    op: str  # I, U or D
    image: dict | None  # the row's data columns (None for a delete)
    value: object  # the sequence_by value
    batch: str | None = None
    ingested: object = None
    new: int | None = None  # index of the change in the batch (None: rebuilt from what the table holds)


@dataclass
class Rebuilt:
    """What a batch does to the versions of the keys it touches."""

    rows: pa.Table  # versions to write, and held versions to remove, in the table's row form
    outcome: pa.Array  # INSERT / UPDATE / DELETE per row of `rows` (DELETE rows are held versions)
    removed: pa.Array  # indices of held rows that the commit removes (updated or deleted versions)
    deletes: pa.Table  # every delete of the batch: key columns, _lake_seq, _valid_to (the tombstones)
    quarantined: dict[int, str] = field(default_factory=dict)  # change index -> reason
    closed_by_delete: int = 0


def _tracked(image: dict, track: tuple[str, ...]) -> tuple:
    return tuple(image.get(c) for c in track)


def rebuild(held: pa.Table, changes: pa.Table, tombstones: pa.Table | None, *, keys: tuple[str, ...],
            sequence_by: str, track_history_on: tuple[str, ...] | None, era: int, reload: bool,
            batch_id: str, now: dt.datetime, schema: pa.Schema) -> Rebuilt:
    """The versions of every key of `changes` after the batch (positions already era-prefixed).

    held: the table's rows of those keys (on a reload: every current version of the table);
    tombstones: earlier deletes (key columns, _lake_seq, _valid_to); schema: the row form to return."""
    data = [c for c in schema.names if not c.startswith(LAKE_PREFIX) and c not in SCD2_COLUMNS]
    track = tuple(track_history_on) if track_history_on is not None else tuple(c for c in data if c != sequence_by)
    held_rows = held.to_pylist()
    new_rows = changes.to_pylist()
    by_key_held: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(held_rows):
        by_key_held[tuple(r[k] for k in keys)].append(i)
    by_key_new: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(new_rows):
        by_key_new[tuple(r[k] for k in keys)].append(i)
    tomb_by_key: dict[tuple, list[dict]] = defaultdict(list)
    if tombstones is not None and not reload:
        for t in tombstones.to_pylist():
            tomb_by_key[tuple(t[k] for k in keys)].append(t)

    barrier = era_prefix(era)
    loaded = [r for r in new_rows if r[SEQ][len(barrier):].startswith(LOAD_PHASE)]
    in_load = {tuple(r[k] for k in keys) for r in loaded}
    # The highest sequence value of the load, by position (which orders values by their kind).
    valued = [r for r in loaded if r.get(sequence_by) is not None]
    barrier_value = max(valued, key=lambda r: r[SEQ])[sequence_by] if valued else None

    quarantined: dict[int, str] = {}
    out_rows: list[dict] = []
    outcome: list[str] = []
    removed: list[int] = []
    closed_by_delete = 0
    for key in sorted(by_key_held.keys() | by_key_new.keys(), key=repr):
        versions_held = [held_rows[i] for i in by_key_held.get(key, [])]
        opens = {v[FROM_SEQ] for v in versions_held}
        events: dict[str, _Event] = {}
        for v in versions_held:
            image = {c: v.get(c) for c in data}
            events.setdefault(v[FROM_SEQ], _Event(v[FROM_SEQ], v[LAKE_OP], image, v[VALID_FROM], v[BATCH], v[INGESTED_AT]))
            if v[SEQ] != v[FROM_SEQ]:
                events.setdefault(v[SEQ], _Event(v[SEQ], v[LAKE_OP], image, v.get(sequence_by), v[BATCH], v[INGESTED_AT]))
            if v[END_SEQ] is not None and v[END_SEQ] not in opens:
                events.setdefault(v[END_SEQ], _Event(v[END_SEQ], "D", None, v[VALID_TO]))
        for t in tomb_by_key.get(key, []):
            events.setdefault(t[SEQ], _Event(t[SEQ], "D", None, t[VALID_TO]))
        if reload and key not in in_load and any(v[IS_CURRENT] for v in versions_held):
            events.setdefault(barrier, _Event(barrier, "D", None, barrier_value))
        for i in by_key_new.get(key, []):
            r = new_rows[i]
            inside = next((v for v in versions_held if v[FROM_SEQ] < r[SEQ] < v[SEQ]), None)
            if inside is not None:
                quarantined[i] = (
                    f"a late change (position {r[SEQ]}) falls inside a version updated in place after it "
                    f"(from {inside[FROM_SEQ]} to {inside[SEQ]}): the version's earlier data is no longer held, "
                    "so its place in the key's history cannot be rebuilt exactly")
                continue
            events[r[SEQ]] = _Event(r[SEQ], r[OP], None if r[OP] == "D" else {c: r.get(c) for c in data},
                                    r.get(sequence_by), batch_id, now, new=i)

        versions: list[dict] = []
        current: dict | None = None
        for e in sorted(events.values(), key=lambda e: e.pos):
            if e.op == "D":
                if current is not None:
                    current.update({END_SEQ: e.pos, VALID_TO: e.value, IS_CURRENT: False})
                    versions.append(current)
                    current = None
                    closed_by_delete += e.new is not None
                continue
            assert e.image is not None
            if current is not None and _tracked(current, track) == _tracked(e.image, track):
                current.update({**e.image, SEQ: e.pos, LAKE_OP: e.op, BATCH: e.batch, INGESTED_AT: e.ingested})
                continue
            if current is not None:
                current.update({END_SEQ: e.pos, VALID_TO: e.value, IS_CURRENT: False})
                versions.append(current)
            current = {**e.image, SEQ: e.pos, LAKE_OP: e.op, BATCH: e.batch, INGESTED_AT: e.ingested,
                       FROM_SEQ: e.pos, END_SEQ: None, VALID_FROM: e.value, VALID_TO: None, IS_CURRENT: True}
        if current is not None:
            versions.append(current)

        held_by_from = {v[FROM_SEQ]: (i, v) for i, v in zip(by_key_held.get(key, []), versions_held)}
        kept = set()
        for v in versions:
            was = held_by_from.get(v[FROM_SEQ])
            if was is None:
                out_rows.append(v)
                outcome.append(INSERT)
                continue
            kept.add(v[FROM_SEQ])
            if any(v.get(c) != was[1].get(c) for c in schema.names):
                out_rows.append(v)
                outcome.append(UPDATE)
                removed.append(was[0])
        for from_seq, (i, v) in held_by_from.items():
            if from_seq not in kept:
                out_rows.append(v)
                outcome.append(DELETE)
                removed.append(i)

    deletes = [r for i, r in enumerate(new_rows) if r[OP] == "D" and i not in quarantined]
    seq_type = schema.field(VALID_FROM).type
    delete_table = pa.table({
        **{k: pa.array([r[k] for r in deletes], changes.schema.field(k).type) for k in keys},
        SEQ: pa.array([r[SEQ] for r in deletes], pa.string()),
        VALID_TO: pa.array([r.get(sequence_by) for r in deletes], seq_type),
    })
    return Rebuilt(
        rows=pa.Table.from_pylist(out_rows, schema=schema),
        outcome=pa.array(outcome, pa.string()),
        removed=pa.array(sorted(removed), pa.int64()),
        deletes=delete_table,
        quarantined=quarantined,
        closed_by_delete=closed_by_delete,
    )


def quarantine_rows(changes: pa.Table, quarantined: dict[int, str]) -> list[tuple[str, QuarantinedRow]]:
    """The quarantine entries of changes the rebuild could not place: (file, row, reason, raw values)."""
    out = []
    for i, reason in sorted(quarantined.items()):
        r = changes.slice(i, 1).to_pylist()[0]
        raw = {k: v for k, v in r.items() if not k.startswith(LAKE_PREFIX) and k not in (OP, ROW)}
        out.append((r[FILE], QuarantinedRow(int(r[ROW]), reason, json.dumps(raw, default=str))))
    return out
