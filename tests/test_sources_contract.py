"""Debezium files and snapshot file drops on random histories, through the real landing zone,
ledger, runner, readers, pipeline and Iceberg tables, compared with the plain oracle (tests/oracle.py).

Debezium: envelopes with and without the schema part, c/u/d/r/t in any order across files whose
names contradict their source positions (late changes), re-landed files (new versions), copies
(duplicates), tombstones, broken lines, wrong envelopes, events without op or position.
Snapshots: files in every format, zipped or not, landing out of name order, overwritten in place,
with bad rows (which must not delete their rows) and empty files (which must fail).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.lakehelpers import make_lake
from tests.oracle import LandingOracle, TableOracle

EXAMPLES = int(os.environ.get("LAKE_CONTRACT_EXAMPLES", "120")) // 2  # 60 by default, for CI time; raise the variable for a deeper run
COLUMNS = ("id", "val", "note")

DEBEZIUM = """
source: cdc
tables:
  - name: items
    schema: app
    format: debezium
    primary_key: [id]
    mode: {mode}
    columns:
      - {{name: id, type: long}}
      - {{name: val, type: long}}
      - {{name: note, type: string}}
"""


def _source(style: str, n: int):
    if style == "lsn":
        return {"lsn": n, "ts_ms": 1_700_000_000_000 - n}  # ts_ms contradicts lsn: the lsn decides
    return {"ts_ms": 1_700_000_000_000 + 1000 * (n // 4), "pos": 10 * (n % 4), "row": n % 2, "file": "mysql-bin.000003"}


@st.composite
def debezium_line(draw, style: str):
    kind = draw(st.sampled_from(["c", "u", "u", "d", "r", "c", "t", "tombstone", "broken", "wrong", "no_op", "no_pos"]))
    n = draw(st.integers(0, 40))
    key = draw(st.one_of(st.integers(1, 5), st.integers(1, 5), st.none()))
    image = {"id": key, "val": draw(st.integers(-5, 100)), "note": draw(st.sampled_from(["a", "b", None, "é"]))}
    if kind == "tombstone":
        return None
    if kind == "broken":
        return '{"op": "c", "after": {"id": 1'
    if kind == "wrong":
        return draw(st.sampled_from([[1, 2], "just text", {"schema": {}, "payload": 5}]))
    event: dict = {"op": kind, "before": None, "after": None, "source": _source(style, n), "ts_ms": 1}
    if kind == "no_op":
        event.pop("op")
        event["after"] = image
    elif kind == "no_pos":
        event["op"], event["after"], event["source"] = "c", image, {"connector": "postgresql"}
    elif kind == "d":
        event["before"] = draw(st.sampled_from([image, {"id": key, "val": None, "note": None}]))
    elif kind in "cur":
        event["after"] = image
        if kind == "u":
            event["before"] = {"id": key}
    if draw(st.booleans()):
        return {"schema": {"type": "struct", "name": "dbserver1.app.items.Envelope"}, "payload": event}
    return event


@st.composite
def debezium_histories(draw):
    style = draw(st.sampled_from(["lsn", "binlog"]))
    mode = draw(st.sampled_from(["current", "current", "history"]))
    action = st.one_of(
        st.tuples(st.just("file"), st.integers(0, 6), st.lists(debezium_line(style), min_size=1, max_size=6)),
        st.tuples(st.just("copy"), st.integers(0, 20), st.integers(7, 12)),
    )
    return {"mode": mode, "ingests": draw(st.lists(st.lists(action, min_size=1, max_size=3), min_size=1, max_size=4))}


def _line_text(line) -> str:
    return "null" if line is None else line if isinstance(line, str) and line.startswith("{") else json.dumps(line)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(h=debezium_histories())
def test_debezium_histories_match_the_oracle(h):
    with tempfile.TemporaryDirectory() as tmp:
        lake = make_lake(Path(tmp), {"cdc": DEBEZIUM.format(mode=h["mode"])})
        folder = lake.landing / "cdc" / "app" / "items"
        folder.mkdir(parents=True)
        oracle = TableOracle(columns=COLUMNS, mode=h["mode"])
        landing = LandingOracle()
        lines_of: dict[str, tuple] = {}
        written: list[Path] = []
        for actions in h["ingests"]:
            for what, n, payload in actions:
                if what == "file":
                    path = folder / f"items+0+{n:010d}.json"
                    path.write_text("\n".join(_line_text(x) for x in payload) + "\n", encoding="utf-8")
                    lines = tuple(payload)
                elif written:
                    src = written[n % len(written)]
                    path = folder / f"items+1+{payload:010d}.json"
                    if path.exists():
                        continue
                    path.write_bytes(src.read_bytes())
                    lines = lines_of[src.relative_to(lake.landing).as_posix()]
                else:
                    continue
                written.append(path)
                lines_of[path.relative_to(lake.landing).as_posix()] = lines
            lake.ingest()
            state = {k: (hashlib.md5((lake.landing / k).read_bytes()).hexdigest(), v) for k, v in lines_of.items()}
            oracle.merge_debezium(landing.arrivals(state))
        if h["mode"] == "current":
            got = sorted(({c: r[c] for c in COLUMNS} for r in _rows(lake, "cdc.items")), key=lambda r: r["id"])
            assert got == oracle.current_rows()
        else:
            got = sorted(repr((r["_lake_file"], r["_lake_row"], r["_lake_op"], r["id"], r["val"])) for r in _rows(lake, "cdc.items"))
            want = sorted(repr((r["_lake_file"], r["_lake_row"], r["_lake_op"], r["id"], r["val"])) for r in oracle.history)
            assert got == want
        quarantined = sorted((r["file"], r["file_version"], r["row"]) for r in _rows(lake, "cdc.items__quarantine"))
        assert quarantined == sorted(oracle.quarantine)


SNAPSHOT = """
source: drops
tables:
  - name: items
    schema: app
    format: {fmt}
    load: snapshot
    csv: {{header: true}}
    primary_key: [id]
    columns:
      - {{name: id, type: long}}
      - {{name: val, type: long}}
      - {{name: note, type: string}}
