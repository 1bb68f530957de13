"""Both merge engines on the same random CDC histories: identical tables, both equal to a plain-Python oracle.

Histories mix inserts, updates, deletes, duplicate keys, null keys (quarantined), files whose names
put them late or out of order, full loads and reloads, files carrying a column the table does not have
yet, and history mode. Each batch goes through the in-process engine into one catalog and the Spark
engine (the real job, on this module's session) into another.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from lake_assets.core.cdc.iceberg import committed_batches
from lake_assets.core.cdc.engines.inprocess import InProcessEngine
from lake_assets.core.cdc.engines.spark import SparkEngine
from demo.dms_writer import cdc_file_name, load_file_name, table_dir, write_dms_file
from lake_assets.core.naming import quarantine_identifier, tombstone_identifier
from lake_assets.core.spark.merge_job import session_launcher
from tests.spark.conftest import NOW, landed, make_table, sql_catalog, table_rows, unique_source

pytestmark = pytest.mark.spark

COLUMNS = [("id", "long"), ("v", "long"), ("seq", "long")]
EXTRA = ("note", "string")  # not declared: files that carry it add it to the table
BASE = dt.datetime(2026, 11, 21, 10, 0, 0)
EXAMPLES = int(os.environ.get("LAKE_SPARK_EXAMPLES", "25"))

change = st.fixed_dictionaries(
    {
        "id": st.one_of(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), st.none()),  # a null key is quarantined
        "op": st.sampled_from("IIUUD"),
        "v": st.integers(0, 99),
        "seq": st.one_of(st.integers(0, 30), st.integers(0, 30), st.none()),
        "note": st.sampled_from(["x", "y", None]),
    }
)
delivery = st.fixed_dictionaries(
    {
        "load": st.one_of(st.none(), st.none(), st.none(), st.integers(1, 2)),  # a full-load file number, or CDC
        "second": st.integers(0, 59),  # CDC file time: random, so files arrive late and out of order
        "extra": st.booleans(),
        "rows": st.lists(change, max_size=5),
    }
)
histories = st.fixed_dictionaries(
    {
        "mode": st.sampled_from(["current", "current", "history"]),
        "sequence_by": st.booleans(),
        "batches": st.lists(st.lists(delivery, min_size=1, max_size=3), min_size=1, max_size=3),
    }
)


@dataclass
class Delivered:
    key: str  # landing key
    base: str  # file name without extension
    load: int | None
    extra: bool
    rows: list[dict]


def deliver(landing: Path, table, files: list[dict]) -> list[tuple[Delivered, Path]]:
    """Write one batch's files as DMS does, just before it is merged. Names are unique within a batch;
    a later batch may deliver a name again (a re-delivered file with new content)."""
    folder = table_dir(landing, table.source, table.schema, table.source_table)
    names, written = set(), []
    for j, f in enumerate(files):
        load = f["load"]
        if load is not None:
            while load_file_name(load) in names:
                load += 1
            base = load_file_name(load)
        else:
            base = cdc_file_name(BASE + dt.timedelta(seconds=f["second"], milliseconds=j))
        names.add(base)
        cols = COLUMNS + ([EXTRA] if f["extra"] else [])
        rows = [{"id": r["id"], "v": r["v"], "seq": r["seq"], "note": r["note"], "Op": r["op"]} for r in f["rows"]]
        path = write_dms_file(folder / base, rows, cols, fmt="parquet", cdc=load is None)
        written.append((Delivered(path.relative_to(landing).as_posix(), base, load, f["extra"], f["rows"]), path))
    return written


# --- the oracle: the semantics written out plainly, one change at a time ---------------------------


@dataclass
class Expected:
    rows: dict = field(default_factory=dict)  # key -> row (current) ; or list (history)
    history: list = field(default_factory=list)
    counts: list = field(default_factory=list)  # per batch


def oracle(mode: str, sequence_by: bool, batches: list[list[Delivered]]) -> Expected:
    exp = Expected()
    state: dict[int, tuple[tuple, dict]] = {}  # key -> (sequence, row)
    tombstones: dict[int, tuple] = {}  # key -> sequence of the delete
    load_max = -1
    for b, files in enumerate(batches):
        batch_id = f"b{b}"
        changes, quarantined = [], 0
        for f in files:
            order = ("0" if f.load is not None else "1") + f.base
            for n, r in enumerate(f.rows, start=1):
                if r["id"] is None:
                    quarantined += 1
                    continue
                op = "I" if f.load is not None else r["op"]
                head = (1, r["seq"]) if sequence_by and r["seq"] is not None else (0, 0)
                row = {"id": r["id"], "v": r["v"], "seq": r["seq"], "note": r["note"] if f.extra else None,
                       "_lake_op": op, "_lake_batch_id": batch_id}
                changes.append(((head, order, n), op, row, f.key, n))
        counts = {"quarantined": quarantined, "inserted": 0, "updated": 0, "deleted": 0, "stale_skipped": 0,
                  "tombstone_rejected": 0, "appended": 0}
        loads = sorted(f.load for f in files if f.load is not None)
        reload = bool(loads) and loads[0] <= load_max
        load_max = max(loads) if reload else max([load_max] + loads)
        counts["reload"] = reload
        exp.counts.append(counts)
        if mode == "history":
            for _, _, row, key, n in changes:
                exp.history.append(row | {"_lake_file": key, "_lake_row": n})
            counts["appended"] = len(changes)
            continue
        if reload:
            state, tombstones = {}, {}
        win: dict[int, tuple] = {}
        for seq, op, row, _, _ in changes:
            if row["id"] not in win or seq > win[row["id"]][0]:
                win[row["id"]] = (seq, op, row)
        for key, (seq, op, row) in win.items():
            if key in tombstones and seq < tombstones[key]:
                counts["tombstone_rejected"] += 1
                continue
            held = state.get(key)
            if held is None:
                if op == "D":
                    tombstones[key] = seq
                else:
                    state[key] = (seq, row)
                    tombstones.pop(key, None)
                    counts["inserted"] += 1
            elif seq > held[0]:
                if op == "D":
                    del state[key]
                    tombstones[key] = seq
                    counts["deleted"] += 1
                else:
                    state[key] = (seq, row)
                    tombstones.pop(key, None)
                    counts["updated"] += 1
            else:
                counts["stale_skipped"] += 1
    exp.rows = {k: row for k, (_, row) in state.items()}
    return exp


COUNT_FIELDS = ("rows_read", "inserted", "updated", "deleted", "appended", "stale_skipped", "tombstone_rejected",
                "quarantined", "reload", "schema_changes", "failed_files", "per_file", "already_committed")


def _summary_view(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k.startswith("lake.")}


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          # Shrinking re-runs Spark merges for minutes; opt in when debugging a failure.
          phases=tuple(Phase) if os.environ.get("LAKE_SPARK_SHRINK") else tuple(p for p in Phase if p != Phase.shrink),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(h=histories)
def test_engines_agree_with_each_other_and_the_oracle(spark_lake, h):
    source = unique_source("eq")
    table = make_table(source, columns=COLUMNS, mode=h["mode"], sequence_by="seq" if h["sequence_by"] else None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        landing = tmp / "landing"
        inproc_catalog = sql_catalog(tmp / "inprocess")
        inproc = InProcessEngine()
        spark = SparkEngine(session_launcher(spark_lake.spark), landing=str(landing), scratch=str(tmp / "scratch"))
        delivered, results = [], []
        for b, files in enumerate(h["batches"]):
            written = deliver(landing, table, files)
            delivered.append([d for d, _ in written])
            batch = landed(landing, [p for _, p in written])
            a = inproc.merge(inproc_catalog, table, batch, f"b{b}", now=NOW)
            s = spark.merge(spark_lake.catalog, table, batch, f"b{b}", now=NOW)
            for name in COUNT_FIELDS:
                assert getattr(s, name) == getattr(a, name), f"batch b{b}: {name}"
            assert s.snapshot_id is not None
            results.append(s)
        exp = oracle(h["mode"], h["sequence_by"], delivered)
        for b, s in enumerate(results):
            for name, value in exp.counts[b].items():
                assert getattr(s, name) == value, f"batch b{b}: {name} (oracle)"

        key = ["id"] if h["mode"] == "current" else ["_lake_batch_id", "_lake_file", "_lake_row"]
        a_rows = table_rows(inproc_catalog, table.identifier, key)
        s_rows = table_rows(spark_lake.catalog, table.identifier, key)
        assert s_rows == a_rows  # every column, the lake's own included

        got = [{c: r.get(c) for c in ("id", "v", "seq", "note", "_lake_op", "_lake_batch_id", "_lake_file", "_lake_row")} for r in s_rows]
        if h["mode"] == "current":
            want = [exp.rows[k] for k in sorted(exp.rows)]
            got = [{c: r[c] for c in ("id", "v", "seq", "note", "_lake_op", "_lake_batch_id")} for r in got]
        else:
            want = sorted(exp.history, key=lambda r: (r["_lake_batch_id"], r["_lake_file"], r["_lake_row"]))
        assert got == want

        # The commits carry the same batch bookkeeping, and the sidecar tables agree.
        a_batches = committed_batches(inproc_catalog.load_table(table.identifier))
        s_batches = committed_batches(spark_lake.catalog.load_table(table.identifier))
        assert {k: _summary_view(v) for k, v in s_batches.items()} == {k: _summary_view(v) for k, v in a_batches.items()}
        for sidecar, order in ((tombstone_identifier, ["id"]), (quarantine_identifier, ["batch_id", "file", "row"])):
            ident = sidecar(table.source, table.name)
            if inproc_catalog.table_exists(ident) or spark_lake.catalog.table_exists(ident):
                assert table_rows(spark_lake.catalog, ident, order) == table_rows(inproc_catalog, ident, order)
