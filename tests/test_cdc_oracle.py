"""The CDC contract, checked against a plain-Python oracle on random histories.

Histories mix inserts, updates, deletes, re-inserts, duplicate deliveries, late and out-of-order
files and full reloads; every one goes through the real ledger, landing zone, DMS reader, engine and
Iceberg tables.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demo.dms_writer import cdc_file_name, load_file_name, write_dms_file
from tests.lakehelpers import make_lake

COLUMNS = [("seq", "long"), ("id", "long"), ("val", "long"), ("note", "string")]

SOURCE = """
source: prop
defaults: {{format: {fmt}, csv: {{header: false, null_marker: "NULL"}}}}
tables:
  - name: items
    schema: app
    primary_key: [id]
    {seq_line}
    mode: {mode}
    columns:
      - {{name: seq, type: long}}
      - {{name: id, type: long}}
      - {{name: val, type: long}}
      - {{name: note, type: string}}
"""

BASE = dt.datetime(2026, 11, 21, 10, 0, 0)


@dataclass
class DmsFileSpec:
    name: str
    load_number: int | None
    rows: list[dict]  # CDC rows carry "Op"

    def order(self, row_number: int, seq):
        return (seq is not None, seq or 0, 0 if self.load_number else 1, self.name, row_number)


change = st.fixed_dictionaries(
    {
        "id": st.integers(1, 6),
        "Op": st.sampled_from("IIUUUD"),
        "val": st.integers(-5, 100),
        "seq": st.integers(1, 25),
        "note": st.sampled_from(["a", "b, with comma", 'q"uote', "", None]),
    }
)


@st.composite
def histories(draw):
    """Phases of deliveries; each delivery is a list of files recorded and merged together."""
    n_files = draw(st.integers(1, 6))
    cdc = [
        DmsFileSpec(cdc_file_name(BASE + dt.timedelta(seconds=i)), None, draw(st.lists(change, min_size=1, max_size=8)))
        for i in range(n_files)
    ]
    load_ids = draw(st.sets(st.integers(1, 6), max_size=5))
    load = DmsFileSpec(load_file_name(1), 1, [{"id": i, "val": i * 10, "seq": None, "note": "load"} for i in sorted(load_ids)])
    files = ([load] if load_ids else []) + cdc
    order = draw(st.permutations(files))  # late and out-of-order delivery
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(order) - 1)), max_size=3)))
    deliveries = [order[a:b] for a, b in zip([0] + cuts, cuts + [len(order)]) if order[a:b]]
    if draw(st.booleans()):  # an identical file delivered again
        deliveries.append([draw(st.sampled_from(files))])
    if draw(st.booleans()):  # a full reload: LOAD numbering restarts, then new CDC
        reload_ids = draw(st.sets(st.integers(1, 6), min_size=1, max_size=5))
        reload = DmsFileSpec(load_file_name(1), 1, [{"id": i, "val": i * 7, "seq": None, "note": "reload"} for i in sorted(reload_ids)])
        later = DmsFileSpec(
            cdc_file_name(BASE + dt.timedelta(hours=1)), None, draw(st.lists(change, min_size=1, max_size=5))
        )
        deliveries += [[reload], [later]]
    return deliveries


def oracle(deliveries: list[list[DmsFileSpec]], use_seq: bool) -> dict[int, dict]:
    state: dict[int, tuple] = {}
    seen: set[tuple[str, str]] = set()
    load_max = -1
    for batch in deliveries:
        new = []
        for f in batch:
            ident = (f.name, repr(f.rows))
            if ident not in seen:
                seen.add(ident)
                new.append(f)
        loads = sorted(f.load_number for f in new if f.load_number)
        if loads and loads[0] <= load_max:
            state = {}
            load_max = max(loads)
        else:
            load_max = max([load_max] + loads)
        changes = []
        for f in new:
            for i, r in enumerate(f.rows, start=1):
                changes.append((f.order(i, r["seq"] if use_seq else None), r.get("Op", "I"), r))
        for order, op, r in sorted(changes, key=lambda c: c[0]):
            cur = state.get(r["id"])
            if cur is None or order > cur[0]:
                row = None if op == "D" else {"id": r["id"], "val": r["val"], "note": r["note"], "seq": r["seq"]}
                state[r["id"]] = (order, row)
    return {k: v[1] for k, v in state.items() if v[1] is not None}


def _deliver(lake, batch: list[DmsFileSpec], fmt: str) -> None:
    folder = lake.landing / "prop" / "app" / "items"
    for f in batch:
        rows = [dict(r) for r in f.rows]
        write_dms_file(folder / f.name, rows, COLUMNS, fmt=fmt, cdc=f.load_number is None,
                       gzip=fmt == "csv", null_marker="NULL")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries=histories(), use_seq=st.booleans(), fmt=st.sampled_from(["parquet", "csv"]))
def test_current_mode_matches_oracle(deliveries, use_seq, fmt):
    with tempfile.TemporaryDirectory() as tmp:
        source = SOURCE.format(fmt=fmt, seq_line="sequence_by: seq" if use_seq else "", mode="current")
        lake = make_lake(Path(tmp), {"prop": source})
        for batch in deliveries:
            _deliver(lake, batch, fmt)
            lake.ingest()
        expected = oracle(deliveries, use_seq)
        got = {r["id"]: r for r in lake.rows("prop.items", ["id", "val", "note", "seq"])}
        assert len(got) == len(lake.rows("prop.items")), "duplicate keys in the table"
        assert got == expected


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries=histories())
def test_history_mode_appends_every_change_once(deliveries):
    with tempfile.TemporaryDirectory() as tmp:
        lake = make_lake(Path(tmp), {"prop": SOURCE.format(fmt="parquet", seq_line="", mode="history")})
        expected = []
        seen = set()
        for batch in deliveries:
            _deliver(lake, batch, "parquet")
            lake.ingest()
            for f in batch:
                ident = (f.name, repr(f.rows))
                if ident in seen:
                    continue
                seen.add(ident)
                for i, r in enumerate(f.rows, start=1):
                    expected.append((f.name, i, r.get("Op", "I"), r["id"], r["val"]))
        rows = lake.rows("prop.items")
        got = sorted((r["_lake_file"].rsplit("/", 1)[1].split(".")[0], r["_lake_row"], r["_lake_op"], r["id"], r["val"]) for r in rows)
        assert got == sorted(expected)


def _cdc(second: int, rows: list[dict]) -> DmsFileSpec:
    return DmsFileSpec(cdc_file_name(BASE + dt.timedelta(seconds=second)), None, rows)


def _row(i, op, val, seq=None):
    return {"id": i, "Op": op, "val": val, "seq": seq, "note": None}


SCENARIOS = {
    # A delete merged in one batch; an older update of the same key arrives late in the next.
    "delete-not-undone-by-late-update": [
        [DmsFileSpec(load_file_name(1), 1, [{"id": 1, "val": 1, "seq": None, "note": "load"}])],
        [_cdc(5, [_row(1, "D", 1, seq=9)])],
        [_cdc(2, [_row(1, "U", 2, seq=4)])],
    ],
    # An older insert of a deleted key, late: must not resurrect it.
    "delete-not-undone-by-late-insert": [
        [_cdc(5, [_row(2, "I", 1, seq=5), _row(2, "D", 1, seq=6)])],
        [_cdc(1, [_row(2, "I", 7, seq=1)])],
    ],
    # A late older update must not overwrite a newer row already in the table.
    "late-update-does-not-overwrite": [
        [_cdc(5, [_row(3, "I", 1, seq=5)])],
        [_cdc(1, [_row(3, "U", 9, seq=2)])],
    ],
    # Re-insert after delete, newer: applies and clears the tombstone's effect.
    "reinsert-after-delete": [
        [_cdc(1, [_row(4, "I", 1, seq=1)]), _cdc(2, [_row(4, "D", 1, seq=2)])],
        [_cdc(3, [_row(4, "I", 3, seq=3)])],
    ],
}


@pytest.mark.parametrize("use_seq", [True, False])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_named_histories_match_oracle(tmp_path, name, use_seq):
    deliveries = SCENARIOS[name]
    lake = make_lake(tmp_path, {"prop": SOURCE.format(fmt="parquet", seq_line="sequence_by: seq" if use_seq else "", mode="current")})
    for batch in deliveries:
        _deliver(lake, batch, "parquet")
        lake.ingest()
    got = {r["id"]: r for r in lake.rows("prop.items", ["id", "val", "note", "seq"])}
    assert got == oracle(deliveries, use_seq)
