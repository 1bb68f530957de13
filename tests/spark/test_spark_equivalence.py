"""Both merge engines on the same random hostile histories: identical tables, sidecars, snapshot
summaries and counts, both equal to the one oracle (tests/oracle.py).

Histories mix inserts, updates, deletes, null keys (quarantined), typed sequences (negative and
35-digit numbers in strings, nulls and junk: bad rows), files whose names put them late or out of
order, full loads in any order, a file re-delivered under its name with new content (its next
version; a reload when it is a LOAD file already in the current load), operator reloads, files
carrying a column the table does not have yet, and history mode. Each batch goes through the
in-process engine into one catalog and the Spark engine (the real job, on this module's session)
into another; a batch that fails on schema drift must fail the same way in both, leaving nothing.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from demo.dms_writer import cdc_file_name, load_file_name, table_dir, write_dms_file
from lake_assets.core.cdc.iceberg import SchemaDriftError, committed_batches
from lake_assets.core.cdc.inprocess import InProcessEngine
from lake_assets.core.naming import quarantine_identifier, tombstone_identifier
from lake_assets.core.spark.engine import SparkEngine
from lake_assets.core.spark.merge_job import session_launcher
from tests.oracle import OracleFile, TableOracle
from tests.spark.conftest import NOW, landed, make_table, sql_catalog, table_rows, unique_source

pytestmark = pytest.mark.spark

COLUMNS = [("id", "long"), ("v", "long"), ("seq", "string")]
# `note` is not declared: files that carry it add it to the table, as text or (drift) as a number.
BASE = dt.datetime(2026, 11, 21, 10, 0, 0)
EXAMPLES = int(os.environ.get("LAKE_SPARK_EXAMPLES", "25"))

seq_value = st.one_of(
    st.integers(-9, 30).map(str), st.integers(-9, 30).map(str), st.decimals(-5, 5, places=2).map(str),
    st.integers(10**34, 10**35 - 1).map(str), st.none(), st.sampled_from(["junk", ""]),
)
change = st.fixed_dictionaries(
    {
        "id": st.one_of(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), st.none()),  # a null key is quarantined
        "op": st.sampled_from("IIUUD"),
        "v": st.integers(0, 99),
        "seq": seq_value,
        "note": st.sampled_from(["x", "y", None]),
    }
)
delivery = st.fixed_dictionaries(
    {
        "load": st.one_of(st.none(), st.none(), st.none(), st.integers(0, 2)),  # a full-load file number, or CDC
        "second": st.integers(0, 9),  # CDC file time: few names, so later batches re-deliver them (new versions)
        "extra": st.booleans(),
        "drift": st.sampled_from([False] * 4 + [True]),  # `note` as a number: a type change the table cannot take
        "rows": st.lists(change, max_size=5),
    }
)
histories = st.fixed_dictionaries(
    {
        "mode": st.sampled_from(["current", "current", "history", "scd2"]),
        "sequence_by": st.booleans(),
        # Position-delete files (merge-on-read) or rewritten files: Spark's MERGE and ours either way.
        "write": st.sampled_from(["copy_on_write", "merge_on_read", "auto"]),
        "reload_at": st.one_of(st.none(), st.integers(0, 2)),
        "batches": st.lists(st.lists(delivery, min_size=1, max_size=3), min_size=1, max_size=3),
    }
)


def deliver(landing: Path, table, files: list[dict], versions: dict[str, int]) -> list[tuple[OracleFile, Path, bool]]:
    """Write one batch's files as DMS does. Names are unique within a batch; a name delivered again
    in a later batch is that file's next version."""
    folder = table_dir(landing, table.source, table.schema, table.source_table)
    names, written = set(), []
    for f in files:
        base = load_file_name(f["load"]) if f["load"] else ("LOAD00000000" if f["load"] == 0 else cdc_file_name(BASE + dt.timedelta(seconds=f["second"])))
        if base in names:
            continue
        names.add(base)
        note_type = "long" if f["drift"] else "string"
        cols = COLUMNS + ([("note", note_type)] if f["extra"] else [])
        rows = [{"id": r["id"], "v": r["v"], "seq": r["seq"], "note": (len(r["note"]) if r["note"] else None) if f["drift"] else r["note"],
                 "Op": r["op"]} for r in f["rows"]]
        path = write_dms_file(folder / base, rows, cols, fmt="parquet", cdc=f["load"] is None)
        key = path.relative_to(landing).as_posix()
        versions[key] = versions.get(key, 0) + 1
        oracle_rows = tuple({**r, "note": r["note"] if f["extra"] else None} for r in rows)
        written.append((OracleFile(key, oracle_rows, versions[key]), path, f["drift"]))
    return written


