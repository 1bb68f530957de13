"""Source-aligned tables of the demo sources `travel` and `loyalty`, as the CDC merge leaves them,
for the dbt tests.

The schemas come from the table registry (lake_assets/sources/travel.yaml, loyalty.yaml) plus the
merge's lake columns; the rows are small but realistic: PII of every shape (apostrophes, accents, short and
missing values), customers who opted out, payments outside EMEA, US customers, cancelled
bookings, refunds, a promotion nobody used and a hotel without bookings. Region codes and
promotion validity are written as the demo source writes them: EMEA/AMER/APAC, a null region for
a code valid everywhere, a null valid_to for an open-ended one. Loyalty members are travel customers in every tier (and one
member whose travel account is gone), partner rates cover some hotels (one without bookings) with
several room types. Points events cross the UTC midnight, earn twice at one booking, and include
a customer who has left the programme since. `run_dbt` runs dbt
from the project directory the way the README's workflow and Dagster do.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog

from lake_assets.core.deployment import local_catalog
from lake_assets.core.registry import TableConfig, load_registry
from lake_assets.core.types import arrow_type
from lake_assets.dbt_assets import DBT_PROJECT_DIR, dbt_executable

SOURCE = "travel"
LOYALTY = "loyalty"

LAKE_COLUMNS = [
    ("_lake_seq", pa.string()),
    ("_lake_batch_id", pa.string()),
    ("_lake_op", pa.string()),
    ("_lake_ingested_at", pa.timestamp("us")),
]


def arrow_schema(table: TableConfig) -> pa.Schema:
    fields = [pa.field(c.name, arrow_type(c.type)) for c in table.columns if table.lands(c.name)]
    return pa.schema(fields + [pa.field(n, t) for n, t in LAKE_COLUMNS])


def d(s: str) -> dt.date:
    return dt.date.fromisoformat(s)


def ts(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s)


def money(s: str | None) -> Decimal | None:
    return None if s is None else Decimal(s)


CUSTOMERS = [
    # id, first, last, email, phone, dob, country, opt_in, created
    (1, "Anna", "Schmidt", "anna.schmidt@example.de", "+49 30 1234567", "1985-04-12", "DE", True, "2025-11-02 09:15:00"),
    (2, "Liam", "O'Brien", "liam.obrien@example.ie", "+353 1 555 0101", "1990-08-30", "IE", False, "2025-11-05 17:40:00"),
    (3, "Zoë", "Müller", "zoe.mueller@example.de", "+49 89 7654321", "1978-01-03", "DE", True, "2025-11-10 08:05:00"),
    (4, "Wei", "Li", "wei.li@example.com", "+1 212 555 0199", "1995-12-24", "US", True, "2025-11-12 22:10:00"),
    (5, "Maria", "Garcia", "maria.garcia@example.es", None, None, "ES", True, "2025-11-20 13:00:00"),
    (6, "John", "Smith", "john.smith@example.co.uk", "+44 20 7946 0958", "1969-07-20", "GB", False, "2025-12-01 10:30:00"),
    (7, "Emily", "Johnson", "emily.j@example.com", "+1 305 555 0142", "1988-02-29", "US", False, "2025-12-03 16:45:00"),
    (8, "Pierre", "Dubois", None, "+33 1 42 68 53 00", "1975-05-05", "FR", True, "2025-12-05 11:11:00"),
    (9, "Sofia", "Rossi", "sofia.rossi@example.it", "+39 06 555 1234", "2001-10-10", None, True, "2025-12-08 07:20:00"),
    (10, "Jo", "Q", "jo.q@example.nl", "+31 20 555 0000", "1999-03-15", "NL", True, "2025-12-10 19:00:00"),
]

HOTELS = [
    (101, "Hotel Spree", "Berlin", "DE", "EMEA", 4, 120),
    (102, "Le Petit Louvre", "Paris", "FR", "EMEA", 3, 45),
    (103, "Casa Alfama", "Lisbon", "PT", "EMEA", 4, 60),
    (104, "The Thames View", "London", "GB", "EMEA", 5, 200),
    (105, "Midtown Suites", "New York", "US", "AMER", 4, 310),
    (106, "Ocean Drive Inn", "Miami", "US", "AMER", 3, 80),
    (107, "Alpenblick", "Innsbruck", "AT", "EMEA", 4, 35),  # no bookings yet
]
COUNTRY_CURRENCY = {"GB": "GBP", "US": "USD"}  # the other hotels are in the euro area

PROMOTIONS = [
    # region None: valid in every region; valid_to None: open-ended (as the demo source writes them)
    (201, "WINTER10", "10.00", "EMEA", "2025-12-01", "2025-12-31"),
    (202, "NEWYEAR25", "25.00", None, "2025-12-26", "2026-01-05"),
    (203, "LONDON15", "15.00", "EMEA", "2025-12-01", "2026-01-31"),
    (204, "LOYALTY5", "5.00", None, "2025-12-15", None),  # never used
]

BOOKINGS = [
    # id, customer, hotel, promotion, check_in, nights, amount, status, created
    (1001, 1, 101, None, "2026-01-10", 3, "360.00", "completed", "2025-12-01 10:00:00"),
    (1002, 1, 102, 201, "2026-02-14", 2, "216.00", "confirmed", "2025-12-05 12:30:00"),
    (1003, 2, 101, None, "2026-01-20", 1, "130.00", "cancelled", "2025-12-05 18:00:00"),
    (1004, 3, 103, 201, "2026-03-01", 5, "450.00", "confirmed", "2025-12-10 09:45:00"),
    (1005, 3, 104, 203, "2026-01-15", 2, "510.00", "completed", "2025-12-10 10:15:00"),
    (1006, 4, 105, None, "2026-02-01", 4, "1160.00", "confirmed", "2025-12-12 23:00:00"),
    (1007, 4, 106, 202, "2026-03-10", 3, "405.00", "pending", "2025-12-27 14:00:00"),
    (1008, 5, 103, 202, "2026-02-20", 2, "165.00", "confirmed", "2025-12-28 08:00:00"),
    (1009, 6, 104, None, "2026-01-05", 1, "280.00", "cancelled", "2025-12-28 20:20:00"),
    (1010, 6, 104, 203, "2026-02-05", 3, "714.00", "confirmed", "2026-01-02 09:00:00"),
    (1011, 7, 106, None, "2026-04-01", 7, "1050.00", "confirmed", "2026-01-03 15:30:00"),
    (1012, 8, 102, 202, "2026-01-30", 2, "165.00", "completed", "2026-01-03 16:00:00"),
    (1013, 9, 101, None, "2026-05-01", 4, "480.00", "confirmed", "2026-01-04 11:00:00"),
    (1014, 1, 101, None, "2026-06-01", 2, "240.00", "cancelled", "2026-01-04 11:30:00"),
    (1015, 10, 103, None, "2026-02-11", 1, "95.00", "confirmed", "2026-01-04 12:00:00"),
    (1016, 2, 102, 201, "2026-01-08", 1, "108.00", "completed", "2025-12-20 07:00:00"),
]

PAYMENTS = [
    # id, booking, amount, method, card, region, status, paid_at
    (3001, 1001, "360.00", "card", "4111111111111111", "EMEA", "captured", "2025-12-01 10:05:00"),
    (3002, 1002, "216.00", "card", "5555555555554444", "EMEA", "captured", "2025-12-05 12:31:10"),
    (3003, 1003, "130.00", "card", "4000056655665556", "EMEA", "captured", "2025-12-05 18:02:00"),
    (3004, 1003, "130.00", "card", "4000056655665556", "EMEA", "refunded", "2025-12-07 09:00:00"),
    (3005, 1004, "450.00", "card", "378282246310005", "EMEA", "captured", "2025-12-10 09:50:00"),
    (3006, 1005, "510.00", "card", "6011111111111117", "EMEA", "captured", "2025-12-10 10:16:00"),
    (3007, 1006, "1160.00", "card", "4242424242424242", "AMER", "captured", "2025-12-12 23:05:00"),
    (3008, 1007, "405.00", "card", "5105105105105100", "AMER", "failed", "2025-12-27 14:01:00"),
    (3009, 1008, "165.00", "bank_transfer", None, "EMEA", "captured", "2025-12-29 10:00:00"),
    (3010, 1009, "280.00", "card", "4000002500003155", "EMEA", "refunded", "2025-12-30 08:00:00"),
    (3011, 1010, "714.00", "card", "4000002760003184", "EMEA", "captured", "2026-01-02 09:01:00"),
    (3012, 1011, "1050.00", "card", "4000000000003220", "AMER", "captured", "2026-01-03 15:31:00"),
    (3013, 1012, "165.00", "card", "4000000000009995", "EMEA", "captured", "2026-01-03 16:02:00"),
    (3014, 1013, "480.00", "card", "4000000000000077", "EMEA", "captured", "2026-01-04 11:03:00"),
    (3015, 1015, "95.00", "card", "4000 0000 0000 0002", "EMEA", "captured", "2026-01-04 12:01:00"),
    (3016, 1016, "108.00", "card", "36227206271667", "EMEA", "captured", "2025-12-20 07:02:00"),
]

STATUS_HISTORY = [
    # audit id, booking, old, new, changed_at
    (1, 1001, None, "pending", "2025-12-01 10:00:00"),
    (2, 1001, "pending", "confirmed", "2025-12-01 12:30:00"),
    (3, 1001, "confirmed", "completed", "2026-01-13 11:00:00"),
    (4, 1002, None, "pending", "2025-12-05 12:30:00"),
    (5, 1002, "pending", "confirmed", "2025-12-05 13:00:00"),
    (6, 1003, None, "pending", "2025-12-05 18:00:00"),
    (7, 1003, "pending", "confirmed", "2025-12-06 09:00:00"),
    (8, 1003, "confirmed", "cancelled", "2025-12-07 08:59:00"),
    (9, 1004, None, "pending", "2025-12-10 09:45:00"),
    (10, 1004, "pending", "confirmed", "2025-12-10 21:45:00"),
    (11, 1005, "pending", "confirmed", "2025-12-10 10:45:00"),
    (12, 1005, "confirmed", "completed", "2026-01-17 10:00:00"),
    (13, 1006, "pending", "confirmed", "2025-12-13 05:00:00"),
    (14, 1009, "pending", "confirmed", "2025-12-28 20:30:00"),
    (15, 1009, "confirmed", "cancelled", "2025-12-30 07:59:00"),
    (16, 1010, "pending", "confirmed", "2026-01-02 10:00:00"),
    (17, 1014, "pending", "cancelled", "2026-01-04 18:30:00"),
    (18, 1016, "pending", "confirmed", "2025-12-20 08:00:00"),
]


MEMBERS = [
    # customer, tier, points balance, lifetime points, enrolled (UTC); customers 2, 5, 7, 9, 10 are not members
    (1, "gold", 18_250, 24_000, "2024-03-01 10:00:00"),
    (3, "silver", 1_200, 6_400, "2025-01-15 08:30:00"),
    (4, "bronze", 500, 500, "2025-11-12 22:15:00"),
    (6, "platinum", 61_000, 75_500, "2023-06-30 19:45:00"),
    (8, "bronze", 0, 2_100, "2025-12-05 11:20:00"),
    (11, "silver", 3_000, 5_600, "2024-09-09 09:09:00"),  # its travel customer is gone
]

HOTEL_RATES = [
    # hotel, room type, nightly rate, member discount %, points per night (currency: the hotel's)
    (101, "standard", "120.00", "10.00", 200),
    (101, "deluxe", "168.00", "10.00", 200),
    (104, "standard", "240.00", "5.00", 250),
    (104, "suite", "520.00", "5.00", 300),
    (105, "standard", "290.00", "7.50", 200),
    (107, "standard", "110.00", "12.50", 200),  # no bookings
]

POINTS_EVENTS = [
    # event, customer, event time (UTC), kind, points, booking
    ("e-01", 1, "2026-01-03 09:00:00", "earn", 600, 1001),
    ("e-02", 1, "2026-01-03 09:00:05", "earn", 200, 1001),  # the same booking again: its revenue counts once
    ("e-03", 3, "2026-01-03 23:59:30", "earn", 1000, 1005),  # the UTC day's last minute
    ("e-04", 3, "2026-01-04 00:00:30", "redeem", 400, None),
    ("e-05", 4, "2026-01-04 08:00:00", "earn", 500, None),  # a welcome bonus
    ("e-06", 9, "2026-01-04 10:00:00", "earn", 300, 1013),  # customer 9 has left the programme since
    ("e-07", 6, "2026-01-04 11:00:00", "redeem", 5000, None),
    ("e-08", 6, "2026-01-04 12:00:00", "earn", 900, 1010),
]


def _lake(seq: int, at: str) -> tuple:
    return (f"{seq:020d}", "batch-0001", "I", ts(at))


def source_rows() -> dict[str, list[dict]]:
    """The rows of each source-aligned table, as dicts with source and lake columns."""
    hotel_country = {h[0]: h[3] for h in HOTELS}
    rows: dict[str, list[dict]] = {}
    rows["customers"] = [
        dict(change_seq=i, customer_id=c[0], first_name=c[1], last_name=c[2], email=c[3], phone=c[4],
             date_of_birth=None if c[5] is None else d(c[5]), country=c[6], marketing_opt_in=c[7],
             created_at=ts(c[8]), updated_at=ts(c[8]))
        for i, c in enumerate(CUSTOMERS, 1)
    ]
    rows["hotels"] = [
        dict(hotel_id=h[0], name=h[1], city=h[2], country=h[3], region=h[4], stars=h[5], rooms=h[6],
             created_at=ts("2025-01-01 00:00:00"))
        for h in HOTELS
    ]
    rows["promotions"] = [
        dict(promotion_id=p[0], code=p[1], discount_pct=money(p[2]), region=p[3], valid_from=d(p[4]), valid_to=None if p[5] is None else d(p[5]))
        for p in PROMOTIONS
    ]
    rows["bookings"] = [
        dict(change_seq=i, booking_id=b[0], customer_id=b[1], hotel_id=b[2], promotion_id=b[3],
             check_in=d(b[4]), check_out=d(b[4]) + dt.timedelta(days=b[5]), nights=b[5], amount=money(b[6]),
             currency=COUNTRY_CURRENCY.get(hotel_country[b[2]], "EUR"), status=b[7], created_at=ts(b[8]), updated_at=ts(b[8]))
        for i, b in enumerate(BOOKINGS, 1)
    ]
    currency_of_booking = {b["booking_id"]: b["currency"] for b in rows["bookings"]}
    rows["payments"] = [
        dict(payment_id=p[0], booking_id=p[1], amount=money(p[2]), currency=currency_of_booking[p[1]], method=p[3],
             card_number=p[4], region=p[5], status=p[6], paid_at=ts(p[7]))
        for p in PAYMENTS
    ]
    rows["booking_status_history"] = [
        dict(audit_id=h[0], booking_id=h[1], old_status=h[2], new_status=h[3], changed_at=ts(h[4]))
        for h in STATUS_HISTORY
    ]
    rows["members"] = [
        dict(customer_id=m[0], member_number=f"LY-{1000000 + m[0]:07d}", tier=m[1], points_balance=m[2],
             lifetime_points=m[3], enrolled_at=ts(m[4]).replace(tzinfo=dt.UTC), updated_at=ts("2026-01-04 12:00:00").replace(tzinfo=dt.UTC))
        for m in MEMBERS
    ]
    rows["hotel_rates"] = [
        dict(hotel_id=r[0], room_type=r[1], nightly_rate=money(r[2]), currency=COUNTRY_CURRENCY.get(hotel_country[r[0]], "EUR"),
             member_discount_pct=money(r[3]), points_per_night=r[4])
        for r in HOTEL_RATES
    ]
    rows["points_events"] = [
        dict(event_id=e[0], customer_id=e[1], event_time=ts(e[2]).replace(tzinfo=dt.UTC), kind=e[3], points=e[4], booking_id=e[5])
        for e in POINTS_EVENTS
    ]
    for table_rows in rows.values():
        for i, r in enumerate(table_rows, 1):
            r.update(zip([n for n, _ in LAKE_COLUMNS], _lake(i, "2026-01-05 00:00:00")))
    return rows


def _lake_of(row: dict) -> dict:
    return {n: row[n] for n, _ in LAKE_COLUMNS}


def lake_catalog(home: Path) -> SqlCatalog:
    return local_catalog(home)


def create_source_tables(home: Path) -> dict[str, list[dict]]:
    """Create travel.<table> and loyalty.<table> in the catalog at `home` with the fixture rows; return the rows."""
    home.mkdir(parents=True, exist_ok=True)
    catalog = lake_catalog(home)
    rows = source_rows()
    by_source = load_registry().by_source()
    for table in by_source[SOURCE] + by_source[LOYALTY]:
        catalog.create_namespace_if_not_exists(table.source)
        if table.name == "customer_versions":  # the scd2 demo table: one version per customer, what lands
            rows[table.name] = [{c.name: r[c.name] for c in table.columns if table.lands(c.name)} | _lake_of(r)
                                for r in rows["customers"]]
        schema = arrow_schema(table)
        data = pa.Table.from_pylist(rows[table.name], schema=schema)
        iceberg = catalog.create_table(table.identifier, schema=schema)
        iceberg.append(data)
    return rows


def run_dbt(args: list[str], *, lake_home: Path, target_path: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """dbt from the project directory, as the README's workflow and Dagster run it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBT_")}
    env.update({"LAKE_HOME": str(lake_home), "LAKE_ENV": "local", "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"})
    env.update(extra_env or {})
    return subprocess.run(
        [dbt_executable(), *args, "--target-path", str(target_path), "--log-path", str(target_path)],
        cwd=DBT_PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
