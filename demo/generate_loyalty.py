"""The demo's second source: the travel site's loyalty programme, as Debezium and a partner feed deliver it.

Two producers beside travel's DMS task, each a format of its own (lake_assets/sources/loyalty.yaml):

- `members`, the loyalty app's PostgreSQL table, captured by Debezium and written by Kafka Connect's
  S3 sink (topics.dir `loyalty/public`, schemas.enable=false): `partition=0/<topic>+0+<start offset>.json`,
  one envelope per line in WAL (LSN) order, a file per `flush.size` records and at the end of each
  round (the sink's rotate interval). Round 0 is the connector's initial snapshot (op r, all at the
  snapshot's LSN); each later round streams enrolments (c), points earned and redeemed and tier
  upgrades (u; one member climbs to platinum in three updates in one file), members leaving (d: with REPLICA IDENTITY
  DEFAULT the before image holds the key only, and a tombstone line follows), and a member who
  left rejoining under the same key with a new card number.
- `hotel_rates`, partner hotels' daily rate sheet, `hotel_rates_<day>.csv` with a header: a whole
  snapshot (load: snapshot), one per round. Sheets change rates, add a hotel that joins the
  programme, drop a room type, drop a hotel that leaves and, from round 4, bring it back.

- `points_events`, the app's event stream of points movements (a welcome bonus at enrolment,
  points earned at a travel booking, points redeemed), one event for each movement the members
  table sees, sent to a Kinesis Data Firehose delivery stream: a file per 5-minute buffer in the
  `YYYY/MM/DD/HH/` folder of its first record's arrival, named `<stream>-1-<that time>-<uuid>`,
  gzipped from round GZIP_FROM_ROUND on (the stream's compression switched on). Events arrive
  seconds after their time, so an event of 23:59 can sit in a file of the next day's folder; the
  rewards service writes redemptions in its local time (+01:00). Each round also sends two bad
  lines (a record cut off mid-line, an event without customer_id) that belong in
  `loyalty.points_events__errors`; `LoyaltySource.bad_lines` lists them.

It runs on the travel source's customers and hotels (members are travel customer_ids, rates travel
hotel_ids, earned points travel booking_ids), so the aggregated layer can join the two.
`LoyaltySource.expected` is what the loyalty database and the newest sheet hold at the end, and
every good event once, typed as the lake stores them.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from demo.generate import (
    CITIES,
    EUR_RATE,
    FULL_LOAD_AT,
    NIGHTLY_EUR,
    ROUND_LENGTH,
    DemoRound,
    DemoSource,
    deliver_files,
)
from lake_assets.core.registry import BUILTIN_SOURCES_DIR, TableConfig, load_source_file

SOURCE = "loyalty"
LOYALTY_YAML = BUILTIN_SOURCES_DIR / "loyalty.yaml"
TOPIC = "loyalty.public.members"
FLUSH_SIZE = 80  # the S3 sink's flush.size: records (tombstones included) per file at most
FIRST_LSN = 24_023_128  # the WAL position when the connector took its snapshot
TIERS = (("platinum", 50_000), ("gold", 20_000), ("silver", 5_000), ("bronze", 0))  # by lifetime_points
WELCOME_POINTS = 500
ROOM_TYPES = (("standard", Decimal("1.00")), ("deluxe", Decimal("1.40")), ("suite", Decimal("2.20")))
MEMBER_DISCOUNTS = (Decimal("5.00"), Decimal("7.50"), Decimal("10.00"), Decimal("12.50"))
CITY_CURRENCY = {city: currency for city, _, _, currency in CITIES}
STREAM = "loyalty-points"  # the Firehose delivery stream's name, which starts its file names
BUFFER_INTERVAL = timedelta(minutes=5)  # Firehose's buffering hint: a file per interval at most
GZIP_FROM_ROUND = 3  # the delivery stream's compression is GZIP from this round on
REWARDS_ZONE = timezone(timedelta(hours=1))  # the rewards service writes redemptions in CET


@dataclass
class LoyaltySource:
    rounds: list[DemoRound]  # round i lands with the travel source's round i
    expected: dict[str, list[dict]]  # table -> final rows sorted by primary key, in lake types
    landing: Path  # the staging root the files were written under
    tables: dict[str, TableConfig]
    bad_lines: dict[str, list[tuple[str, int, str]]]  # table -> (landing key, line, raw) its __errors must hold

    def deliver(self, round_index: int, landing: Path) -> list[Path]:
        return deliver_files(self.rounds[round_index].files, self.landing, landing)


def loyalty_tables() -> dict[str, TableConfig]:
    return {t.name: t for t in load_source_file(LOYALTY_YAML)}


def tier_of(lifetime_points: int) -> str:
    return next(name for name, floor in TIERS if lifetime_points >= floor)


def _iso(at: datetime) -> str:
    """A timestamptz as Debezium's ZonedTimestamp writes it (UTC, ISO-8601)."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- members: the loyalty database and its change stream ----------------------------------------


