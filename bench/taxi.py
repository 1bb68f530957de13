"""A benchmark table shaped like NYC yellow-taxi trip records, landed as DMS full load and CDC files.

Columns, value ranges and null patterns follow the TLC trip record files (one month of pickups,
payment type 0 rows with unknown passenger/rate/surcharge fields). Generation is vectorised with
`pyarrow.compute` (no numpy) and deterministic for a seed and pyarrow version; the registry entry is
`bench/sources/taxi.yaml`. The table has no sequence column: every changed key appears once per CDC
file, so file order alone orders the changes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from demo.dms_writer import cdc_file_name, load_file_name, table_dir, write_dms_table

TAXI_SOURCE = "nyc"
TAXI_SCHEMA = "public"
TAXI_TABLE = "yellow_trips"
TAXI_ROWS = 1_370_000
TAXI_COLUMNS: list[tuple[str, str]] = [
    ("trip_id", "long"),
    ("vendor_id", "int"),
    ("tpep_pickup_datetime", "timestamp"),
    ("tpep_dropoff_datetime", "timestamp"),
    ("passenger_count", "int"),
    ("trip_distance", "double"),
    ("ratecode_id", "int"),
    ("store_and_fwd_flag", "string"),
    ("pu_location_id", "int"),
    ("do_location_id", "int"),
    ("payment_type", "int"),
    ("fare_amount", "double"),
    ("extra", "double"),
    ("mta_tax", "double"),
    ("tip_amount", "double"),
    ("tolls_amount", "double"),
    ("improvement_surcharge", "double"),
    ("total_amount", "double"),
    ("congestion_surcharge", "double"),
    ("airport_fee", "double"),
]
PICKUP_MONTH_START = datetime(2026, 10, 1)
PICKUP_DAYS = 31
CHANGES_AT = datetime(2026, 11, 2, 6, 0, 0)  # creation time of the first CDC file
# Busy taxi zones (Midtown, Upper East Side, airports...) get most pickups, as in the TLC data.
BUSY_ZONES = (161, 162, 236, 237, 230, 186, 48, 170, 142, 239, 163, 234, 68, 79, 107, 132, 138, 141, 100, 249)
_US_PER_SECOND = 1_000_000


def taxi_dir(landing: Path, source: str = TAXI_SOURCE) -> Path:
    return table_dir(landing, source, TAXI_SCHEMA, TAXI_TABLE)


def _uniform(n: int, seed: int, stream: int) -> pa.Array:
    """Independent uniform [0, 1) streams per column; a prefix of a stream does not depend on n."""
    return pc.random(n, initializer=seed * 1009 + stream)


def _choice(u: pa.Array, values: pa.Array, weights: list[float]) -> pa.Array:
    """values[i] with probability weights[i], by comparing u against cumulative thresholds."""
    total, cum = sum(weights), 0.0
    index = pa.repeat(pa.scalar(0, pa.int32()), len(u))
    for w in weights[:-1]:
        cum += w / total
        index = pc.add(index, pc.cast(pc.greater_equal(u, cum), pa.int32()))
    return values.take(index)


def _money(x) -> pa.Array:
    return pc.round(x, 2)


def taxi_trips(first_id: int, rows: int, seed: int) -> pa.Table:
    """`rows` trips with trip_id first_id.. (consecutive), columns as TAXI_COLUMNS."""
    u = lambda stream: _uniform(rows, seed, stream)  # noqa: E731
    trip_id = pa.array(range(first_id, first_id + rows), pa.int64())
    vendor_id = _choice(u(1), pa.array([1, 2], pa.int32()), [0.28, 0.72])

    span_us = PICKUP_DAYS * 86_400 * _US_PER_SECOND
    start_us = int((PICKUP_MONTH_START - datetime(1970, 1, 1)) / timedelta(microseconds=1))
    pickup_us = pc.add(pc.cast(pc.floor(pc.multiply(u(2), span_us)), pa.int64()), start_us)
    pickup = pc.cast(pickup_us, pa.timestamp("us"))

    # Trip length is roughly exponential (median ~1.7 miles) with a long airport tail.
    distance = _money(pc.min_element_wise(pc.multiply(pc.negate(pc.ln(pc.subtract(1.0, u(3)))), 2.6), 48.0))
    seconds_per_mile = pc.add(150.0, pc.multiply(u(4), 260.0))
    duration_us = pc.cast(pc.floor(pc.multiply(pc.add(pc.multiply(distance, seconds_per_mile), 90.0), _US_PER_SECOND)), pa.int64())
    dropoff = pc.cast(pc.add(pickup_us, duration_us), pa.timestamp("us"))

    # Payment type 0: a street-hail record with unknown passenger, rate and surcharge fields (nulls).
    unknown = pc.less(u(5), 0.03)
    null_int = pa.scalar(None, pa.int32())
    null_double = pa.scalar(None, pa.float64())
    passengers = _choice(u(6), pa.array([1, 2, 3, 4, 5, 6, 0], pa.int32()), [70, 15, 5, 3, 3, 2, 2])
    ratecode = _choice(u(7), pa.array([1, 2, 3, 4, 5, 99], pa.int32()), [94, 3, 0.5, 0.5, 1.5, 0.5])
    flag = _choice(u(8), pa.array(["N", "Y"]), [99.5, 0.5])
    busy = pa.array(BUSY_ZONES, pa.int32()).take(pc.cast(pc.floor(pc.multiply(u(9), len(BUSY_ZONES))), pa.int32()))
    anywhere = pc.cast(pc.add(pc.floor(pc.multiply(u(10), 263)), 1), pa.int32())
    pu_location = pc.if_else(pc.less(u(11), 0.65), busy, anywhere)
    do_location = pc.cast(pc.add(pc.floor(pc.multiply(u(12), 263)), 1), pa.int32())
    payment = pc.if_else(unknown, pa.scalar(0, pa.int32()), _choice(u(13), pa.array([1, 2, 3, 4], pa.int32()), [72, 23, 2, 3]))

    minutes = pc.divide(pc.cast(duration_us, pa.float64()), 60.0 * _US_PER_SECOND)
    metered = pc.add(pc.add(3.0, pc.multiply(distance, 3.5)), pc.multiply(minutes, 0.35))
    jfk = pc.equal(ratecode, 2)
    fare = _money(pc.if_else(pc.fill_null(jfk, False), 70.0, metered))
    extra = _choice(u(14), pa.array([0.0, 1.0, 2.5, 5.0]), [45, 25, 20, 10])
    tip_share = pc.if_else(pc.less(u(15), 0.2), 0.0, pc.add(0.12, pc.multiply(u(16), 0.18)))
    tip = _money(pc.if_else(pc.equal(payment, 1), pc.multiply(fare, tip_share), 0.0))
    tolls = pc.if_else(pc.less(u(17), 0.06), 6.94, 0.0)
    congestion = pc.if_else(unknown, null_double, pc.if_else(pc.less(u(18), 0.8), 2.5, 0.0))
    airport = pc.or_(pc.fill_null(jfk, False), pc.is_in(pu_location, pa.array([132, 138], pa.int32())))
    airport_fee = pc.if_else(unknown, null_double, pc.if_else(airport, 1.75, 0.0))

    table = pa.table(
        {
            "trip_id": trip_id,
            "vendor_id": vendor_id,
            "tpep_pickup_datetime": pickup,
            "tpep_dropoff_datetime": dropoff,
            "passenger_count": pc.if_else(unknown, null_int, passengers),
            "trip_distance": distance,
            "ratecode_id": pc.if_else(unknown, null_int, ratecode),
            "store_and_fwd_flag": pc.if_else(unknown, pa.scalar(None, pa.string()), flag),
            "pu_location_id": pu_location,
            "do_location_id": do_location,
            "payment_type": payment,
            "fare_amount": fare,
            "extra": extra,
            "mta_tax": pa.repeat(pa.scalar(0.5), rows),  # flat MTA tax
            "tip_amount": tip,
            "tolls_amount": tolls,
            "improvement_surcharge": pa.repeat(pa.scalar(1.0), rows),
            "total_amount": pa.nulls(rows, pa.float64()),
            "congestion_surcharge": congestion,
            "airport_fee": airport_fee,
        }
    )
    return with_total(table)


def with_total(table: pa.Table) -> pa.Table:
    """total_amount = the sum of the fare components, in cents as the meter prints it."""
    parts = ("fare_amount", "extra", "mta_tax", "tip_amount", "tolls_amount", "improvement_surcharge",
             "congestion_surcharge", "airport_fee")  # fmt: skip
    total = None
    for p in parts:
        col = pc.fill_null(table.column(p), 0.0)
        total = col if total is None else pc.add(total, col)
    i = table.column_names.index("total_amount")
    return table.set_column(i, "total_amount", _money(total))


def write_taxi_full_load(
    landing: Path, rows: int = TAXI_ROWS, seed: int = 1, source: str = TAXI_SOURCE, files: int = 4
) -> list[Path]:
    """The full load: `rows` trips (trip_id 1..rows) split over `files` LOAD files in key order."""
    table = taxi_trips(1, rows, seed)
    folder = taxi_dir(landing, source)
    per_file = -(-rows // files)
    return [
        write_dms_table(folder / load_file_name(n), table.slice(start, per_file), TAXI_COLUMNS, cdc=False)
        for n, start in enumerate(range(0, rows, per_file), 1)
    ]


@dataclass(frozen=True)
class TaxiChangePlan:
    """How many keys a change set touches, and what the table holds after it is merged."""

    base_rows: int
    updates: int
    deletes: int
    inserts: int

    @property
    def changes(self) -> int:
        return self.updates + self.deletes + self.inserts

    @property
    def final_rows(self) -> int:
        return self.base_rows - self.deletes + self.inserts


def taxi_change_plan(base_rows: int, fraction: float = 0.10, update_share: float = 0.70, delete_share: float = 0.15) -> TaxiChangePlan:
    if not 0 < fraction <= 1 or update_share < 0 or delete_share < 0 or update_share + delete_share > 1:
        raise ValueError("need 0 < fraction <= 1 and update_share + delete_share <= 1")
    n = round(base_rows * fraction)
    updates = round(n * update_share)
    deletes = round(n * delete_share)
    return TaxiChangePlan(base_rows, updates, deletes, n - updates - deletes)


def expected_taxi_rows(base_rows: int, fraction: float = 0.10, update_share: float = 0.70, delete_share: float = 0.15) -> int:
    """Row count of the table after the full load and one write_taxi_changes with these arguments."""
    return taxi_change_plan(base_rows, fraction, update_share, delete_share).final_rows


def taxi_changes(
    base_rows: int,
    *,
    fraction: float = 0.10,
    seed: int = 2,
    base_seed: int = 1,
    update_share: float = 0.70,
    delete_share: float = 0.15,
) -> pa.Table:
    """The change set as an Arrow table: "Op" then TAXI_COLUMNS, U/D/I rows interleaved.

    U rows are the after-image of a trip corrected by the vendor (tip, payment type, drop-off; 2% also
    move the pickup a day back, into another partition), D rows the before-image of a voided trip,
    I rows late-arriving trips with new ids.
    """
    plan = taxi_change_plan(base_rows, fraction, update_share, delete_share)
    picked = random.Random(seed).sample(range(1, base_rows + 1), plan.updates + plan.deletes)
    base = taxi_trips(1, base_rows, base_seed)
    before = base.take(pa.array([k - 1 for k in picked], pa.int64()))
    updated, deleted = before.slice(0, plan.updates), before.slice(plan.updates)

    n = plan.updates
    u = lambda stream: _uniform(n, seed, 100 + stream)  # noqa: E731
    card = pc.less(u(1), 0.8)
    payment = pc.if_else(card, pa.scalar(1, pa.int32()), updated.column("payment_type"))
    tip = _money(pc.if_else(card, pc.multiply(updated.column("fare_amount"), pc.add(0.1, pc.multiply(u(2), 0.2))), 0.0))
    extra_us = pc.cast(pc.floor(pc.multiply(u(3), 300 * _US_PER_SECOND)), pa.int64())
    # 2% of corrections fix a pickup clock that was a day ahead: the row moves to another day partition.
    shift_us = pc.if_else(pc.less(u(4), 0.02), pa.scalar(-86_400 * _US_PER_SECOND, pa.int64()), pa.scalar(0, pa.int64()))
    pickup = pc.add(pc.cast(updated.column("tpep_pickup_datetime"), pa.int64()), shift_us)
    dropoff = pc.add(pc.add(pc.cast(updated.column("tpep_dropoff_datetime"), pa.int64()), extra_us), shift_us)
    for name, values in (
        ("payment_type", payment),
        ("tip_amount", tip),
        ("tpep_pickup_datetime", pc.cast(pickup, pa.timestamp("us"))),
        ("tpep_dropoff_datetime", pc.cast(dropoff, pa.timestamp("us"))),
    ):
        updated = updated.set_column(updated.column_names.index(name), name, values)
    updated = with_total(updated)

    inserted = taxi_trips(base_rows + 1, plan.inserts, seed)
    ops = pa.array(["U"] * plan.updates + ["D"] * plan.deletes + ["I"] * plan.inserts, pa.string())
    changes = pa.concat_tables([updated, deleted, inserted])
    changes = changes.add_column(0, "Op", ops)
    # DMS writes changes in commit order; corrections, voids and late trips interleave.
    shuffle = pc.sort_indices(pa.table({"r": _uniform(changes.num_rows, seed, 99)}), sort_keys=[("r", "ascending")])
    return changes.take(shuffle)


def write_taxi_changes(
    landing: Path,
    *,
    base_rows: int,
    fraction: float = 0.10,
    seed: int = 2,
    base_seed: int = 1,
    source: str = TAXI_SOURCE,
    update_share: float = 0.70,
    delete_share: float = 0.15,
    at: datetime = CHANGES_AT,
    files: int = 1,
) -> list[Path]:
    """CDC file(s) changing fraction*base_rows keys of the full load written with base_seed."""
    changes = taxi_changes(
        base_rows, fraction=fraction, seed=seed, base_seed=base_seed, update_share=update_share, delete_share=delete_share
    )
    folder = taxi_dir(landing, source)
    per_file = max(1, -(-changes.num_rows // files))
    return [
        write_dms_table(folder / cdc_file_name(at + timedelta(minutes=i)), changes.slice(start, per_file), TAXI_COLUMNS, cdc=True)
        for i, start in enumerate(range(0, changes.num_rows, per_file))
    ]


def expected_taxi_table(
    base_rows: int,
    *,
    fraction: float = 0.10,
    seed: int = 2,
    base_seed: int = 1,
    update_share: float = 0.70,
    delete_share: float = 0.15,
) -> pa.Table:
    """The table after the full load and the change set, sorted by trip_id (for exact verification)."""
    base = taxi_trips(1, base_rows, base_seed)
    changes = taxi_changes(
        base_rows, fraction=fraction, seed=seed, base_seed=base_seed, update_share=update_share, delete_share=delete_share
    )
    touched = changes.column("trip_id")
    kept = base.filter(pc.invert(pc.is_in(base.column("trip_id"), touched)))
    upserts = changes.filter(pc.not_equal(changes.column("Op"), "D")).drop_columns(["Op"])
    out = pa.concat_tables([kept, upserts.cast(kept.schema)])
    return out.take(pc.sort_indices(out, sort_keys=[("trip_id", "ascending")]))
