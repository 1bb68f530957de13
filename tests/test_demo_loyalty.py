"""The demo's second source, loyalty: its files read back as Kafka Connect's S3 sink, a partner's
daily export and a Firehose delivery stream write them, replayed by the contract's oracle
(tests/oracle.py, no code shared with the generator or the lake) or read line by line to the truth
the generator reports, and merged from a fresh LAKE_HOME by the ingest command to the same truth,
the event stream's bad lines each once in its __errors table."""

from __future__ import annotations

import csv
import gzip
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from demo.generate import FULL_LOAD_AT, generate_travel
from demo.generate_loyalty import FLUSH_SIZE, GZIP_FROM_ROUND, STREAM, TIERS, TOPIC, generate_loyalty, tier_of
from lake_assets.core.cdc.events import parse_key
from lake_assets.core.deployment import local_environment
from lake_assets.core.ledger import COMMITTED
from lake_assets.core.registry import BUILTIN_SOURCES_DIR
from tests.oracle import OracleFile, TableOracle
from tests.test_ingest_command import ingest

TIMES = ("enrolled_at", "updated_at")


@pytest.fixture(scope="module")
def travel(tmp_path_factory):
    return generate_travel(tmp_path_factory.mktemp("staging"), customers=200, hotels=30, bookings=400, cdc_rounds=4)


@pytest.fixture(scope="module")
def loyalty(travel):
    return generate_loyalty(travel.landing, travel)


def _lines(path: Path) -> list:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _sheet(path: Path, table) -> list[dict]:
    cast = {"long": int, "int": int, "string": str}
    with path.open(newline="", encoding="utf-8") as f:
        return [{c.name: cast.get(c.type, Decimal)(r[c.name]) for c in table.columns} for r in csv.DictReader(f)]


def _member_files(rnd) -> list[Path]:
    return [f for f in rnd.files if f.suffix == ".json"]


def _event_files(rnd) -> list[Path]:
    return [f for f in rnd.files if "firehose" in f.parts]