class _Members:
    """The members table and the Debezium records its changes become, in WAL order."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.rows: dict[int, dict] = {}
        self.lsn = FIRST_LSN
        self.tx = 7_310
        self.next_number = 1_000_001
        self.records: list[dict | None] = []  # this round's records; None: a tombstone
        self.pinned: set[int] = set()  # keys the scripted scenarios own
        self.movements: list[tuple[datetime, int, str, int]] = []  # this round's points moved: (at, customer, welcome|earn|redeem, points)

    def _record(self, op: str, at: datetime, before: dict | None, after: dict | None, *, snapshot: bool = False) -> None:
        if not snapshot:
            self.lsn += self.rng.randint(56, 480)
            self.tx += 1
        ms = int(at.replace(tzinfo=UTC).timestamp() * 1000)
        source = {"version": "2.7.3.Final", "connector": "postgresql", "name": "loyalty", "ts_ms": ms,
                  "snapshot": "true" if snapshot else "false", "db": "loyalty", "schema": "public",
                  "table": "members", "txId": self.tx, "lsn": self.lsn}
        wire = {k: _iso(v) if isinstance(v, datetime) else v for k, v in (after or {}).items()} if after else None
        self.records.append({"before": before, "after": wire, "source": source, "op": op,
                             "ts_ms": ms + self.rng.randint(3, 900)})

    def _member(self, customer_id: int, at: datetime, lifetime: int) -> dict:
        number, self.next_number = self.next_number, self.next_number + 1
        return {"customer_id": customer_id, "member_number": f"LY-{number:07d}", "tier": tier_of(lifetime),
                "points_balance": lifetime, "lifetime_points": lifetime, "enrolled_at": at, "updated_at": at}

    def snapshot(self, customer_ids: list[int]) -> None:
        """The members as of the connector's initial snapshot (op r)."""
        rng = self.rng
        for cid in customer_ids:
            enrolled = datetime(2023, 1, 1) + timedelta(seconds=rng.randrange(1_000 * 86_400), microseconds=rng.randrange(10**6))
            lifetime = WELCOME_POINTS + int(rng.paretovariate(1.3) * 2_500) - 2_500
            row = self._member(cid, enrolled, lifetime)
            row["points_balance"] = rng.randint(0, lifetime)
            row["updated_at"] = min(enrolled + timedelta(days=rng.randint(0, 400)), FULL_LOAD_AT - timedelta(hours=2))
            self.rows[cid] = row
        for cid in sorted(self.rows):
            self._record("r", FULL_LOAD_AT, None, self.rows[cid], snapshot=True)

    def enrol(self, at: datetime, customer_id: int) -> None:
        self.rows[customer_id] = row = self._member(customer_id, at, WELCOME_POINTS)
        self._record("c", at, None, row)
        self.movements.append((at, customer_id, "welcome", WELCOME_POINTS))

    def earn(self, at: datetime, customer_id: int, points: int) -> None:
        old = self.rows[customer_id]
        lifetime = old["lifetime_points"] + points
        row = {**old, "points_balance": old["points_balance"] + points, "lifetime_points": lifetime,
               "tier": tier_of(lifetime), "updated_at": at}
        self.rows[customer_id] = row
        self._record("u", at, None, row)  # REPLICA IDENTITY DEFAULT: no before image for updates
        self.movements.append((at, customer_id, "earn", points))

    def redeem(self, at: datetime, customer_id: int, points: int) -> None:
        old = self.rows[customer_id]
        redeemed = min(points, old["points_balance"])
        row = {**old, "points_balance": old["points_balance"] - redeemed, "updated_at": at}
        self.rows[customer_id] = row
        self._record("u", at, None, row)
        if redeemed:
            self.movements.append((at, customer_id, "redeem", redeemed))

    def leave(self, at: datetime, customer_id: int) -> None:
        del self.rows[customer_id]
        before = {"customer_id": customer_id, "member_number": None, "tier": None, "points_balance": None,
                  "lifetime_points": None, "enrolled_at": None, "updated_at": None}
        self._record("d", at, before, None)
        self.records.append(None)  # the tombstone Debezium emits after a delete, for log compaction

    def pick(self) -> int | None:
        pool = [k for k in self.rows if k not in self.pinned]
        return self.rng.choice(pool) if pool else None

    def random_event(self, at: datetime, customers: list[int]) -> None:
        rng, roll = self.rng, self.rng.random()
        if roll < 0.15:
            outsiders = [c for c in customers if c not in self.rows and c not in self.pinned]
            if outsiders:
                self.enrol(at, rng.choice(outsiders))
            return
        cid = self.pick()
        if cid is None:
            return
        if roll < 0.65:
            self.earn(at, cid, rng.randint(1, 40) * 50)
        elif roll < 0.92:
            self.redeem(at, cid, rng.randint(1, 20) * 100)
        else:
            self.leave(at, cid)


