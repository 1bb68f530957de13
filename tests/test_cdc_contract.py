"""The CDC contract on random hostile deliveries, through the real landing zone, ledger, runner,
reader, pipeline and Iceberg tables, compared with the plain oracle (tests/oracle.py).

A history is a list of ingests; before each, files land as real pipelines land them: CDC files
whose names contradict their sequence, LOAD files in any order and number (LOAD00000000 included),
a file re-landed under its name with new content (a new version, a reload when it is a LOAD file),
the bytes of an earlier file under a new name (a duplicate), the same bytes again (an identical
re-delivery). Sequence values are typed: negative and 35-digit numbers in strings, decimals,
instants with time zones, dates, plus nulls and junk where a format can carry them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import tempfile
from decimal import Decimal
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from demo.dms_writer import cdc_file_name, load_file_name, write_dms_file
from lake_assets.core.maintenance import maintain
from lake_assets.core.registry import MaintenanceSpec
from tests.lakehelpers import make_lake
from tests.oracle import LandingOracle, TableOracle, sequence_value

BASE = dt.datetime(2026, 11, 21, 10, 0, 0)
KINDS = [None, "long", "string", "decimal(38,2)", "timestamptz", "date"]
SOURCE = """
source: prop
defaults: {{format: {fmt}, csv: {{header: false, null_marker: "NULL"}}}}
tables:
  - name: items
    schema: app
    primary_key: [id]
    {seq_line}
    mode: {mode}
    write: {write}
    {track_line}
    columns:
      - {{name: seq, type: "{seq_type}"}}
      - {{name: id, type: long}}
      - {{name: val, type: long}}
      - {{name: note, type: string}}