def _event_lines(path: Path) -> list[str]:
    data = path.read_bytes()
    return (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8").splitlines()


def _typed_member(row: dict) -> dict:
    return {k: datetime.fromisoformat(v) if k in TIMES else v for k, v in row.items()}


def test_the_files_replay_to_the_expected_state_round_by_round(loyalty):
    members_t, rates_t = loyalty.tables["members"], loyalty.tables["hotel_rates"]
    members = TableOracle(columns=tuple(c.name for c in members_t.columns), keys=members_t.primary_key)
    rates = TableOracle(columns=tuple(c.name for c in rates_t.columns), keys=rates_t.primary_key)
    for rnd in loyalty.rounds:
        members.merge_debezium([OracleFile(f.relative_to(loyalty.landing).as_posix(), tuple(_lines(f))) for f in _member_files(rnd)])
        sheets = [f for f in rnd.files if f.suffix == ".csv"]
        assert len(sheets) == 1, rnd.name  # one daily export per round
        counts = rates.merge_snapshots([OracleFile(f.relative_to(loyalty.landing).as_posix(), tuple(_sheet(f, rates_t))) for f in sheets])
        if rnd.name != "snapshot":
            assert counts.updated > 0 and counts.inserted > 0, (rnd.name, counts)  # repriced rooms, a hotel joining
    assert [_typed_member(r) for r in members.current_rows()] == loyalty.expected["members"]
    assert rates.current_rows() == loyalty.expected["hotel_rates"]


def test_members_land_as_the_s3_sink_writes_them(loyalty):
    """Kafka Connect's layout: <topic>/partition=0/<topic>+0+<start offset, 10 digits>.json, offsets
    contiguous across files, at most flush.size records a file, records in WAL order."""
    offset, last_lsn = 0, None
    for i, rnd in enumerate(loyalty.rounds):
        files = _member_files(rnd)
        assert files, rnd.name
        for f in files:
            rel = f.relative_to(loyalty.landing).parts
            assert rel[:4] == ("loyalty", "public", TOPIC, "partition=0") and f.name == f"{TOPIC}+0+{offset:010d}.json"
            records = _lines(f)
            assert 0 < len(records) <= FLUSH_SIZE
            offset += len(records)
            for r in filter(None, records):
                assert (r["op"] == "r") == (i == 0), (f.name, r["op"])  # round 0 is the initial snapshot
                lsn = r["source"]["lsn"]
                if i == 0:
                    assert last_lsn in (None, lsn)  # every snapshot read carries the snapshot's position
                else:
                    assert lsn > last_lsn
                last_lsn = lsn


def test_members_see_updates_deletes_with_tombstones_and_a_rejoin(loyalty):
    streamed = [(rnd.name, f.name, r) for rnd in loyalty.rounds[1:] for f in _member_files(rnd) for r in _lines(f)]
    ops = [r["op"] if r else None for _, _, r in streamed]
    assert {"c", "u", "d"} <= set(ops)
    for i, op in enumerate(ops):  # Debezium's tombstone follows each delete
        assert (op == "d") == (i + 1 < len(ops) and ops[i + 1] is None)
    deletes = [r for _, _, r in streamed if r and r["op"] == "d"]
    assert all(r["after"] is None and set(k for k, v in r["before"].items() if v is not None) == {"customer_id"}
               for r in deletes)  # REPLICA IDENTITY DEFAULT: the key only
    deleted = {r["before"]["customer_id"] for r in deletes}
    rejoined = {r["after"]["customer_id"] for _, _, r in streamed if r and r["op"] == "c"} & deleted
    assert rejoined & {r["customer_id"] for r in loyalty.expected["members"]}  # left, came back, is a member
    per_file: dict[tuple, int] = {}
    for _, name, r in streamed:
        if r and r["op"] == "u":
            per_file[(name, r["after"]["customer_id"])] = per_file.get((name, r["after"]["customer_id"]), 0) + 1
    assert max(per_file.values()) >= 3  # several changes of one key in one file


def test_rate_sheets_are_daily_snapshots_where_hotels_leave_and_return(loyalty):
    rates_t = loyalty.tables["hotel_rates"]
    sheets = [next(f for f in rnd.files if f.suffix == ".csv") for rnd in loyalty.rounds]
    assert [f.name for f in sheets] == sorted(f.name for f in sheets) == [f"hotel_rates_2026-11-0{d}.csv" for d in range(2, 7)]
    assert all(f.read_text().startswith(",".join(c.name for c in rates_t.columns) + "\n") for f in sheets)
    hotels = [{r["hotel_id"] for r in _sheet(f, rates_t)} for f in sheets]
    assert any(h in hotels[0] and h not in hotels[2] and h in hotels[4] for h in hotels[0])


def test_members_and_rates_are_travel_keys_and_tiers_follow_points(loyalty, travel):
    customers = {r["customer_id"] for r in travel.expected["customers"]}
    hotels = {r["hotel_id"]: r for r in travel.expected["hotels"]}
    members = loyalty.expected["members"]
    assert {m["customer_id"] for m in members} <= customers and len(members) > len(customers) // 5
    assert all(m["tier"] == tier_of(m["lifetime_points"]) and 0 <= m["points_balance"] <= m["lifetime_points"] for m in members)
    assert {m["tier"] for m in members} == {name for name, _ in TIERS}
    assert all(m["enrolled_at"].utcoffset() is not None for m in members)
    rates = loyalty.expected["hotel_rates"]
    assert {r["hotel_id"] for r in rates} <= set(hotels)
    assert all(r["points_per_night"] == hotels[r["hotel_id"]]["stars"] * 50 and r["nightly_rate"] > 0 for r in rates)


def test_same_seed_gives_the_same_files(travel, loyalty, tmp_path):
    again = generate_loyalty(tmp_path, travel)
    for a, b in zip(loyalty.rounds, again.rounds, strict=True):
        assert [f.relative_to(loyalty.landing) for f in a.files] == [f.relative_to(tmp_path) for f in b.files]
        assert all(f.read_bytes() == g.read_bytes() for f, g in zip(a.files, b.files))


def test_the_ingest_command_merges_every_round_to_the_truth_from_a_fresh_lake_home(tmp_path, travel):
    """Only loyalty's files land: the demo registry's other source has nothing pending. Three CDC
    rounds: the event stream's plain files, then gzipped ones."""
    source = generate_loyalty(tmp_path / "staging", travel, cdc_rounds=GZIP_FROM_ROUND)
    home = tmp_path / "lake"
    for i in range(len(source.rounds)):
        source.deliver(i, home / "landing")
        out = ingest(home, BUILTIN_SOURCES_DIR)
        assert out.returncode == 0, out.stdout + out.stderr[-2000:]
        assert all(f"source_aligned/loyalty/{name}" in out.stdout for name in ("members", "hotel_rates", "points_events") if
                   name != "points_events" or i > 0)  # the event stream starts after the connector's snapshot
    env = local_environment(home)
    for name, want in source.expected.items():
        t = source.tables[name]
        got = env.catalog.load_table(t.identifier).scan().to_arrow().to_pylist()
        cols = [c.name for c in t.columns]
        assert sorted(tuple(r[c] for c in cols) for r in got) == sorted(tuple(r[c] for c in cols) for r in want), name
    events = env.ledger.entries("loyalty.points_events")
    assert any(e.key.endswith(".gz") for e in events) and all(e.status == COMMITTED for e in events)
    errors = env.catalog.load_table(source.tables["points_events"].quarantine_identifier).scan().to_arrow().to_pylist()
    assert sorted((r["file"], r["row"], r["raw"]) for r in errors) == source.bad_lines["points_events"]
    assert all(r["reason"] for r in errors)
    sheets = env.ledger.entries("loyalty.hotel_rates")
    assert len(sheets) == 1 + GZIP_FROM_ROUND and all(e.status == COMMITTED and e.archived_to for e in sheets)
    assert not list((home / "landing" / "loyalty" / "partners").rglob("*.csv"))  # archived after their merge


def test_points_events_land_as_firehose_writes_them(loyalty):
    """<table folder>/YYYY/MM/DD/HH/<stream>-1-YYYY-MM-DD-HH-MM-SS-<uuid>[.gz], the hour and time of the
    file's first record; gzip once the stream's compression is on; none in the connector's snapshot round."""
    assert not _event_files(loyalty.rounds[0])
    for i, rnd in enumerate(loyalty.rounds[1:], start=1):
        files = _event_files(rnd)
        assert len(files) >= 3, rnd.name
        for f in files:
            key = f.relative_to(loyalty.landing).as_posix()
            parsed = parse_key(key)  # the lake's own reader of the layout takes every key
            assert (parsed.source, parsed.schema, parsed.table) == ("loyalty", "firehose", "points_events")
            folders, name = key.split("/")[3:7], f.name
            assert name.startswith(f"{STREAM}-1-{'-'.join(folders)}-"), key
            assert (f.suffix == ".gz") == (i >= GZIP_FROM_ROUND) and (f.read_bytes()[:2] == b"\x1f\x8b") == (i >= GZIP_FROM_ROUND)
    folders = {tuple(f.relative_to(loyalty.landing).parts[3:7]) for rnd in loyalty.rounds for f in _event_files(rnd)}
    assert {d[:3] for d in folders} == {("2026", "11", "01"), ("2026", "11", "02")}  # the stream crosses midnight


def test_the_event_files_read_back_to_every_good_event_once_and_the_bad_lines(loyalty):
    """Line by line, as a reader with no code of the lake's would: each line an event the table takes
    or one of the bad lines the generator reports; the good ones are the truth, each once."""
    events_t = loyalty.tables["points_events"]
    required = {"event_id", "event_time", *events_t.events.required}
    good, bad = [], []
    for rnd in loyalty.rounds:
        for f in _event_files(rnd):
            key = f.relative_to(loyalty.landing).as_posix()
            for number, line in enumerate(_event_lines(f), start=1):
                try:
                    e = json.loads(line)
                except json.JSONDecodeError:
                    bad.append((key, number, line))
                    continue
                if not required <= set(e):
                    bad.append((key, number, line))
                    continue
                good.append({c.name: e.get(c.name) for c in events_t.columns} | {"event_time": datetime.fromisoformat(e["event_time"]).astimezone(UTC)})
    assert sorted(good, key=lambda e: e["event_id"]) == loyalty.expected["points_events"]
    assert len({e["event_id"] for e in good}) == len(good)
    assert bad == loyalty.bad_lines["points_events"] and len(bad) == 2 * (len(loyalty.rounds) - 1)  # two a round
    assert {("customer_id" not in line) for _, _, line in bad} == {True, False}  # a cut record, an event without its member


def test_points_events_follow_the_members_points_and_travel_bookings(loyalty, travel):
    """The stream and the members table tell one story: a member who enrolled during the stream has
    earned exactly its earn events since enrolling and spent its redeem events; points earned at a
    booking name a booking of that customer made before."""
    events = loyalty.expected["points_events"]
    assert {e["kind"] for e in events} == {"earn", "redeem"} and all(e["points"] > 0 for e in events)
    assert all(e["booking_id"] is None for e in events if e["kind"] == "redeem")
    bookings = {b["booking_id"]: b for b in travel.expected["bookings"]}
    at_booking = [e for e in events if e["booking_id"] is not None]
    assert len(at_booking) > len(events) // 4
    assert all(bookings[e["booking_id"]]["customer_id"] == e["customer_id"] and bookings[e["booking_id"]]["status"] != "cancelled"
               and bookings[e["booking_id"]]["created_at"] <= e["event_time"].replace(tzinfo=None) for e in at_booking)
    enrolled = [m for m in loyalty.expected["members"] if m["enrolled_at"] >= FULL_LOAD_AT.replace(tzinfo=UTC)]
    assert enrolled
    for m in enrolled:
        mine = [e for e in events if e["customer_id"] == m["customer_id"] and e["event_time"] >= m["enrolled_at"]]
        earned = sum(e["points"] for e in mine if e["kind"] == "earn")
        redeemed = sum(e["points"] for e in mine if e["kind"] == "redeem")
        assert (earned, earned - redeemed) == (m["lifetime_points"], m["points_balance"]), m