def _sink_files(folder: Path, records: list[dict | None], first_offset: int) -> list[Path]:
    """One round's records as the S3 sink writes them: a file per flush.size, named by start offset."""
    files = []
    for start in range(0, len(records), FLUSH_SIZE):
        path = folder / f"{TOPIC}+0+{first_offset + start:010d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        chunk = records[start : start + FLUSH_SIZE]
        path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in chunk), encoding="utf-8")
        files.append(path)
    return files


# --- hotel_rates: the partners' daily rate sheet ----------------------------------------------------


def _rate(rng: random.Random, hotel: dict, factor: Decimal) -> Decimal:
    base = Decimal(NIGHTLY_EUR[hotel["stars"]]) * EUR_RATE[CITY_CURRENCY[hotel["city"]]] * factor
    return (base * Decimal(rng.randint(90, 115)) / 100).quantize(Decimal("0.01"))


def _partner_rows(rng: random.Random, hotel: dict) -> dict[str, dict]:
    discount, points = rng.choice(MEMBER_DISCOUNTS), hotel["stars"] * 50
    out = {}
    for room_type, factor in ROOM_TYPES:
        if room_type == "deluxe" and rng.random() < 0.3 or room_type == "suite" and hotel["stars"] < 4:
            continue
        out[room_type] = {"hotel_id": hotel["hotel_id"], "room_type": room_type, "nightly_rate": _rate(rng, hotel, factor),
                          "currency": CITY_CURRENCY[hotel["city"]], "member_discount_pct": discount,
                          "points_per_night": points}
    return out


def _sheet_rows(partners: dict[int, dict[str, dict]]) -> list[dict]:
    return [dict(partners[h][r]) for h in sorted(partners) for r in sorted(partners[h])]


def _write_sheet(path: Path, t: TableConfig, rows: list[dict]) -> Path:
    names = [c.name for c in t.columns or ()]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(names)
    for r in rows:
        assert set(r) == set(names), f"{t.name}: row columns {sorted(r)} != {sorted(names)}"
        w.writerow([r[n] for n in names])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


# --- points_events: the app's event stream through Firehose -------------------------------------