"""
DATA = ("id", "val", "note", "seq")


def seq_values(kind: str | None, fmt: str):
    """Sequence values of a kind: mostly comparable, with ties, plus nulls and junk where they can be written."""
    if kind is None:  # the column is data, not the order: no bad values
        return st.one_of(st.integers(-3, 12), st.none())
    if kind == "long":
        values = st.one_of(st.integers(-3, 12), st.integers(-(2**62), 2**62))
        bad = st.just("12abc") if fmt == "csv" else st.nothing()
    elif kind == "string":
        values = st.one_of(
            st.integers(-20, 20).map(str),
            st.decimals(-20, 20, places=2).map(str),
            st.integers(10**34, 10**35 - 1).map(str),  # a DMS $AR_H_CHANGE_SEQ: 35 digits
            st.sampled_from(["-2.00", "-1.00", "9", "10", "0.5", "+3"]),
        )
        bad = st.sampled_from(["abc", "", "1.2.3", "--1"])
    elif kind == "decimal(38,2)":
        values = st.decimals(-50, 50, places=2)
        bad = st.nothing()  # the DMS writer formats every value of a decimal column as a number
    elif kind == "timestamptz":
        def at(minutes: int, offset_hours: int):
            tz = dt.timezone(dt.timedelta(hours=offset_hours))
            local = (BASE + dt.timedelta(minutes=minutes)).replace(tzinfo=dt.UTC).astimezone(tz)
            return local.isoformat(sep=" ") if fmt == "csv" else local
        values = st.builds(at, st.integers(0, 30), st.integers(-8, 9))
        bad = st.just("yesterday") if fmt == "csv" else st.nothing()
    else:
        values = st.integers(-5, 20).map(lambda d: (BASE + dt.timedelta(days=d)).date())
        bad = st.just("2026-13-45") if fmt == "csv" else st.nothing()
    return st.one_of(values, values, values, values, st.none(), bad)


def change(kind, fmt):
    return st.fixed_dictionaries({
        "Op": st.sampled_from("IIUUUD"),
        "id": st.one_of(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), st.none()),
        "val": st.integers(-5, 100),
        "note": st.sampled_from(["a", "b, with comma", 'q"uote', "", None]),
        "seq": seq_values(kind, fmt),
    })


def load_row(kind, fmt):
    return st.fixed_dictionaries({"id": st.integers(1, 5), "val": st.integers(0, 9), "note": st.just("load"),
                                  "seq": st.one_of(st.none(), seq_values(kind, fmt))})


@st.composite
def histories(draw):
    kind = draw(st.sampled_from(KINDS))
    fmt = draw(st.sampled_from(["parquet", "csv"]))
    mode = draw(st.sampled_from(["current", "current", "current", "history"]))
    action = st.one_of(
        st.tuples(st.just("cdc"), st.integers(0, 6), st.lists(change(kind, fmt), min_size=1, max_size=6)),
        st.tuples(st.just("load"), st.integers(0, 3), st.lists(load_row(kind, fmt), max_size=4)),
        st.tuples(st.just("copy"), st.integers(0, 20), st.integers(7, 12)),  # an earlier file's bytes under a new CDC name
        st.tuples(st.just("again"), st.integers(0, 20), st.just(0)),  # the same bytes landed again
    )
    ingests = draw(st.lists(st.lists(action, min_size=1, max_size=4), min_size=1, max_size=4))
    reload_at = draw(st.one_of(st.none(), st.integers(0, len(ingests) - 1)))
    write = draw(st.sampled_from(["copy_on_write", "merge_on_read", "auto"]))  # how replaced rows are removed
    # How the engine finds the rows a change replaces: DuckDB over local files, or whole files
    # through the table's FileIO (what it does for files in an object store).
    lookup = draw(st.sampled_from(["local", "object_store"]))
    # Maintenance between ingests (compaction, manifest rewrite, snapshot and orphan expiry) changes no answer.
    maintain = draw(st.sets(st.integers(0, len(ingests) - 1), max_size=2))
    return {"kind": kind, "fmt": fmt, "mode": mode, "ingests": ingests, "reload_at": reload_at, "write": write, "lookup": lookup,
            "maintain": maintain}


def _comparable(kind, v):
    if v is None:
        return None
    if kind == "timestamptz":
        return sequence_value(kind, v)
    if kind in (None, "long"):
        return int(v)
    if kind == "decimal(38,2)":
        return Decimal(str(v)).quantize(Decimal("0.01"))
    if kind == "date":
        return v if isinstance(v, dt.date) else dt.date.fromisoformat(v)
    return v


def _land(folder: Path, name: str, rows: list[dict], h: dict, cdc: bool) -> Path:
    columns = [("seq", h["kind"] if h["kind"] not in (None,) else "long"), ("id", "long"), ("val", "long"), ("note", "string")]
    return write_dms_file(folder / name, rows, columns, fmt=h["fmt"], cdc=cdc, gzip=h["fmt"] == "csv", null_marker="NULL")


@st.composite
def rewrite_histories(draw):
    """Long runs of small CDC files over the loaded keys: each key replaced again and again, so
    rows live in files that earlier merges gave delete files (or rewrote), then replaced again."""
    kind = draw(st.sampled_from([None, "long", "string"]))
    load = ("load", 1, [{"id": i, "val": 0, "note": "load", "seq": None} for i in range(1, 6)])
    cdc = st.tuples(st.just("cdc"), st.integers(0, 30), st.lists(change(kind, "parquet"), min_size=1, max_size=4))
    ingests = [[load]] + draw(st.lists(st.lists(cdc, min_size=1, max_size=2), min_size=3, max_size=8))
    return {"kind": kind, "fmt": "parquet", "mode": "current", "ingests": ingests, "reload_at": None,
            "write": draw(st.sampled_from(["merge_on_read", "auto", "copy_on_write"])),
            "lookup": draw(st.sampled_from(["local", "object_store"])),
            "maintain": draw(st.sets(st.integers(1, len(ingests) - 1), max_size=3))}


@st.composite
def scd2_histories(draw):
    """Type-2 history under the same hostile deliveries: late changes split versions, deletes close
    them, reloads close what the new load lacks; with or without track_history_on."""
    kind = draw(st.sampled_from([k for k in KINDS if k is not None]))  # scd2 needs sequence_by
    h = {**draw(histories()), "kind": kind}
    ingests = draw(st.lists(st.lists(st.one_of(
        st.tuples(st.just("cdc"), st.integers(0, 6), st.lists(change(kind, h["fmt"]), min_size=1, max_size=6)),
        st.tuples(st.just("load"), st.integers(0, 3), st.lists(load_row(kind, h["fmt"]), max_size=4)),
        st.tuples(st.just("copy"), st.integers(0, 20), st.integers(7, 12)),
        st.tuples(st.just("again"), st.integers(0, 20), st.just(0)),
    ), min_size=1, max_size=4), min_size=1, max_size=5))
    return {**h, "mode": "scd2", "ingests": ingests, "reload_at": draw(st.one_of(st.none(), st.integers(0, len(ingests) - 1))),
            "maintain": draw(st.sets(st.integers(0, len(ingests) - 1), max_size=2)),
            "track": draw(st.sampled_from([None, ("val",), ("val", "note")]))}


EXAMPLES = int(os.environ.get("LAKE_CONTRACT_EXAMPLES", "120"))
# Maintenance that does everything it may: every file compacted, every snapshot it may expire expired.
EAGER = MaintenanceSpec(keep_snapshots=1, max_snapshot_age_hours=0, orphan_age_hours=0, max_delete_files=0,
                        small_file_share=1.0, min_files_to_compact=2)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(h=histories())
def test_hostile_deliveries_match_the_oracle(h):
    check_history(h)


# A quarter: each of these histories rewrites the same rows many times (1.6 s an example on 2 cores).
@settings(max_examples=EXAMPLES // 4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(h=rewrite_histories())
def test_rows_replaced_again_and_again_match_the_oracle(h):
    check_history(h)


@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink])
@example(h={  # a late change inside a version updated in place after it: quarantined, never guessed
    "kind": "long", "fmt": "parquet", "mode": "scd2", "reload_at": None, "write": "auto", "lookup": "local",
    "track": ("val",), "maintain": set(), "ingests": [
        [("cdc", 0, [{"Op": "I", "id": 1, "val": 1, "note": "a", "seq": 1}, {"Op": "U", "id": 1, "val": 1, "note": "b", "seq": 5}])],
        [("cdc", 1, [{"Op": "U", "id": 1, "val": 2, "note": "c", "seq": 3}, {"Op": "U", "id": 1, "val": 3, "note": "d", "seq": 7}])]]})
@given(h=scd2_histories())
def test_type2_history_matches_the_oracle(h):
    check_history(h)


def check_history(h):
    kind = h["kind"]
    as_object_store = mock.patch("lake_assets.core.cdc.inprocess._local_path", return_value=None)
    with tempfile.TemporaryDirectory() as tmp, as_object_store if h["lookup"] == "object_store" else contextlib.nullcontext():
        seq_type = kind or "long"
        track = h.get("track")
        source = SOURCE.format(fmt=h["fmt"], mode=h["mode"], seq_type=seq_type, write=h["write"],
                               seq_line="sequence_by: seq" if kind else "",
                               track_line=f"track_history_on: {list(track)}" if track else "")
        lake = make_lake(Path(tmp), {"prop": source})
        folder = lake.landing / "prop" / "app" / "items"
        oracle = TableOracle(columns=DATA, sequence=kind, mode=h["mode"], track_history_on=track)
        current_oracle = TableOracle(columns=DATA, sequence=kind)  # what an scd2 table's current versions must be
        landing = LandingOracle()
        written: list[Path] = []  # every file landed, in order ("again" picks from them)
        cdc_written: list[Path] = []  # CDC files ("copy" picks from them: a LOAD file's bytes under a CDC name would not read)
        pending_reload = False
        rows_of: dict[str, list[dict]] = {}  # landing key -> rows of the bytes it holds now
        for i, actions in enumerate(h["ingests"]):
            for what, n, payload in actions:
                if what == "cdc":
                    path = _land(folder, cdc_file_name(BASE + dt.timedelta(minutes=n)), payload, h, cdc=True)
                elif what == "load":
                    path = _land(folder, load_file_name(n) if n else "LOAD00000000", payload, h, cdc=False)
                elif not (cdc_written if what == "copy" else written):
                    continue
                else:
                    src = (cdc_written if what == "copy" else written)[n % len(cdc_written if what == "copy" else written)]
                    data = src.read_bytes()
                    if what == "copy":
                        name = cdc_file_name(BASE + dt.timedelta(minutes=payload)) + "".join(src.suffixes)
                        path = folder / name
                        if path.exists() and path != src:
                            continue  # keep names unique per action kind; overwrites come from "cdc"/"load"
                    else:
                        path = src
                    path.write_bytes(data)
                    payload = rows_of[src.relative_to(lake.landing).as_posix()]
                written.append(path)
                if what in ("cdc", "copy"):
                    cdc_written.append(path)
                rows_of[path.relative_to(lake.landing).as_posix()] = payload
            reload = h["reload_at"] == i  # an operator asks for a reload: it waits for the next LOAD files
            lake.ingest(reload=reload)
            if i in h.get("maintain", ()):
                table = lake.registry.get("prop", "items")
                maintain(lake.env.catalog, lake.env.ledger, table, now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1), spec=EAGER)
            state = {k: (hashlib.md5((lake.landing / k).read_bytes()).hexdigest(), tuple(rows_of[k])) for k in rows_of}
            batch = landing.arrivals(state)
            pending_reload = pending_reload or reload
            oracle.merge(batch, reload_requested=pending_reload)
            current_oracle.merge(batch, reload_requested=pending_reload)
            if any(f.load_number is not None for f in batch):
                pending_reload = False

        if h["mode"] == "current":
            got = [{c: r[c] for c in DATA} for r in _rows_or_empty(lake, "prop.items")]
            assert len({r["id"] for r in got}) == len(got), "duplicate keys in the table"
            got_rows = sorted(({**r, "seq": _comparable(kind, r["seq"])} for r in got), key=lambda r: r["id"])
            want = [{**r, "seq": _comparable(kind, r["seq"])} for r in oracle.current_rows()]
            assert got_rows == want
        elif h["mode"] == "scd2":
            def typed(r):
                def one(v):
                    v = _comparable(kind, v)
                    return v.astimezone(dt.UTC) if isinstance(v, dt.datetime) else v  # one tzinfo: reprs compare
                return {**r, **{c: one(r[c]) for c in ("seq", "_valid_from", "_valid_to")}}

            columns = [*DATA, "_valid_from", "_valid_to", "_is_current"]
            got = [typed({c: r[c] for c in columns}) for r in _rows_or_empty(lake, "prop.items")]
            want = [typed(r) for r in oracle.scd2_rows()]
            key = lambda r: (r["id"], repr(r["_valid_from"]), repr(r["_valid_to"]), r["_is_current"], r["val"], repr(r["note"]))  # noqa: E731
            assert sorted(got, key=key) == sorted(want, key=key)
            current = sorted(({c: r[c] for c in DATA} for r in got if r["_is_current"]), key=lambda r: r["id"])
            assert len({r["id"] for r in current}) == len(current), "two current versions of a key"
            assert current == [{**r, "seq": _comparable(kind, r["seq"])} for r in current_oracle.current_rows()]
        else:
            got = sorted((r["_lake_file"], r["_lake_row"], r["_lake_op"], r["id"], r["val"]) for r in _rows_or_empty(lake, "prop.items"))
            want = sorted((r["_lake_file"], r["_lake_row"], r["_lake_op"], r["id"], r["val"]) for r in oracle.history)
            assert got == want
        quarantined = sorted((r["file"], r["file_version"], r["row"]) for r in _rows_or_empty(lake, "prop.items__quarantine"))
        assert quarantined == sorted(oracle.quarantine)


def _rows_or_empty(lake, identifier):
    """A table's rows; none when it was never created (nothing merged, or nothing quarantined)."""
    return lake.rows(identifier) if lake.env.catalog.table_exists(identifier) else []
