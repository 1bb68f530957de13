"""A deterministic travel-booking database replicated by AWS DMS: full load, CDC rounds, late files.

The generator runs a small simulation of the operational database (customers, hotels, promotions,
bookings, payments and the bookings audit log), records every committed change with a database-wide
change sequence (DMS's $AR_H_CHANGE_SEQ), and writes the changes as the DMS S3 target would: one
folder per table, full-load `LOAD*` files, then CDC files named by their creation time. It keeps the
truth as it goes, so `DemoSource.expected` is what the source database holds at the end.

The CDC rounds deliberately contain what production delivers: several changes to one key in one file
and across files, deletes, a delete followed by a re-insert of the same key, rows of one file out of
change_seq order, a file that carries a newer change than a later-named file (sequence_by tables
only), inserts that overlap the full load, and files delivered one round late. Tables without
sequence_by (hotels, promotions, payments, bookings_audit) are only ever shuffled in delivery, never in
naming or row order, so (file name, row number) stays a correct order for them.

    python -m demo.generate --landing .lake/landing [--seed 7]
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path

from demo.dms_writer import (
    cdc_file_name,
    date_folder,
    load_file_name,
    table_dir,
    write_dms_file,
)
from lake_assets.core.registry import BUILTIN_SOURCES_DIR, TableConfig, load_source_file

SOURCE = "travel"
TRAVEL_YAML = BUILTIN_SOURCES_DIR / "travel.yaml"

FULL_LOAD_AT = datetime(2026, 11, 1, 23, 0, 0)  # the full-load snapshot; CDC starts here
ROUND_LENGTH = timedelta(minutes=30)  # one delivery round of CDC files
BATCH_INTERVAL = timedelta(minutes=10)  # DMS CdcMaxBatchInterval: one file per table per interval
LOAD_FILE_ROWS = 2000  # DMS splits a full load by MaxFileSize; scaled down so demo tables split

BOOKING_STATUSES = ("pending", "confirmed", "cancelled", "completed")


@dataclass(frozen=True)
class DmsEndpoint:
    """Producer-side settings of the DMS S3 endpoint a table is replicated through.

    They are not in the registry: the lake must read whatever the endpoint writes.
    """

    name: str
    gzip: bool = False  # CompressionType=GZIP (internal for Parquet, .csv.gz for CSV)
    include_op_for_full_load: bool = False  # IncludeOpForFullLoad
    date_partition_from_round: int | None = None  # DatePartitionEnabled from this CDC round on


# The booking task was switched to date-partitioned folders in round 3 (an endpoint change in
# production); the billing task has always written gzip CSV under date folders with Op in full loads.
BOOKING_ENDPOINT = DmsEndpoint("booking-s3", date_partition_from_round=3)
BILLING_ENDPOINT = DmsEndpoint("billing-s3", gzip=True, include_op_for_full_load=True, date_partition_from_round=1)
TABLE_ENDPOINTS = {"payments": BILLING_ENDPOINT}

# A second DMS task replicates customers into the folder of `customer_versions`, a type-2 history
# table (travel.yaml: mode scd2): the same files, merged into another table.
MIRRORS = {"customer_versions": "customers"}

# (table, round, batch interval) whose file is delivered one round late.
LATE_FILES = (("bookings", 1, 0), ("hotels", 1, 0), ("payments", 2, 0))


@dataclass
class DemoRound:
    """One delivery of files to the landing zone."""

    name: str  # "full_load", "cdc_1", ...
    files: list[Path]


@dataclass(frozen=True)
class EmittedRow:
    """One row written to a landed file, with where it sits (the fallback order) and when it lands."""

    table: str  # registry table name
    file: Path
    row: int  # 1-based row number in the file
    op: str  # I, U or D (full-load rows: I)
    values: dict  # column values
    round_index: int  # the round that delivers the file

    @property
    def is_load(self) -> bool:
        return self.file.name.startswith("LOAD")

    @property
    def file_base(self) -> str:
        return self.file.name.split(".", 1)[0]


@dataclass
class DemoSource:
    rounds: list[DemoRound]
    # table -> final rows. Current-mode tables: the rows the source database holds at the end, sorted
    # by primary key, change_seq being the sequence of the row's last change (0 = untouched since the
    # full load). History table: every change ever emitted (full-load rows as "I") with its "Op", in
    # commit order.
    expected: dict[str, list[dict]]
    landing: Path | None = None
    tables: dict[str, TableConfig] = field(default_factory=dict)
    emitted: list[EmittedRow] = field(default_factory=list)  # every row written, in file and row order
    late: list[Path] = field(default_factory=list)  # files delivered a round after they were created

    def expected_after(self, round_index: int) -> dict[str, list[dict]]:
        """What the lake should hold after merging rounds 0..round_index, by the CDC contract.

        Per key the change with the highest order wins (change_seq where the table declares
        sequence_by, else full load first, then file name, then row number); a winning D removes the
        row. History tables keep every delivered change. After the last round this equals `expected`.
        """
        delivered = [e for e in self.emitted if e.round_index <= round_index]
        return replay(self.tables, delivered)

    def deliver(self, round_index: int, landing: Path) -> list[Path]:
        """Copy one round's files into another landing zone (same relative keys, fresh mtimes).

        Generate into a staging folder, then deliver round by round to let a sensor see arrivals.
        """
        assert self.landing is not None
        return deliver_files(self.rounds[round_index].files, self.landing, landing)


def deliver_files(files: list[Path], staging: Path, landing: Path) -> list[Path]:
    """Copy files generated under `staging` to the same relative keys under `landing`."""
    out = []
    for f in files:
        target = Path(landing) / f.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
        out.append(target)
    return out


def travel_tables() -> dict[str, TableConfig]:
    return {t.name: t for t in load_source_file(TRAVEL_YAML)}


def order_key(table: TableConfig, e: EmittedRow) -> tuple:
    """The CDC contract's order of one change: sequence_by if declared, then file order and row."""
    seq = e.values[table.sequence_by] if table.sequence_by else 0
    return (seq, not e.is_load, e.file_base, e.row)