class _PointsStream:
    """The points movements of the members table as the app sends them and Firehose writes them.

    Its own random stream, so that adding events changed nothing the members and rates draw."""

    def __init__(self, rng: random.Random, folder: Path, landing: Path, bookings: list[dict]):
        self.rng, self.folder, self.landing = rng, folder, landing
        self.bookings_of: dict[int, list[tuple[datetime, int]]] = {}  # customer -> (created_at, booking_id)
        for b in sorted(bookings, key=lambda b: b["booking_id"]):
            if b["status"] != "cancelled":
                self.bookings_of.setdefault(b["customer_id"], []).append((b["created_at"], b["booking_id"]))
        self.events: list[dict] = []  # every good event sent, in lake types
        self.bad_lines: list[tuple[str, int, str]] = []

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _event(self, at: datetime, customer_id: int, movement: str, points: int) -> tuple[dict, str]:
        """One movement as the lake will hold it and the JSON line the app sends for it."""
        booking, kind = None, "earn" if movement == "welcome" else movement
        made = [b for created, b in self.bookings_of.get(customer_id, ()) if created <= at]
        if movement == "earn" and made:
            booking = self.rng.choice(made)  # points earned at a booking of theirs; without one, a partner offer
        aware = at.replace(tzinfo=UTC)
        event = {"event_id": self._uuid(), "customer_id": customer_id, "event_time": aware, "kind": kind,
                 "points": points, "booking_id": booking}
        shown = aware.astimezone(REWARDS_ZONE).isoformat() if kind == "redeem" else _iso(at)
        wire = {**event, "event_time": shown}
        if kind == "redeem":
            del wire["booking_id"]  # the rewards service leaves out what it has no value for
        return event, json.dumps(wire, separators=(",", ":"))

    def _bad_lines(self, at: datetime, customers: list[int]) -> list[str]:
        """A record cut off mid-line and an event that lost its member: Firehose delivers both."""
        _, cut = self._event(at, self.rng.choice(customers), "earn", 100)
        _, whole = self._event(at + timedelta(seconds=1), self.rng.choice(customers), "redeem", 300)
        lost = json.loads(whole)
        del lost["customer_id"]
        return [cut[: len(cut) // 2], json.dumps(lost, separators=(",", ":"))]

    def round_files(self, rnd: int, start: datetime, movements: list[tuple[datetime, int, str, int]],
                    customers: list[int]) -> list[Path]:
        """One round's events in Firehose's files: a file per buffer interval, by arrival."""
        rng = self.rng
        buffers: dict[int, list[tuple[datetime, dict, str]]] = {}
        for at, cid, movement, points in movements:
            arrival = at + timedelta(milliseconds=rng.randint(200, 8_000))
            window = min((arrival - start) // BUFFER_INTERVAL, ROUND_LENGTH // BUFFER_INTERVAL - 1)
            event, line = self._event(at, cid, movement, points)
            buffers.setdefault(window, []).append((arrival, event, line))
        if not buffers:
            return []
        bad_window = rng.choice(sorted(buffers))
        files = []
        for window in sorted(buffers):
            records = sorted(buffers[window], key=lambda r: r[0])
            lines = [line for _, _, line in records]
            self.events += [event for _, event, _ in records]
            first = records[0][0]
            gz = rnd >= GZIP_FROM_ROUND
            name = f"{STREAM}-1-{first:%Y-%m-%d-%H-%M-%S}-{self._uuid()}" + (".gz" if gz else "")
            path = self.folder / f"{first:%Y/%m/%d/%H}" / name
            if window == bad_window:
                for bad in self._bad_lines(first, customers):
                    at_line = rng.randint(1, len(lines) + 1)
                    lines.insert(at_line - 1, bad)
                    self.bad_lines = [(k, n + 1 if k == path.relative_to(self.landing).as_posix() and n >= at_line else n, r)
                                      for k, n, r in self.bad_lines]
                    self.bad_lines.append((path.relative_to(self.landing).as_posix(), at_line, bad))
            data = "".join(line + "\n" for line in lines).encode("utf-8")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(gzip.compress(data, mtime=0) if gz else data)  # mtime 0: the same seed, the same bytes
            files.append(path)
        return files


# --- the source ----------------------------------------------------------------------------------


def generate_loyalty(staging: Path, travel: DemoSource, *, seed: int = 11, cdc_rounds: int | None = None) -> LoyaltySource:
    """Write the loyalty source's rounds under staging/loyalty/ beside `travel`'s and return the truth.

    Members are drawn from travel's customers, partner hotels from its hotels (its final state);
    there are as many rounds as travel has (cdc_rounds: fewer CDC rounds, for small tests).
    """
    rounds_after_load = len(travel.rounds) - 1 if cdc_rounds is None else cdc_rounds
    if rounds_after_load < 1:
        raise ValueError("generate_loyalty needs at least one round after the snapshot")
    staging, rng, tables = Path(staging), random.Random(seed), loyalty_tables()
    customers = [r["customer_id"] for r in travel.expected["customers"]]
    hotels = list(travel.expected["hotels"])
    if len(customers) < 20 or len(hotels) < 5:
        raise ValueError("generate_loyalty needs a travel source with >= 20 customers and >= 5 hotels")
    members_t, rates_t, events_t = tables["members"], tables["hotel_rates"], tables["points_events"]
    topic_dir = staging / SOURCE / members_t.schema / members_t.source_table / "partition=0"
    sheet_dir = staging / SOURCE / rates_t.schema / rates_t.source_table
    stream = _PointsStream(random.Random(f"points-{seed}"), staging / SOURCE / events_t.schema / events_t.source_table,
                           staging, travel.expected["bookings"])
    rounds = [DemoRound("snapshot", [])] + [DemoRound(f"cdc_{r}", []) for r in range(1, rounds_after_load + 1)]

    db = _Members(rng)
    db.snapshot(sorted(rng.sample(customers, len(customers) * 35 // 100)))
    partners = {h["hotel_id"]: _partner_rows(rng, h) for h in sorted(rng.sample(hotels, len(hotels) * 4 // 10), key=lambda h: h["hotel_id"])}
    outsiders = [h for h in hotels if h["hotel_id"] not in partners]
    leaving_hotel = min(partners)  # leaves in round 2, comes back in round 4
    suite_hotel = next((h for h in sorted(partners) if "suite" in partners[h] and h != leaving_hotel), None)  # drops its suites in round 1
    returning = dict(partners[leaving_hotel])
    multi, leaver = sorted(db.rows)[:2]  # several changes in one file; leaves in round 1, rejoins in round 2
    db.pinned = {multi, leaver}

    offset = 0
    for i, rnd in enumerate(rounds):
        start = FULL_LOAD_AT + (i - 1) * ROUND_LENGTH
        if i > 0:
            events = [(start + timedelta(microseconds=rng.randrange(ROUND_LENGTH // timedelta(microseconds=1))), n)
                      for n in range(max(20, len(db.rows) // 6))]
            scripted = []
            if i == 1:
                scripted += [(timedelta(minutes=m), lambda at: db.earn(at, multi, 18_000)) for m in (3, 4, 5)]
                scripted.append((timedelta(minutes=12), lambda at: db.leave(at, leaver)))
            if i == min(2, rounds_after_load) and leaver not in db.rows:
                scripted.append((timedelta(minutes=20), lambda at: db.enrol(at, leaver)))
            timeline = [(at, n, lambda at: db.random_event(at, customers)) for at, n in events]
            timeline += [(start + off, -1 - k, fn) for k, (off, fn) in enumerate(scripted)]
            for at, _, fn in sorted(timeline, key=lambda e: (e[0], e[1])):
                fn(at)
            _change_sheet(rng, i, rounds_after_load, partners, outsiders, leaving_hotel, suite_hotel, returning)
        files = _sink_files(topic_dir, db.records, offset)
        offset += len(db.records)
        db.records = []
        files += stream.round_files(i, start, db.movements, customers)
        db.movements = []
        day = (FULL_LOAD_AT + timedelta(days=i + 1)).date()  # the partner's export of that morning
        files.append(_write_sheet(sheet_dir / f"hotel_rates_{day.isoformat()}.csv", rates_t, _sheet_rows(partners)))
        rnd.files += files

    aware = ("enrolled_at", "updated_at")
    expected = {
        "members": [{k: v.replace(tzinfo=UTC) if k in aware else v for k, v in db.rows[c].items()} for c in sorted(db.rows)],
        "hotel_rates": _sheet_rows(partners),
        "points_events": sorted(stream.events, key=lambda e: e["event_id"]),
    }
    return LoyaltySource(rounds, expected, staging, tables, {"points_events": sorted(stream.bad_lines)})


def _change_sheet(rng: random.Random, rnd: int, last: int, partners: dict[int, dict[str, dict]], outsiders: list[dict],
                  leaving_hotel: int, suite_hotel: int | None, returning: dict[str, dict]) -> None:
    """One day's changes to the rate sheet: repriced rooms, a hotel joining; the scripted ones."""
    for rows in partners.values():
        for r in rows.values():
            if rng.random() < 0.15:
                r["nightly_rate"] = (r["nightly_rate"] * Decimal(rng.randint(92, 108)) / 100).quantize(Decimal("0.01"))
    if outsiders:
        hotel = outsiders.pop(0)
        partners[hotel["hotel_id"]] = _partner_rows(rng, hotel)
    if rnd == 1 and suite_hotel is not None:
        partners[suite_hotel].pop("suite")
    if rnd == min(2, last):
        partners.pop(leaving_hotel, None)
    if rnd == 4:
        partners[leaving_hotel] = returning