COUNT_FIELDS = ("rows_read", "inserted", "updated", "deleted", "appended", "stale_skipped", "tombstone_rejected",
                "quarantined", "reload", "schema_changes", "failed_files", "per_file", "already_committed")


def _summary_view(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k.startswith("lake.")}


def _rows(*changes):
    return [{"op": op, "id": i, "v": v, "seq": seq, "note": None} for op, i, v, seq in changes]


def _file(rows, load=None, second=0, extra=False):
    return {"load": load, "second": second, "extra": extra, "drift": False, "rows": rows}


# Random histories rarely apply a delete to a row an earlier batch wrote (a run of 25 examples
# had none), so one history is always run: a full load, then deletes and updates of held rows,
# an absent delete, then late changes that are stale, tombstoned, or newer than full-load rows.
HELD_ROWS = {"mode": "current", "sequence_by": True, "reload_at": None, "write": "merge_on_read", "batches": [
    [_file(_rows(("I", 1, 1, "1"), ("I", 2, 2, "1"), ("I", 3, 3, "1"), ("I", 4, 4, "1")), load=1)],
    [_file(_rows(("U", 1, 11, "10"), ("D", 2, 2, "10"), ("D", 6, 0, "10")), second=5, extra=True)],
    [_file(_rows(("U", 2, 22, "5"), ("U", 1, 19, "9"), ("U", 3, 33, "-2"), ("D", 4, 4, "-1"), ("I", 6, 6, "3")), second=3)],
]}


# Type-2 history on both engines: versions split by late changes, closed by deletes, reopened by a
# re-insert, and closed by a reload whose new load lacks the key.
SCD2_VERSIONS = {"mode": "scd2", "sequence_by": True, "reload_at": 3, "write": "auto", "batches": [
    [_file(_rows(("I", 1, 1, "1"), ("I", 2, 2, "1"), ("I", 3, 3, "1")), load=1)],
    [_file(_rows(("U", 1, 11, "10"), ("D", 2, 2, "10"), ("U", 3, 3, "10")), second=5)],
    [_file(_rows(("U", 1, 15, "5"), ("I", 2, 20, "12"), ("U", 2, 21, "7")), second=3)],
    [_file(_rows(("I", 1, 100, None), ("I", 4, 400, None)), load=1)],
]}


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          # Shrinking re-runs Spark merges for minutes; opt in when debugging a failure.
          phases=tuple(Phase) if os.environ.get("LAKE_SPARK_SHRINK") else tuple(p for p in Phase if p != Phase.shrink),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@example(h=HELD_ROWS)