def replay(tables: dict[str, TableConfig], emitted: list[EmittedRow]) -> dict[str, list[dict]]:
    by_table: dict[str, list[EmittedRow]] = {name: [] for name in tables}
    for e in emitted:
        by_table[e.table].append(e)
    out: dict[str, list[dict]] = {}
    for name, rows in by_table.items():
        t = tables[name]
        rows.sort(key=lambda e: order_key(t, e))
        if t.mode == "history":
            out[name] = [{**e.values, "Op": e.op} for e in rows]
            continue
        winners: dict[tuple, EmittedRow] = {}
        for e in rows:
            winners[tuple(e.values[k] for k in t.primary_key)] = e
        out[name] = [dict(winners[k].values) for k in sorted(winners) if winners[k].op != "D"]
    return out


# --- reference data ----------------------------------------------------------------------------

FIRST_NAMES = (
    "Ana", "João", "María", "Lucía", "Pierre", "Chloé", "Léa", "Jonas", "Lena", "Łukasz", "Zoë", "Søren",
    "Aoife", "Siobhán", "Giulia", "Marco", "Sven", "Ingrid", "Yuki", "Haruto", "Wei", "Mei", "Arjun",
    "Priya", "Olumide", "Amara", "Fatima", "Omar", "Liam", "Emma", "Noah", "Olivia", "Mateo", "Sofía",
    "Dmitri", "Anya", "Kai", "Nia", "Björn", "Elif",
)  # fmt: skip
LAST_NAMES = (
    "Silva", "Santos", "García", "Martínez", "Dubois", "Lefèvre", "Müller", "Schmidt", "Kowalski", "Nowak",
    "O'Brien", "O'Neill", "Rossi", "Bianchi", "Johansson", "Nielsen", "Tanaka", "Sato", "Wang", "Li",
    "Sharma", "Patel", "Okafor", "Mensah", "Haddad", "Nguyễn", "Smith", "Johnson", "Brown", "Murphy",
    "Kim", "Park", "Ivanova", "Petrov", "Yılmaz", "Cohen", "Fernández", "van der Berg", "Jensen", "Novák",
)  # fmt: skip
EMAIL_DOMAINS = ("example.com", "example.org", "mail.example.net")
# country, dialling code, weight among customers
CUSTOMER_COUNTRIES = (
    ("GB", "+44", 14), ("US", "+1", 18), ("DE", "+49", 10), ("FR", "+33", 8), ("ES", "+34", 6),
    ("PT", "+351", 3), ("IT", "+39", 5), ("NL", "+31", 4), ("IE", "+353", 2), ("JP", "+81", 5),
    ("AU", "+61", 4), ("BR", "+55", 4), ("IN", "+91", 5), ("SG", "+65", 2), ("CA", "+1", 4),
    ("PL", "+48", 3), ("SE", "+46", 2), ("NG", "+234", 1),
)  # fmt: skip
# city, country, region, currency
CITIES = (
    ("Lisbon", "PT", "EMEA", "EUR"), ("Porto", "PT", "EMEA", "EUR"), ("Madrid", "ES", "EMEA", "EUR"),
    ("Barcelona", "ES", "EMEA", "EUR"), ("Paris", "FR", "EMEA", "EUR"), ("Nice", "FR", "EMEA", "EUR"),
    ("Berlin", "DE", "EMEA", "EUR"), ("Munich", "DE", "EMEA", "EUR"), ("Rome", "IT", "EMEA", "EUR"),
    ("Florence", "IT", "EMEA", "EUR"), ("Amsterdam", "NL", "EMEA", "EUR"), ("London", "GB", "EMEA", "GBP"),
    ("Edinburgh", "GB", "EMEA", "GBP"), ("Dublin", "IE", "EMEA", "EUR"), ("Prague", "CZ", "EMEA", "CZK"),
    ("Cape Town", "ZA", "EMEA", "ZAR"), ("Dubai", "AE", "EMEA", "AED"), ("New York", "US", "AMER", "USD"),
    ("San Francisco", "US", "AMER", "USD"), ("Chicago", "US", "AMER", "USD"), ("Toronto", "CA", "AMER", "CAD"),
    ("Mexico City", "MX", "AMER", "MXN"), ("São Paulo", "BR", "AMER", "BRL"), ("Tokyo", "JP", "APAC", "JPY"),
    ("Kyoto", "JP", "APAC", "JPY"), ("Singapore", "SG", "APAC", "SGD"), ("Sydney", "AU", "APAC", "AUD"),
    ("Bangkok", "TH", "APAC", "THB"), ("Denpasar", "ID", "APAC", "IDR"),
)  # fmt: skip
EUR_RATE = {
    "EUR": Decimal("1"), "GBP": Decimal("0.86"), "USD": Decimal("1.08"), "CAD": Decimal("1.47"),
    "MXN": Decimal("19.5"), "BRL": Decimal("5.9"), "JPY": Decimal("162"), "SGD": Decimal("1.45"),
    "AUD": Decimal("1.65"), "THB": Decimal("38"), "IDR": Decimal("17000"), "CZK": Decimal("25"),
    "ZAR": Decimal("20"), "AED": Decimal("3.97"),
}  # fmt: skip
NIGHTLY_EUR = {1: 45, 2: 70, 3: 110, 4: 170, 5: 320}
HOTEL_PREFIXES = (
    "Hotel", "Grand Hotel", "Casa", "The Harbour", "Old Town Suites", "Park Inn", "Riverside Lodge",
    "Boutique", "Skyline Tower", "Garden House", "Central Station Hotel", "Palace",
)  # fmt: skip
# code, discount %, region (None = every region), valid_from, valid_to (None = open-ended)
PROMOTIONS = (
    ("WELCOME10", "10.00", None, date(2024, 1, 1), None),
    ("SPRING25", "12.50", "EMEA", date(2025, 3, 1), date(2025, 5, 31)),
    ("SUMMER25", "15.00", None, date(2025, 6, 1), date(2025, 8, 31)),
    ("AUTUMN25", "10.00", "AMER", date(2025, 9, 1), date(2025, 11, 30)),
    ("WINTER26", "20.00", "APAC", date(2025, 12, 1), date(2026, 2, 28)),
    ("SPRING26", "12.50", "EMEA", date(2026, 3, 1), date(2026, 5, 31)),
    ("SUMMER26", "15.00", None, date(2026, 6, 1), date(2026, 8, 31)),
    ("AUTUMN26", "10.00", "AMER", date(2026, 9, 1), date(2026, 11, 30)),
    ("LASTMINUTE", "7.50", None, date(2025, 1, 1), date(2026, 12, 31)),
    ("APACWEEK", "18.00", "APAC", date(2026, 10, 15), date(2026, 11, 15)),
    ("LOYALTY5", "5.00", None, date(2025, 1, 1), None),
    ("SUMMER19", "25.00", None, date(2019, 6, 1), date(2019, 8, 31)),  # expired, never used: deleted later
)
PAYMENT_METHODS = (("card", 80), ("paypal", 12), ("bank_transfer", 8))