"""
EXTENSION = {"csv": ".csv", "json": ".json", "jsonl": ".jsonl", "parquet": ".parquet"}


def drop_bytes(rows: list[dict], fmt: str) -> bytes:
    """A file drop of these rows (`val` may be junk text: a bad row; Parquet writes it as text too)."""
    if fmt == "csv":
        out = io.StringIO()
        w = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: "" if r.get(c) is None else r[c] for c in COLUMNS})
        return out.getvalue().encode()
    if fmt == "json":
        return json.dumps(rows).encode()
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    typed = all(isinstance(r.get("val"), (int, type(None))) for r in rows)
    schema = pa.schema([("id", pa.int64()), ("val", pa.int64() if typed else pa.string()), ("note", pa.string())])
    table = pa.Table.from_pylist([{**r, "val": r.get("val") if typed or r.get("val") is None else str(r["val"])}
                                  for r in rows], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def zipped(name: str, data: bytes, extra: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, data)
        if extra is not None:
            z.writestr("second.csv", extra)
    return buf.getvalue()


snapshot_row = st.fixed_dictionaries({
    "id": st.one_of(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), st.none()),
    "val": st.one_of(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3), st.just("abc")),
    "note": st.sampled_from(["a", "b", None]),
})


@st.composite
def snapshot_histories(draw):
    fmt = draw(st.sampled_from(["csv", "json", "jsonl", "parquet"]))
    drop = st.tuples(st.integers(0, 9), st.lists(snapshot_row, max_size=6))  # even days come zipped
    return {"fmt": fmt, "ingests": draw(st.lists(st.lists(drop, min_size=1, max_size=3), min_size=1, max_size=4))}


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(h=snapshot_histories())
def test_snapshot_drops_match_the_oracle(h):
    fmt = h["fmt"]
    with tempfile.TemporaryDirectory() as tmp:
        lake = make_lake(Path(tmp), {"drops": SNAPSHOT.format(fmt=fmt)})
        folder = lake.landing / "drops" / "app" / "items"
        folder.mkdir(parents=True)
        oracle = TableOracle(columns=COLUMNS)
        landing = LandingOracle(dedupe=False)  # a snapshot equal to an earlier one is still the newest state
        rows_of: dict[str, tuple] = {}
        for drops in h["ingests"]:
            for n, rows in drops:
                is_zip = n % 2 == 0
                name = f"items_2026-11-{n + 10:02d}{EXTENSION[fmt]}"
                data = drop_bytes(rows, fmt)
                path = folder / (name + ".zip" if is_zip else name)
                path.write_bytes(zipped(name, data) if is_zip else data)
                rows_of[path.relative_to(lake.landing).as_posix()] = tuple(rows)
            _, runs = lake.ingest()
            state = {k: (hashlib.md5((lake.landing / k).read_bytes()).hexdigest(), v) for k, v in rows_of.items()}
            want = oracle.merge_snapshots(landing.arrivals(state))
            results = runs["drops.items"].results
            got = tuple(sum(getattr(r, c) for r in results) for c in ("inserted", "updated", "deleted"))
            assert got == (want.inserted, want.updated, want.deleted)
        table_rows = sorted(({c: r[c] for c in COLUMNS} for r in _rows(lake, "drops.items")), key=lambda r: r["id"])
        assert table_rows == oracle.current_rows()
        quarantined = sorted((r["file"], r["file_version"], r["row"]) for r in _rows(lake, "drops.items__quarantine"))
        assert quarantined == sorted(oracle.quarantine)


def _rows(lake, identifier):
    return lake.rows(identifier) if lake.env.catalog.table_exists(identifier) else []