@example(h=SCD2_VERSIONS)
@given(h=histories)
def test_engines_agree_with_each_other_and_the_oracle(spark_lake, h):
    source = unique_source("eq")
    if h["mode"] == "scd2":  # type-2 history is ordered by sequence_by values
        h = {**h, "sequence_by": True}
    table = make_table(source, columns=COLUMNS, mode=h["mode"], sequence_by="seq" if h["sequence_by"] else None).model_copy(
        update={"write": h.get("write", "auto")})
    oracle = TableOracle(columns=("id", "v", "seq", "note"), sequence="string" if h["sequence_by"] else None, mode=h["mode"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        landing = tmp / "landing"
        inproc_catalog = sql_catalog(tmp / "inprocess")
        inproc = InProcessEngine()
        spark = SparkEngine(session_launcher(spark_lake.spark), landing=str(landing), scratch=str(tmp / "scratch"))
        versions: dict[str, int] = {}
        pending_reload = False
        for b, files in enumerate(h["batches"]):
            written = deliver(landing, table, files, versions)
            batch = landed(landing, [p for _, p, _ in written], {p: f.version for f, p, _ in written})
            pending_reload = pending_reload or h["reload_at"] == b
            outcomes = []
            for engine, catalog in ((inproc, inproc_catalog), (spark, spark_lake.catalog)):
                try:
                    outcomes.append(engine.merge(catalog, table, batch, f"b{b}", now=NOW, reload_requested=pending_reload))
                except SchemaDriftError as e:
                    outcomes.append(e)
            a, s = outcomes
            if isinstance(a, SchemaDriftError) or isinstance(s, SchemaDriftError):
                assert str(a) == str(s), f"batch b{b}: the engines disagree on the drift"
                continue  # nothing was written: the oracle sees no batch either
            for name in COUNT_FIELDS:
                assert getattr(s, name) == getattr(a, name), f"batch b{b}: {name}"
            assert s.snapshot_id is not None
            counts = oracle.merge([f for f, _, _ in written], reload_requested=pending_reload)
            # scd2 counts versions, which the oracle does not: its rows are compared below
            names = ("quarantined", "reload") if h["mode"] == "scd2" else (
                "inserted", "updated", "deleted", "stale_skipped", "tombstone_rejected", "appended", "quarantined", "reload")
            for name in names:
                assert getattr(s, name) == getattr(counts, name), f"batch b{b}: {name} (oracle)"
            if any(f.load_number is not None for f, _, _ in written):
                pending_reload = False

        if not inproc_catalog.table_exists(table.identifier):
            assert not spark_lake.catalog.table_exists(table.identifier)
            return
        key = {"current": ["id"], "scd2": ["id", "_lake_from_seq"]}.get(h["mode"], ["_lake_batch_id", "_lake_file", "_lake_row"])
        a_rows = table_rows(inproc_catalog, table.identifier, key)
        s_rows = table_rows(spark_lake.catalog, table.identifier, key)
        assert s_rows == a_rows  # every column, the lake's own included

        if h["mode"] == "current":
            got = [{c: r.get(c) for c in ("id", "v", "seq", "note")} for r in s_rows]
            want = oracle.current_rows()
        elif h["mode"] == "scd2":
            def version(r):
                return tuple(str(r.get(c)) for c in ("id", "v", "seq", "note", "_valid_from", "_valid_to", "_is_current"))
            got, want = sorted(map(version, s_rows)), sorted(map(version, oracle.scd2_rows()))
        else:
            got = sorted((r["_lake_file"], r["_lake_row"], r["_lake_op"], r["id"], r["v"]) for r in s_rows)
            want = sorted((r["_lake_file"], r["_lake_row"], r["_lake_op"], r["id"], r["v"]) for r in oracle.history)
        assert got == want

        # The commits carry the same batch bookkeeping, and the sidecar tables agree.
        a_batches = committed_batches(inproc_catalog.load_table(table.identifier))
        s_batches = committed_batches(spark_lake.catalog.load_table(table.identifier))
        assert {k: _summary_view(v) for k, v in s_batches.items()} == {k: _summary_view(v) for k, v in a_batches.items()}
        for sidecar, order in ((tombstone_identifier, ["id", "_lake_seq"]), (quarantine_identifier, ["batch_id", "file", "row"])):
            ident = sidecar(table.source, table.name)
            if inproc_catalog.table_exists(ident) or spark_lake.catalog.table_exists(ident):
                assert table_rows(spark_lake.catalog, ident, order) == table_rows(inproc_catalog, ident, order)
        if spark_lake.catalog.table_exists(quarantine_identifier(table.source, table.name)):
            q = table_rows(spark_lake.catalog, quarantine_identifier(table.source, table.name), ["file", "row"])
            assert sorted((r["file"], r["file_version"], r["row"]) for r in q) == sorted(oracle.quarantine)