_ASCII = str.maketrans({"Ł": "L", "ł": "l", "ø": "o", "Ø": "O", "ı": "i", "ß": "ss", "'": "", " ": ""})


def _ascii(s: str) -> str:
    return unicodedata.normalize("NFKD", s.translate(_ASCII)).encode("ascii", "ignore").decode().lower()


def _luhn_card(rng: random.Random) -> str:
    digits = [int(c) for c in rng.choice(("4", "51", "52", "53", "54", "55"))]
    while len(digits) < 15:
        digits.append(rng.randrange(10))
    total = 0
    for i, d in enumerate(reversed(digits)):  # the check digit will sit right of these
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


# --- the simulated database --------------------------------------------------------------------


@dataclass
class _Change:
    table: str
    op: str
    values: dict
    seq: int  # database-wide commit order
    at: datetime  # commit time


class _TravelDatabase:
    """The operational database: its rows, the change log DMS captures, and the business events."""

    def __init__(self, rng: random.Random, tables: dict[str, TableConfig]):
        self.rng = rng
        self.tables = tables
        self.rows: dict[str, dict[int, dict]] = {name: {} for name in tables}
        self.seq = 0
        self.log: list[_Change] = []
        self.next_id: dict[str, int] = {name: 1 for name in tables}
        self.status_index: dict[str, dict[int, None]] = {s: {} for s in BOOKING_STATUSES}
        self.payments_of: dict[int, list[int]] = {}
        self.bookings_of_customer: Counter[int] = Counter()
        self.hotel_rate: dict[int, Decimal] = {}  # nightly rate in the hotel's currency
        self.hotel_currency: dict[int, str] = {}
        self.dormant_customers: list[int] = []  # signed up, never book: may be erased (GDPR)
        self.unbooked_hotels: list[int] = []  # new listings nobody may book yet: may be delisted
        self.pinned: set[tuple[str, int]] = set()  # keys random events leave to the scripted scenarios
        self.scenario: dict[str, int] = {}

    # Changes. Every change gets the next database-wide sequence; tables that declare sequence_by
    # carry it in that column (DMS $AR_H_CHANGE_SEQ), 0 for rows as of the full load.

    def _key(self, table: str, row: dict) -> int:
        return row[self.tables[table].primary_key[0]]

    def _stamp(self, table: str, row: dict) -> dict:
        self.seq += 1
        seq_col = self.tables[table].sequence_by
        if seq_col:
            row[seq_col] = self.seq
        return row

    def load_row(self, table: str, row: dict) -> None:
        """A row that exists before CDC starts (part of the full load)."""
        seq_col = self.tables[table].sequence_by
        if seq_col:
            row[seq_col] = 0
        self.rows[table][self._key(table, row)] = row
        self._index(table, None, row)

    def insert(self, at: datetime, table: str, row: dict) -> dict:
        key = self._key(table, row)
        assert key not in self.rows[table], f"{table} {key} exists"
        row = self._stamp(table, dict(row))
        self.rows[table][key] = row
        self._index(table, None, row)
        self.log.append(_Change(table, "I", dict(row), self.seq, at))
        return row

    def update(self, at: datetime, table: str, key: int, **changes) -> dict:
        old = self.rows[table][key]
        row = self._stamp(table, {**old, **changes})
        self.rows[table][key] = row
        self._index(table, old, row)
        self.log.append(_Change(table, "U", dict(row), self.seq, at))
        return row

    def delete(self, at: datetime, table: str, key: int) -> dict:
        old = self.rows[table].pop(key)
        self._index(table, old, None)
        image = self._stamp(table, dict(old))  # the before-image, stamped with the delete's sequence
        self.log.append(_Change(table, "D", image, self.seq, at))
        return old

    def _index(self, table: str, old: dict | None, new: dict | None) -> None:
        if table == "bookings":
            if old is not None:
                self.status_index[old["status"]].pop(old["booking_id"], None)
                self.bookings_of_customer[old["customer_id"]] -= 1
            if new is not None:
                self.status_index[new["status"]][new["booking_id"]] = None
                self.bookings_of_customer[new["customer_id"]] += 1
        elif table == "payments" and new is not None and old is None:
            self.payments_of.setdefault(new["booking_id"], []).append(new["payment_id"])

    def new_id(self, table: str) -> int:
        n = self.next_id[table]
        self.next_id[table] = n + 1
        return n

    def pick(self, table: str, candidates) -> int | None:
        pool = [k for k in candidates if (table, k) not in self.pinned]
        return self.rng.choice(pool) if pool else None

    # Row builders.

    def make_customer(self, created: datetime) -> dict:
        rng = self.rng
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        country, dial, _ = rng.choices(CUSTOMER_COUNTRIES, weights=[c[2] for c in CUSTOMER_COUNTRIES])[0]
        customer_id = self.new_id("customers")
        dob = None if rng.random() < 0.05 else date(1950, 1, 1) + timedelta(days=rng.randrange(20_000))
        return {
            "customer_id": customer_id,
            "first_name": first,
            "last_name": last,
            "email": f"{_ascii(first)}.{_ascii(last)}{customer_id}@{rng.choice(EMAIL_DOMAINS)}",
            "phone": None if rng.random() < 0.1 else self._phone(dial),
            "date_of_birth": dob,
            "country": country,
            "marketing_opt_in": rng.random() < 0.35,
            "created_at": created,
            "updated_at": created,
        }

    def _phone(self, dial: str) -> str:
        r = self.rng
        return f"{dial} {r.randint(100, 999)} {r.randint(100, 999)} {r.randint(1000, 9999)}"

    def make_hotel(self, created: datetime) -> dict:
        rng = self.rng
        city, country, region, currency = rng.choice(CITIES)
        hotel_id = self.new_id("hotels")
        stars = rng.choices((1, 2, 3, 4, 5), weights=(3, 12, 40, 33, 12))[0]
        self.hotel_currency[hotel_id] = currency
        self.hotel_rate[hotel_id] = (
            Decimal(NIGHTLY_EUR[stars]) * Decimal(rng.randint(80, 125)) / 100 * EUR_RATE[currency]
        ).quantize(Decimal("0.01"))
        return {
            "hotel_id": hotel_id,
            "name": f"{rng.choice(HOTEL_PREFIXES)} {city}",
            "city": city,
            "country": country,
            "region": region,
            "stars": stars,
            "rooms": rng.randint(12, 480),
            "created_at": created,
        }

    def promotion_for(self, day: date, region: str) -> int | None:
        pool = [
            p["promotion_id"]
            for p in self.rows["promotions"].values()
            if p["valid_from"] <= day
            and (p["valid_to"] is None or day <= p["valid_to"])
            and (p["region"] is None or p["region"] == region)
        ]
        return self.rng.choice(pool) if pool else None

    def price(self, hotel_id: int, nights: int, promotion_id: int | None) -> Decimal:
        amount = self.hotel_rate[hotel_id] * nights
        if promotion_id is not None:
            amount = amount * (100 - self.rows["promotions"][promotion_id]["discount_pct"]) / 100
        return amount.quantize(Decimal("0.01"))

    def make_booking(self, created: datetime, customer_id: int, hotel_id: int, *, promo_rate: float) -> dict:
        rng = self.rng
        hotel = self.rows["hotels"][hotel_id]
        promotion_id = self.promotion_for(created.date(), hotel["region"]) if rng.random() < promo_rate else None
        check_in = created.date() + timedelta(days=rng.randint(2, 120))
        nights = rng.choices(range(1, 15), weights=(10, 18, 16, 12, 9, 7, 8, 3, 2, 2, 1, 1, 1, 2))[0]
        return {
            "booking_id": self.new_id("bookings"),
            "customer_id": customer_id,
            "hotel_id": hotel_id,
            "promotion_id": promotion_id,
            "check_in": check_in,
            "check_out": check_in + timedelta(days=nights),
            "nights": nights,
            "amount": self.price(hotel_id, nights, promotion_id),
            "currency": self.hotel_currency[hotel_id],
            "status": "pending",
            "created_at": created,
            "updated_at": created,
        }

    def make_payment(self, booking: dict, at: datetime, status: str) -> dict:
        method = self.rng.choices([m for m, _ in PAYMENT_METHODS], weights=[w for _, w in PAYMENT_METHODS])[0]
        return {
            "payment_id": self.new_id("payments"),
            "booking_id": booking["booking_id"],
            "amount": booking["amount"],
            "currency": booking["currency"],
            "method": method,
            "card_number": _luhn_card(self.rng) if method == "card" else None,
            "region": self.rows["hotels"][booking["hotel_id"]]["region"],
            "status": status,
            "paid_at": at,
        }

    def audit(self, at: datetime, booking_id: int, old: str | None, new: str) -> None:
        self.insert(
            at,
            "booking_status_history",
            {
                "audit_id": self.new_id("booking_status_history"),
                "booking_id": booking_id,
                "old_status": old,
                "new_status": new,
                "changed_at": at,
            },
        )

    # The database as of the full load. Ids are serial and follow creation time, as in a real OLTP.

    def populate(self, n_customers: int, n_hotels: int, n_bookings: int) -> None:
        rng = self.rng
        n_dormant = max(3, n_customers // 20)
        for i in range(n_customers):
            dormant = i >= n_customers - n_dormant
            start, span = (datetime(2025, 1, 1), 660) if dormant else (datetime(2022, 1, 1), 1090)
            created = start + timedelta(seconds=rng.randrange(span * 86_400), microseconds=rng.randrange(1_000_000))
            row = self.make_customer(created)
            if rng.random() < 0.3:
                row["updated_at"] = min(created + timedelta(days=rng.randint(1, 300)), FULL_LOAD_AT - timedelta(hours=1))
            self.load_row("customers", row)
            if dormant:
                self.dormant_customers.append(row["customer_id"])
        n_new_listings = 2
        for i in range(n_hotels):
            new_listing = i >= n_hotels - n_new_listings
            created = (
                FULL_LOAD_AT - timedelta(days=6 - i % 3, hours=rng.randint(1, 20))
                if new_listing
                else datetime(2015, 1, 1) + timedelta(seconds=rng.randrange(3650 * 86_400))
            )
            self.load_row("hotels", self.make_hotel(created))
            if new_listing:
                self.unbooked_hotels.append(self.next_id["hotels"] - 1)
        for code, pct, region, valid_from, valid_to in PROMOTIONS:
            self.load_row(
                "promotions",
                {
                    "promotion_id": self.new_id("promotions"),
                    "code": code,
                    "discount_pct": Decimal(pct),
                    "region": region,
                    "valid_from": valid_from,
                    "valid_to": valid_to,
                },
            )
        self._populate_bookings(n_bookings)

    def _populate_bookings(self, n: int) -> None:
        rng = self.rng
        n_recent = max(8, n // 100)  # booked in the last two days, still pending
        start, regular_end = datetime(2025, 1, 1), FULL_LOAD_AT - timedelta(days=3)
        span = int((regular_end - start).total_seconds())
        times = sorted(start + timedelta(seconds=rng.randrange(span), microseconds=rng.randrange(1_000_000)) for _ in range(n - n_recent))
        times += sorted(
            FULL_LOAD_AT - timedelta(days=2) + timedelta(seconds=rng.randrange(47 * 3600), microseconds=rng.randrange(1_000_000))
            for _ in range(n_recent)
        )
        customers = [c for c in self.rows["customers"] if c not in self.dormant_customers]
        hotels = [h for h in self.rows["hotels"] if h not in self.unbooked_hotels]
        payments: list[dict] = []
        audits: list[tuple[datetime, int, str | None, str]] = []
        for i, created in enumerate(times):
            b = self.make_booking(created, rng.choice(customers), rng.choice(hotels), promo_rate=0.2)
            bid = b["booking_id"]
            audits.append((created, bid, None, "pending"))
            last = created
            if i < n - n_recent:
                confirmed = created + timedelta(minutes=rng.randint(5, 2880), microseconds=rng.randrange(1_000_000))
                audits.append((confirmed, bid, "pending", "confirmed"))
                b["status"], last = "confirmed", confirmed
                if rng.random() < 0.06:
                    payments.append(self.make_payment(b, confirmed - timedelta(minutes=3), "failed"))
                pay = self.make_payment(b, confirmed, "captured")
                payments.append(pay)
                check_in = datetime.combine(b["check_in"], dtime(15))
                check_out = datetime.combine(b["check_out"], dtime(11)) + timedelta(minutes=rng.randint(0, 180))
                cancel_limit = min(check_in, FULL_LOAD_AT - timedelta(minutes=1))
                if rng.random() < 0.12 and cancel_limit > confirmed:
                    cancelled = confirmed + (cancel_limit - confirmed) * rng.random()
                    audits.append((cancelled, bid, "confirmed", "cancelled"))
                    b["status"], last = "cancelled", cancelled
                    pay["status"] = "refunded"
                elif check_out < FULL_LOAD_AT:
                    audits.append((check_out, bid, "confirmed", "completed"))
                    b["status"], last = "completed", check_out
            b["updated_at"] = last
            self.load_row("bookings", b)
        payments.sort(key=lambda p: p["paid_at"])
        for pid, p in enumerate(payments, 1):
            p["payment_id"] = pid
            self.load_row("payments", p)
        self.next_id["payments"] = len(payments) + 1
        audits.sort(key=lambda a: a[0])
        for aid, (at, bid, old, new) in enumerate(audits, 1):
            self.load_row(
                "booking_status_history",
                {"audit_id": aid, "booking_id": bid, "old_status": old, "new_status": new, "changed_at": at},
            )
        self.next_id["booking_status_history"] = len(audits) + 1

    # Business events during CDC. Each one is one transaction committed at `at`.

    def set_status(self, at: datetime, booking_id: int, status: str) -> dict:
        old = self.rows["bookings"][booking_id]["status"]
        row = self.update(at, "bookings", booking_id, status=status, updated_at=at)
        self.audit(at, booking_id, old, status)
        return row

    def new_booking(self, at: datetime) -> int | None:
        customers = [c for c in self.rows["customers"] if c not in self.dormant_customers]
        hotels = [h for h in self.rows["hotels"] if h not in self.unbooked_hotels]
        b = self.make_booking(at, self.rng.choice(customers), self.rng.choice(hotels), promo_rate=0.25)
        b["check_in"] = at.date() + timedelta(days=self.rng.randint(1, 90))
        b["check_out"] = b["check_in"] + timedelta(days=b["nights"])
        self.insert(at, "bookings", b)
        self.audit(at, b["booking_id"], None, "pending")
        return b["booking_id"]

    def confirm(self, at: datetime, booking_id: int | None = None) -> None:
        bid = booking_id if booking_id is not None else self.pick("bookings", self.status_index["pending"])
        if bid is None:
            return
        b = self.set_status(at, bid, "confirmed")
        if self.rng.random() < 0.06:  # declined card, retried in the same checkout
            self.insert(at, "payments", self.make_payment(b, at, "failed"))
        self.insert(at, "payments", self.make_payment(b, at, "authorized"))

    def capture(self, at: datetime) -> None:
        authorized = [p for p, row in self.rows["payments"].items() if row["status"] == "authorized"]
        pid = self.pick("payments", authorized)
        if pid is not None:
            self.update(at, "payments", pid, status="captured")

    def cancel(self, at: datetime, booking_id: int | None = None) -> None:
        if booking_id is None:
            candidates = list(self.status_index["pending"]) + list(self.status_index["confirmed"])
            booking_id = self.pick("bookings", candidates)
        if booking_id is None:
            return
        self.set_status(at, booking_id, "cancelled")
        for pid in self.payments_of.get(booking_id, []):
            if pid in self.rows["payments"] and self.rows["payments"][pid]["status"] in ("authorized", "captured"):
                self.update(at, "payments", pid, status="refunded")

    def complete(self, at: datetime) -> None:
        due = (at + timedelta(days=2)).date()
        candidates = [b for b in self.status_index["confirmed"] if self.rows["bookings"][b]["check_out"] <= due]
        bid = self.pick("bookings", candidates)
        if bid is not None:
            self.set_status(at, bid, "completed")

    def change_dates(self, at: datetime, booking_id: int | None = None) -> None:
        if booking_id is None:
            candidates = list(self.status_index["pending"]) + list(self.status_index["confirmed"])
            booking_id = self.pick("bookings", candidates)
        if booking_id is None:
            return
        b = self.rows["bookings"][booking_id]
        check_in = max(b["check_in"] + timedelta(days=self.rng.choice((-3, -2, -1, 1, 2, 3, 7))), at.date() + timedelta(days=1))
        nights = max(1, b["nights"] + self.rng.choice((-1, 0, 1, 2)))
        self.update(
            at,
            "bookings",
            booking_id,
            check_in=check_in,
            check_out=check_in + timedelta(days=nights),
            nights=nights,
            amount=self.price(b["hotel_id"], nights, b["promotion_id"]),
            updated_at=at,
        )

    def edit_customer(self, at: datetime, customer_id: int | None = None, what: str | None = None) -> None:
        cid = customer_id if customer_id is not None else self.pick("customers", self.rows["customers"])
        if cid is None:
            return
        c = self.rows["customers"][cid]
        what = what or self.rng.choice(("email", "phone", "opt_in", "country"))
        if what == "email":
            change = {"email": f"{_ascii(c['first_name'])}{self.rng.randint(1, 99)}.{_ascii(c['last_name'])}@{self.rng.choice(EMAIL_DOMAINS)}"}
        elif what == "phone":
            dial = next(d for code, d, _ in CUSTOMER_COUNTRIES if code == c["country"])
            change = {"phone": None if self.rng.random() < 0.15 else self._phone(dial)}
        elif what == "opt_in":
            change = {"marketing_opt_in": not c["marketing_opt_in"]}
        else:
            country = self.rng.choice([code for code, _, _ in CUSTOMER_COUNTRIES if code != c["country"]])
            change = {"country": country}
        self.update(at, "customers", cid, **change, updated_at=at)

    def sign_up(self, at: datetime) -> int:
        return self.insert(at, "customers", self.make_customer(at))["customer_id"]

    def edit_hotel(self, at: datetime, hotel_id: int | None = None, what: str | None = None) -> None:
        hid = hotel_id if hotel_id is not None else self.pick("hotels", self.rows["hotels"])
        if hid is None:
            return
        h = self.rows["hotels"][hid]
        what = what or self.rng.choice(("rooms", "stars", "name"))
        if what == "rooms":
            self.update(at, "hotels", hid, rooms=max(8, h["rooms"] + self.rng.choice((-20, -5, 4, 10, 36))))
        elif what == "stars":
            self.update(at, "hotels", hid, stars=min(5, h["stars"] + 1) if h["stars"] < 5 else 4)
        else:
            self.update(at, "hotels", hid, name=f"{self.rng.choice(HOTEL_PREFIXES)} {h['city']}")

    def list_hotel(self, at: datetime) -> None:
        h = self.make_hotel(at)
        self.insert(at, "hotels", h)
        self.unbooked_hotels.append(h["hotel_id"])  # bookable once the content team approves it

    def extend_promotion(self, at: datetime, promotion_id: int | None = None) -> None:
        open_ended = [p for p, r in self.rows["promotions"].items() if r["valid_to"] is not None and r["valid_to"] >= at.date()]
        pid = promotion_id if promotion_id is not None else self.pick("promotions", open_ended)
        if pid is not None:
            self.update(at, "promotions", pid, valid_to=self.rows["promotions"][pid]["valid_to"] + timedelta(days=14))

    RANDOM_EVENTS: tuple[tuple[str, float], ...] = (
        ("new_booking", 28),
        ("confirm", 20),
        ("capture", 12),
        ("cancel", 6),
        ("complete", 6),
        ("change_dates", 5),
        ("edit_customer", 12),
        ("sign_up", 5),
        ("edit_hotel", 2),
        ("list_hotel", 1),
        ("extend_promotion", 0.3),
    )

    def random_event(self, at: datetime) -> None:
        name = self.rng.choices([n for n, _ in self.RANDOM_EVENTS], weights=[w for _, w in self.RANDOM_EVENTS])[0]
        getattr(self, name)(at)


# --- scripted scenarios ------------------------------------------------------------------------


def _scenarios(db: _TravelDatabase, rnd: int, last_round: int) -> list[tuple[timedelta, Callable[[datetime], None]]]:
    """The events every demo must contain, at fixed offsets into a round (10-minute batch intervals)."""
    m = lambda minutes, seconds=0: timedelta(minutes=minutes, seconds=seconds)  # noqa: E731
    s = db.scenario
    out: list[tuple[timedelta, Callable[[datetime], None]]] = []

    if rnd == 1:
        # Signed up while the full load was running: in a LOAD file and in the first CDC file.
        out.append((m(0, 1), lambda at: s.__setitem__("overlap_customer", db.sign_up(at))))
        # Three edits of one customer in one file; the file lists them newest first.
        out += [(m(1, 10), lambda at: db.edit_customer(at, s["c_multi"], "email"))]
        out += [(m(3, 20), lambda at: db.edit_customer(at, s["c_multi"], "phone"))]
        out += [(m(6, 30), lambda at: db.edit_customer(at, s["c_multi"], "opt_in"))]
        # Bookings interval 0 is delivered late (round 2). It carries: an update of a booking that a
        # later file deletes, the insert of a booking a later file updates, and a delete of a booking
        # a later file re-inserts.
        out.append((m(2), lambda at: db.change_dates(at, s["b_del"])))
        out.append((m(4), lambda at: s.__setitem__("b_new", db.new_booking(at))))
        out.append((m(7, 30), lambda at: s.__setitem__("b_restore_row", db.delete(at, "bookings", s["b_restore"]))))
        out.append((m(14), lambda at: db.insert(at, "bookings", dict(s["b_restore_row"]))))
        out.append((m(15), lambda at: db.confirm(at, s["b_new"])))
        # Delete and re-insert of one key in the same file; the file lists the re-insert first.
        out.append((m(21), lambda at: s.__setitem__("b_restore2_row", db.delete(at, "bookings", s["b_restore2"]))))
        out.append((m(23), lambda at: db.insert(at, "bookings", dict(s["b_restore2_row"]))))
        out.append((m(25), lambda at: db.delete(at, "bookings", s["b_del"])))
        # Hotels interval 0 is delivered late too: the hotel is updated there and again in interval 2.
        out.append((m(3), lambda at: db.edit_hotel(at, s["h_multi"], "rooms")))
        out.append((m(26), lambda at: db.edit_hotel(at, s["h_multi"], "stars")))
        # A new listing is withdrawn (and re-listed in round 2).
        out.append((m(20, 30), lambda at: s.__setitem__("h_relist_row", db.delete(at, "hotels", s["h_relist"]))))
        out.append((m(12), lambda at: db.extend_promotion(at, s["p_extend"])))
    if rnd == min(2, last_round):
        out.append((m(5), lambda at: db.insert(at, "promotions", _black_friday(db))))
    if rnd == 2:
        out.append((m(10), lambda at: db.insert(at, "hotels", {**s["h_relist_row"], "rooms": s["h_relist_row"]["rooms"] + 12})))
        # One booking changed in intervals 0 and 1; the two rows swap files (a newer change in the
        # earlier-named file), which only sequence_by can order.
        out.append((m(3), lambda at: db.change_dates(at, s["b_swap"])))
        out.append((m(14), lambda at: db.confirm(at, s["b_swap"])))
        # Payments interval 0 is delivered late (round 3): the payment inserted there is refunded in
        # interval 2, which lands first.
        out.append((m(2), lambda at: db.confirm(at, s["b_pay"])))
        out.append((m(22), lambda at: db.cancel(at, s["b_pay"])))
    if rnd == min(3, last_round):
        # Two edits of one hotel in one file: only the row number orders them.
        out.append((m(21), lambda at: db.edit_hotel(at, s["h_multi"], "rooms")))
        out.append((m(24), lambda at: db.edit_hotel(at, s["h_multi"], "name")))
    if rnd == last_round:
        out.append((m(5), lambda at: _erase_customer(db, at)))
        out.append((m(12), lambda at: _purge_audit(db, at)))
        out.append((m(18), lambda at: db.delete(at, "promotions", s["p_expired"])))
    return out


def _black_friday(db: _TravelDatabase) -> dict:
    return {
        "promotion_id": db.new_id("promotions"),
        "code": "BLACKFRIDAY26",
        "discount_pct": Decimal("30.00"),
        "region": None,
        "valid_from": date(2026, 11, 27),
        "valid_to": date(2026, 11, 30),
    }


def _erase_customer(db: _TravelDatabase, at: datetime) -> None:
    """GDPR erasure of a customer without bookings."""
    for cid in db.dormant_customers:
        if cid in db.rows["customers"] and db.bookings_of_customer[cid] == 0 and ("customers", cid) not in db.pinned:
            db.delete(at, "customers", cid)
            return


def _purge_audit(db: _TravelDatabase, at: datetime) -> None:
    """Retention job: the three oldest audit rows are deleted."""
    for aid in sorted(db.rows["booking_status_history"])[:3]:
        db.delete(at, "booking_status_history", aid)


def _choose_scenario_keys(db: _TravelDatabase) -> None:
    rng = db.rng
    pending = sorted(db.status_index["pending"])
    assert len(pending) >= 5, "the full load needs at least five pending bookings"
    picked = rng.sample(pending, 5)
    for name, bid in zip(("b_del", "b_restore", "b_restore2", "b_swap", "b_pay"), picked):
        db.scenario[name] = bid
        db.pinned.add(("bookings", bid))
    active = [c for c in db.rows["customers"] if c not in db.dormant_customers]
    db.scenario["c_multi"] = rng.choice(active)
    db.pinned.add(("customers", db.scenario["c_multi"]))
    bookable = [h for h in db.rows["hotels"] if h not in db.unbooked_hotels]
    db.scenario["h_multi"] = rng.choice(bookable)
    db.scenario["h_relist"] = db.unbooked_hotels[0]
    for k in ("h_multi", "h_relist"):
        db.pinned.add(("hotels", db.scenario[k]))
    codes = {r["code"]: p for p, r in db.rows["promotions"].items()}
    db.scenario["p_extend"] = codes["LASTMINUTE"]
    db.scenario["p_expired"] = codes["SUMMER19"]
    for k in ("p_extend", "p_expired"):
        db.pinned.add(("promotions", db.scenario[k]))


# --- from the change log to DMS files ----------------------------------------------------------


@dataclass
class _CdcFile:
    table: str
    rnd: int  # the round whose window created it
    interval: int
    created: datetime
    changes: list[_Change]
    deliver_in: int = 0


def _round_start(rnd: int) -> datetime:
    return FULL_LOAD_AT + (rnd - 1) * ROUND_LENGTH


def _cdc_files(db: _TravelDatabase, cdc_rounds: int) -> list[_CdcFile]:
    groups: dict[tuple[str, int, int], list[_Change]] = {}
    for c in db.log:
        rnd = (c.at - FULL_LOAD_AT) // ROUND_LENGTH + 1
        interval = (c.at - _round_start(rnd)) // BATCH_INTERVAL
        groups.setdefault((c.table, rnd, interval), []).append(c)
    order = {name: i for i, name in enumerate(db.tables)}
    files = []
    for (table, rnd, interval), changes in sorted(groups.items(), key=lambda kv: (kv[0][1], order[kv[0][0]], kv[0][2])):
        # DMS closes the file when the batch interval ends; the name is that moment, in ms.
        created = _round_start(rnd) + (interval + 1) * BATCH_INTERVAL + timedelta(milliseconds=db.rng.randint(40, 950))
        late = (table, rnd, interval) in LATE_FILES and rnd < cdc_rounds
        files.append(_CdcFile(table, rnd, interval, created, changes, rnd + 1 if late else rnd))
    _disorder(db, files)
    return files


def _disorder(db: _TravelDatabase, files: list[_CdcFile]) -> None:
    """DMS gives no order within or across files; only sequence_by tables may show it."""
    rng, s = db.rng, db.scenario
    for f in files:
        if not db.tables[f.table].sequence_by:
            continue
        rows = f.changes
        i = 0
        while i < len(rows) - 1:
            if rng.random() < 0.15:
                rows[i], rows[i + 1] = rows[i + 1], rows[i]
                i += 1
            i += 1
        for table, key in (("customers", s["c_multi"]), ("bookings", s["b_restore2"])):
            if f.table == table:
                positions = [j for j, c in enumerate(rows) if db._key(table, c.values) == key]
                picked = sorted((rows[j] for j in positions), key=lambda c: -c.seq)
                for j, c in zip(positions, picked):
                    rows[j] = c
    # The booking changed in round 2's intervals 0 and 1 swaps rows: the earlier-named file gets the
    # newer change.
    slots = [
        (f, j)
        for f in files
        if f.table == "bookings" and f.rnd == 2 and f.interval in (0, 1)
        for j, c in enumerate(f.changes)
        if c.values["booking_id"] == s["b_swap"]
    ]
    if len({f.interval for f, _ in slots}) == 2:
        (a, ia), (b, ib) = slots[0], slots[-1]
        a.changes[ia], b.changes[ib] = b.changes[ib], a.changes[ia]


def generate_travel(
    landing: Path,
    *,
    seed: int = 7,
    customers: int = 500,
    hotels: int = 60,
    bookings: int = 3000,
    cdc_rounds: int = 4,
) -> DemoSource:
    """Write the travel source's full load and CDC rounds under landing/travel/ and return the truth.

    customers, hotels and bookings are the sizes of the full load; CDC adds to them. Round 0 is the
    full load, rounds 1..cdc_rounds are 30-minute CDC windows starting at FULL_LOAD_AT.
    """
    if customers < 20 or hotels < 5 or bookings < 50 or cdc_rounds < 1:
        raise ValueError("generate_travel needs customers >= 20, hotels >= 5, bookings >= 50, cdc_rounds >= 1")
    landing = Path(landing)
    rng = random.Random(seed)
    tables = travel_tables()
    db = _TravelDatabase(rng, tables)
    db.populate(customers, hotels, bookings)
    snapshot = {name: [dict(r) for _, r in sorted(rows.items())] for name, rows in db.rows.items()}
    _choose_scenario_keys(db)

    events_per_round = max(40, bookings // 12)
    for rnd in range(1, cdc_rounds + 1):
        start = _round_start(rnd)
        events: list[tuple[datetime, int, Callable[[datetime], None]]] = []
        for i in range(events_per_round):
            at = start + timedelta(microseconds=rng.randrange(ROUND_LENGTH // timedelta(microseconds=1)))
            events.append((at, i, db.random_event))
        for i, (offset, fn) in enumerate(_scenarios(db, rnd, cdc_rounds)):
            events.append((start + offset + timedelta(microseconds=rng.randrange(1_000_000)), -1 - i, fn))
        for at, _, fn in sorted(events, key=lambda e: (e[0], e[1])):
            fn(at)

    # The full load read the customers table after the overlap customer signed up.
    overlap = db.scenario["overlap_customer"]
    image = next(c.values for c in db.log if c.table == "customers" and c.values["customer_id"] == overlap)
    snapshot["customers"].append({**image, "change_seq": 0})
    snapshot["customers"].sort(key=lambda r: r["customer_id"])

    emitted: list[EmittedRow] = []
    rounds = [DemoRound("full_load", [])]
    for name, t in tables.items():
        endpoint = TABLE_ENDPOINTS.get(MIRRORS.get(name, name), BOOKING_ENDPOINT)
        rows = snapshot[MIRRORS.get(name, name)]
        folder = table_dir(landing, SOURCE, t.schema, t.source_table)
        for n, start in enumerate(range(0, len(rows), LOAD_FILE_ROWS), 1):
            chunk = rows[start : start + LOAD_FILE_ROWS]
            path = _write(t, endpoint, folder / load_file_name(n), chunk, cdc=False)
            rounds[0].files.append(path)
            emitted += [EmittedRow(name, path, i, "I", r, 0) for i, r in enumerate(chunk, 1)]

    files = _cdc_files(db, cdc_rounds)
    written: list[tuple[_CdcFile, Path]] = []
    rounds += [DemoRound(f"cdc_{r}", []) for r in range(1, cdc_rounds + 1)]
    for f in sorted(files, key=lambda f: (f.deliver_in, f.rnd != f.deliver_in, f.created, f.table)):
        t = tables[f.table]
        endpoint = TABLE_ENDPOINTS.get(f.table, BOOKING_ENDPOINT)
        folder = table_dir(landing, SOURCE, t.schema, t.source_table)
        if endpoint.date_partition_from_round is not None and f.rnd >= endpoint.date_partition_from_round:
            folder = folder / date_folder(f.created)
        rows = [{**c.values, "Op": c.op} for c in f.changes]
        path = _write(t, endpoint, folder / cdc_file_name(f.created), rows, cdc=True)
        rounds[f.deliver_in].files.append(path)
        written.append((f, path))
        emitted += [EmittedRow(f.table, path, i, c.op, c.values, f.deliver_in) for i, c in enumerate(f.changes, 1)]
        for mirror in (m for m, of in MIRRORS.items() if of == f.table):
            mt = tables[mirror]
            copy = table_dir(landing, SOURCE, mt.schema, mt.source_table) / path.relative_to(table_dir(landing, SOURCE, t.schema, t.source_table))
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
            rounds[f.deliver_in].files.append(copy)
            emitted += [EmittedRow(mirror, copy, i, c.op, c.values, f.deliver_in) for i, c in enumerate(f.changes, 1)]

    expected: dict[str, list[dict]] = {}
    for name, t in tables.items():
        if t.mode == "history":
            expected[name] = [{**r, "Op": "I"} for r in snapshot[name]]
            expected[name] += [{**c.values, "Op": c.op} for c in db.log if c.table == name]
        else:  # scd2: its current versions are the source's rows
            expected[name] = [r for _, r in sorted(db.rows[MIRRORS.get(name, name)].items())]
    late = [p for f, p in written if f.deliver_in != f.rnd]
    return DemoSource(rounds, expected, landing, tables, emitted, late)


def _write(t: TableConfig, endpoint: DmsEndpoint, path: Path, rows: list[dict], *, cdc: bool) -> Path:
    columns = [(c.name, c.type) for c in t.columns or ()]
    names = {c for c, _ in columns}
    for r in rows:  # the generator and travel.yaml must agree column for column
        assert set(r) - {"Op"} == names, f"{t.name}: row columns {sorted(set(r) - {'Op'})} != {sorted(names)}"
    return write_dms_file(
        path,
        rows,
        columns,
        fmt=t.format,
        cdc=cdc,
        include_op_for_full_load=endpoint.include_op_for_full_load,
        csv_header=t.csv.header,
        null_marker=t.csv.null_marker,
        gzip=endpoint.gzip,
        delimiter=t.csv.delimiter,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m demo.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--landing", type=Path, required=True, help="landing zone root (files go under <landing>/travel/)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--customers", type=int, default=500)
    p.add_argument("--hotels", type=int, default=60)
    p.add_argument("--bookings", type=int, default=3000)
    p.add_argument("--cdc-rounds", type=int, default=4)
    a = p.parse_args(argv)
    started = time.perf_counter()
    src = generate_travel(
        a.landing, seed=a.seed, customers=a.customers, hotels=a.hotels, bookings=a.bookings, cdc_rounds=a.cdc_rounds
    )
    took = time.perf_counter() - started
    late = set(src.late)
    rows_in = Counter(e.file for e in src.emitted)
    for r in src.rounds:
        print(f"{r.name}: {len(r.files)} files")
        for f in r.files:
            print(f"  {f.relative_to(a.landing).as_posix()}  {rows_in[f]} rows{'  (late)' if f in late else ''}")
    print("changes emitted per table (I/U/D) and rows expected at the end:")
    for name in src.tables:
        ops = Counter(e.op for e in src.emitted if e.table == name and not e.is_load)
        loads = sum(1 for e in src.emitted if e.table == name and e.is_load)
        print(
            f"  {name:<24} full load {loads:>5}  cdc I {ops['I']:>4} U {ops['U']:>4} D {ops['D']:>3}"
            f"  expected {len(src.expected[name]):>5} ({src.tables[name].mode})"
        )
    print(f"generated in {took:.2f} s")


if __name__ == "__main__":
    main()
