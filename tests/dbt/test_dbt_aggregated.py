"""The aggregated models, built on the local target, compared with plain-Python oracles over the
fixture's source rows; and the Iceberg side: every dbt table is in the catalog, readable by DuckDB's
iceberg_scan and pyiceberg, and a rebuild replaces the contents of the same table."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal

import pyarrow as pa
import pytest
import yaml

from lake_assets.dbt_assets import DBT_PROJECT_DIR

FX = yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text())["vars"]["fx_plan_rates"]
AGGREGATED = ["customer_lifetime_value", "daily_hotel_bookings", "loyalty_points_daily", "loyalty_tier_bookings", "payment_transactions",
              "promotion_uptake"]


def eur(amount: Decimal, currency: str) -> Decimal:
    return (amount * Decimal(str(FX[currency]))).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def by(rows: list[dict], key: str) -> dict:
    return {r[key]: r for r in rows}


def test_dbt_build_succeeds(built_lake):
    """`cd dbt_project && dbt build --target local`: every model builds and every dbt test passes."""
    build = built_lake.build
    assert build.returncode == 0, build.stdout[-6000:] + build.stderr[-3000:]
    done = [line for line in build.stdout.splitlines() if "Done. PASS=" in line][-1]
    assert "ERROR=0" in done and "WARN=0" in done and "SKIP=0" in done, done


def test_customer_lifetime_value(built_lake):
    src = built_lake.source_rows
    bookings, payments = src["bookings"], src["payments"]
    booking_of = by(bookings, "booking_id")
    actual = by(built_lake.rows("aggregated.customer_lifetime_value"), "customer_id")
    assert set(actual) == {c["customer_id"] for c in src["customers"]}
    for c in src["customers"]:
        mine = [b for b in bookings if b["customer_id"] == c["customer_id"]]
        active = [b for b in mine if b["status"] != "cancelled"]
        row = actual[c["customer_id"]]
        assert row["email"] == c["email"] and row["date_of_birth"] == c["date_of_birth"]
        assert row["bookings"] == len(mine)
        assert row["cancelled_bookings"] == len(mine) - len(active)
        assert row["room_nights"] == sum(b["nights"] for b in active)
        assert row["lifetime_revenue_eur"] == sum((eur(b["amount"], b["currency"]) for b in active), Decimal("0"))
        paid = [p for p in payments if booking_of[p["booking_id"]]["customer_id"] == c["customer_id"]]
        assert row["paid_eur"] == sum((eur(p["amount"], p["currency"]) for p in paid if p["status"] == "captured"), Decimal("0"))
        assert row["refunded_eur"] == sum((eur(p["amount"], p["currency"]) for p in paid if p["status"] == "refunded"), Decimal("0"))
        if mine:
            last = max(b["created_at"].date() for b in mine)
            assert row["last_booking_date"] == last
            assert row["tenure_days"] == (last - c["created_at"].date()).days
        else:
            assert row["last_booking_date"] is None and row["tenure_days"] is None


def test_daily_hotel_bookings(built_lake):
    src = built_lake.source_rows
    expected = defaultdict(lambda: {"bookings": 0, "cancelled_bookings": 0, "room_nights": 0,
                                    "net_revenue": Decimal("0"), "cancellations_recorded": 0})
    booking_of = by(src["bookings"], "booking_id")
    for b in src["bookings"]:
        e = expected[(b["created_at"].date(), b["hotel_id"], b["currency"])]
        e["bookings"] += 1
        if b["status"] == "cancelled":
            e["cancelled_bookings"] += 1
        else:
            e["room_nights"] += b["nights"]
            e["net_revenue"] += b["amount"]
    for h in src["booking_status_history"]:
        if h["new_status"] == "cancelled":
            b = booking_of[h["booking_id"]]
            expected[(h["changed_at"].date(), b["hotel_id"], b["currency"])]["cancellations_recorded"] += 1
    actual = {(r["activity_date"], r["hotel_id"], r["currency"]): r for r in built_lake.rows("aggregated.daily_hotel_bookings")}
    assert set(actual) == set(expected)
    region = {h["hotel_id"]: h["region"] for h in src["hotels"]}
    for key, e in expected.items():
        row = actual[key]
        assert {k: row[k] for k in e} == e, key
        assert row["region"] == region[key[1]]
        if e["room_nights"]:
            assert row["average_daily_rate"] == (e["net_revenue"] / e["room_nights"]).quantize(Decimal("0.01"), ROUND_HALF_UP)
    # Hours from booking to first confirmation, e.g. booking 1004: 09:45 -> 21:45 the same day.
    assert actual[(dt.date(2025, 12, 10), 103, "EUR")]["avg_hours_to_confirm"] == pytest.approx(12.0)


def test_promotion_uptake(built_lake):
    src = built_lake.source_rows
    region = {h["hotel_id"]: h["region"] for h in src["hotels"]}
    active = [b for b in src["bookings"] if b["status"] != "cancelled"]
    actual = by(built_lake.rows("aggregated.promotion_uptake"), "promotion_id")
    assert set(actual) == {p["promotion_id"] for p in src["promotions"]}
    for p in src["promotions"]:
        used = [b for b in active if b["promotion_id"] == p["promotion_id"]]
        eligible = [
            b for b in active
            if p["valid_from"] <= b["created_at"].date() and (p["valid_to"] is None or b["created_at"].date() <= p["valid_to"])
            and p["region"] in (None, region[b["hotel_id"]])
        ]
        row = actual[p["promotion_id"]]
        assert row["redemptions"] == len(used)
        assert row["customers"] == len({b["customer_id"] for b in used})
        assert row["eligible_bookings"] == len(eligible)
        assert row["uptake_pct"] == (100 * len(used) // len(eligible) if eligible else None)
        discount = sum(float(b["amount"]) * float(p["discount_pct"]) / (100 - float(p["discount_pct"])) * FX[b["currency"]] for b in used)
        assert float(row["discount_eur"]) == pytest.approx(discount, abs=0.01 * max(len(used), 1))
    assert actual[202]["uptake_pct"] == 42  # 3 of 7: integer division truncates on both engines
    assert actual[204]["eligible_bookings"] > 0 and actual[204]["uptake_pct"] == 0  # open-ended, every region


def test_loyalty_tier_bookings_joins_the_two_sources(built_lake):
    src = built_lake.source_rows
    tier_of = {m["customer_id"]: m["tier"] for m in src["members"]}
    points = {}
    for r in src["hotel_rates"]:
        points[r["hotel_id"]] = max(points.get(r["hotel_id"], 0), r["points_per_night"])
    active = [b for b in src["bookings"] if b["status"] != "cancelled"]
    actual = by(built_lake.rows("aggregated.loyalty_tier_bookings"), "tier")
    assert set(actual) == {"bronze", "silver", "gold", "platinum", "none"}
    for tier, row in actual.items():
        members = [m for m in src["members"] if m["tier"] == tier]
        mine = [b for b in active if tier_of.get(b["customer_id"], "none") == tier]
        partner = [b for b in mine if b["hotel_id"] in points]
        assert row["members"] == len(members) and row["points_balance"] == sum(m["points_balance"] for m in members)
        assert row["booking_customers"] == len({b["customer_id"] for b in mine})
        assert row["bookings"] == len(mine) and row["room_nights"] == sum(b["nights"] for b in mine)
        revenue = sum((eur(b["amount"], b["currency"]) for b in mine), Decimal("0"))
        assert row["revenue_eur"] == revenue
        assert row["average_booking_value_eur"] == ((revenue / len(mine)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP) if mine else None)
        assert row["partner_hotel_bookings"] == len(partner) and row["partner_room_nights"] == sum(b["nights"] for b in partner)
        assert row["points_earnable"] == sum(b["nights"] * points[b["hotel_id"]] for b in partner)
    assert actual["none"]["members"] == 0 and actual["none"]["bookings"] > 0  # customers who are not members
    assert actual["silver"]["members"] == 2 > actual["silver"]["booking_customers"]  # a member without a travel account


def test_loyalty_points_daily_joins_the_event_stream_to_members_and_bookings(built_lake):
    src = built_lake.source_rows
    tier_of = {m["customer_id"]: m["tier"] for m in src["members"]}
    booking_of = by(src["bookings"], "booking_id")
    groups: dict[tuple, list[dict]] = {}
    for e in src["points_events"]:
        groups.setdefault((e["event_time"].astimezone(dt.UTC).date(), tier_of.get(e["customer_id"], "none")), []).append(e)
    actual = {(r["activity_date"], r["tier"]): r for r in built_lake.rows("aggregated.loyalty_points_daily")}
    assert set(actual) == set(groups)
    for key, events in groups.items():
        row = actual[key]
        earned = [e for e in events if e["kind"] == "earn"]
        at_bookings = {e["booking_id"] for e in earned if e["booking_id"] is not None}
        assert row["active_members"] == len({e["customer_id"] for e in events})
        assert (row["earn_events"], row["redeem_events"]) == (len(earned), len(events) - len(earned))
        assert row["points_earned"] == sum(e["points"] for e in earned)
        assert row["points_redeemed"] == sum(e["points"] for e in events if e["kind"] == "redeem")
        assert row["net_points"] == row["points_earned"] - row["points_redeemed"]
        assert row["points_earned_at_bookings"] == sum(e["points"] for e in earned if e["booking_id"] is not None)
        assert row["bookings_earning"] == len(at_bookings)
        assert row["booked_revenue_eur"] == sum((eur(booking_of[b]["amount"], booking_of[b]["currency"]) for b in at_bookings), Decimal("0"))
    jan3, jan4 = dt.date(2026, 1, 3), dt.date(2026, 1, 4)
    assert actual[(jan3, "silver")]["earn_events"] == 1 and actual[(jan4, "silver")]["redeem_events"] == 1  # split at UTC midnight
    assert actual[(jan3, "gold")]["bookings_earning"] == 1 and actual[(jan3, "gold")]["earn_events"] == 2  # one booking, counted once
    assert actual[(jan4, "none")]["points_earned"] == 300  # a customer who has left since


def test_payment_transactions(built_lake):
    src = built_lake.source_rows
    booking_of = by(src["bookings"], "booking_id")
    actual = by(built_lake.rows("aggregated.payment_transactions"), "payment_id")
    assert set(actual) == {p["payment_id"] for p in src["payments"]}
    for p in src["payments"]:
        row = actual[p["payment_id"]]
        assert row["customer_id"] == booking_of[p["booking_id"]]["customer_id"]
        assert row["card_number"] == p["card_number"] and row["paid_at"] == p["paid_at"]
        assert row["amount_eur"] == eur(p["amount"], p["currency"])


def test_dbt_tables_are_iceberg_tables_in_the_catalog(built_lake, iceberg_duckdb):
    catalog = built_lake.catalog
    consumers = [ns[0] for ns in catalog.list_namespaces() if ns[0].startswith("consumer_")]
    assert sorted(consumers) == ["consumer_data_science", "consumer_finance", "consumer_marketing"]
    assert sorted(t for _, t in catalog.list_tables("aggregated")) == AGGREGATED
    for name in AGGREGATED:
        table = catalog.load_table(f"aggregated.{name}")
        via_duckdb = iceberg_duckdb.execute(f"SELECT count(*) FROM iceberg_scan('{table.metadata_location}')").fetchone()[0]
        assert via_duckdb == len(table.scan().to_arrow()) > 0
        summary = table.current_snapshot().summary
        assert summary["dbt.model"] == f"model.lakehouse.{name}"
    assert [f.name for f in catalog.load_table("aggregated.payment_transactions").spec().fields] == ["paid_date_month"]


def test_rebuild_replaces_contents_in_place(tmp_path):
    """The plugin's write keeps the table (identity, history) and applies schema changes with the data."""
    from lake_iceberg import lake_catalog, write_table  # dbt_project/plugins, on sys.path below

    catalog = lake_catalog(tmp_path)
    first = pa.table({"id": pa.array([1, 2], pa.int64()), "name": ["a", "b"], "n": pa.array([1, 2], pa.int32())})
    write_table(catalog, "aggregated.t", first)
    uuid = catalog.load_table("aggregated.t").metadata.table_uuid
    write_table(catalog, "aggregated.t", first.slice(0, 1))
    assert catalog.load_table("aggregated.t").scan().to_arrow().num_rows == 1
    second = pa.table({"label": ["x"], "id": pa.array([7], pa.int64()), "n": ["now text"]})
    write_table(catalog, "aggregated.t", second, snapshot_properties={"dbt.model": "m"})
    table = catalog.load_table("aggregated.t")
    assert table.metadata.table_uuid == uuid
    assert [f.name for f in table.schema().fields] == ["label", "id", "n"]
    assert table.scan().to_arrow().to_pylist() == [{"label": "x", "id": 7, "n": "now text"}]
    assert len(table.snapshots()) >= 3 and table.current_snapshot().summary["dbt.model"] == "m"
    write_table(catalog, "aggregated.t", second, partitioned_by=["identity(label)"])
    assert [f.name for f in catalog.load_table("aggregated.t").spec().fields] == ["label"]


@pytest.fixture(autouse=True, scope="module")
def _plugin_on_path():
    import sys

    path = str(DBT_PROJECT_DIR / "plugins")
    sys.path.insert(0, path)
    yield
    sys.path.remove(path)
