"""The demo travel source and the taxi benchmark data: read the landed files back and replay them.

The oracle here is independent of the generator: it reads every landed file with pyarrow, orders the
changes by the CDC contract (change_seq where the table declares sequence_by, else full load first,
then file name, then row number) and compares the result with what the generator says the source
database holds.
"""

from __future__ import annotations

import gzip
import io
import re
from collections import Counter, defaultdict
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from bench import taxi
from demo import generate
from demo.dms_writer import arrow_type
from lake_assets.core.registry import load_source_file

LOAD_NAME = re.compile(r"^LOAD[0-9A-F]{8}$")
CDC_NAME = re.compile(r"^\d{8}-\d{9}$")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> generate.DemoSource:
    return generate.generate_travel(tmp_path_factory.mktemp("landing"))


@pytest.fixture(scope="module")
def landed(demo) -> dict[str, list[dict]]:
    """Every landed change per table: op, values, file base name, row number, delivery round."""
    out: dict[str, list[dict]] = defaultdict(list)
    folders = {(t.schema, t.source_table): name for name, t in demo.tables.items()}
    for rnd, r in enumerate(demo.rounds):
        for f in r.files:
            rel = f.relative_to(demo.landing).parts
            name = folders[(rel[1], rel[2])]
            for i, (op, values) in enumerate(read_landed(f, demo.tables[name]), 1):
                out[name].append(
                    {"op": op, "values": values, "base": f.name.split(".")[0], "row": i, "round": rnd, "path": f}
                )
    return out


def read_landed(path: Path, table) -> list[tuple[str, dict]]:
    columns = [(c.name, c.type) for c in table.columns]
    names = [n for n, _ in columns]
    if path.suffix == ".parquet":
        t = pq.read_table(path)
    else:
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
        first = data.split(b"\n", 1)[0].decode()
        with_op = first.count(table.csv.delimiter) + 1 == len(names) + 1  # no demo value holds a delimiter
        cols = (["Op"] if with_op else []) + names
        text = pcsv.read_csv(
            io.BytesIO(data),
            read_options=pcsv.ReadOptions(column_names=cols),
            convert_options=pcsv.ConvertOptions(
                column_types={c: pa.string() for c in cols},
                null_values=[table.csv.null_marker],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        t = pa.table({c: text.column(c).cast(pa.string() if c == "Op" else arrow_type(dict(columns)[c])) for c in cols})
    rows = t.to_pylist()
    ops = [r.pop("Op", "I") for r in rows]
    return list(zip(ops, rows))


def contract_order(table, change: dict) -> tuple:
    seq = change["values"][table.sequence_by] if table.sequence_by else 0
    return (seq, not change["base"].startswith("LOAD"), change["base"], change["row"])


def replay(table, changes: list[dict]) -> list[dict]:
    ordered = sorted(changes, key=lambda c: contract_order(table, c))
    if table.mode == "history":
        return [{**c["values"], "Op": c["op"]} for c in ordered]
    state: dict = {}
    for c in ordered:
        key = tuple(c["values"][k] for k in table.primary_key)
        if c["op"] == "D":
            state.pop(key, None)
        else:
            state[key] = c["values"]
    return [state[k] for k in sorted(state)]


def history_key(r: dict) -> tuple:
    return (r["audit_id"], r["Op"])


# --- the travel source -------------------------------------------------------------------------


def test_replay_of_landed_files_gives_the_expected_state(demo, landed):
    for name, table in demo.tables.items():
        got = replay(table, landed[name])
        want = demo.expected[name]
        if table.mode == "history":
            got, want = sorted(got, key=history_key), sorted(want, key=history_key)
        assert len(got) == len(want), name
        assert got == want, name


def test_expected_after_the_last_round_is_the_source_state(demo):
    after = demo.expected_after(len(demo.rounds) - 1)
    for name, table in demo.tables.items():
        got, want = after[name], demo.expected[name]
        if table.mode == "history":
            got, want = sorted(got, key=history_key), sorted(want, key=history_key)
        assert got == want, name


def test_expected_after_each_round_matches_a_replay_of_the_files_delivered_so_far(demo, landed):
    for rnd in range(len(demo.rounds)):
        after = demo.expected_after(rnd)
        for name, table in demo.tables.items():
            got = replay(table, [c for c in landed[name] if c["round"] <= rnd])
            if table.mode == "history":
                assert sorted(got, key=history_key) == sorted(after[name], key=history_key)
            else:
                assert got == after[name], (rnd, name)


def test_every_round_changes_what_the_lake_holds(demo):
    states = [demo.expected_after(r) for r in range(len(demo.rounds))]
    for before, after in zip(states, states[1:]):
        assert before != after


def test_landing_layout_and_file_names(demo):
    assert [r.name for r in demo.rounds] == ["full_load", "cdc_1", "cdc_2", "cdc_3", "cdc_4"]
    folders = {(t.schema, t.source_table) for t in demo.tables.values()}
    date_foldered = 0
    for rnd, r in enumerate(demo.rounds):
        assert r.files
        for f in r.files:
            assert f.exists()
            rel = f.relative_to(demo.landing).parts
            assert rel[0] == "travel" and (rel[1], rel[2]) in folders
            base, ext = f.name.split(".", 1)
            assert ext == ("csv.gz" if rel[2] == "payments" else "parquet")
            if rnd == 0:
                assert LOAD_NAME.match(base) and len(rel) == 4
            else:
                assert CDC_NAME.match(base)
                if len(rel) == 7:  # DatePartitionEnabled: the folder is the file's creation date
                    date_foldered += 1
                    assert "".join(rel[3:6]) == base[:8]
                else:
                    assert len(rel) == 4
    assert date_foldered > 0
    flat = [f for r in demo.rounds[1:] for f in r.files if len(f.relative_to(demo.landing).parts) == 4]
    assert flat, "some CDC files sit directly in the table folder"


def test_full_load_is_split_into_numbered_load_files(demo):
    by_folder: dict[Path, list[str]] = defaultdict(list)
    for f in demo.rounds[0].files:
        by_folder[f.parent].append(f.name.split(".")[0])
    for names in by_folder.values():
        assert names == [f"LOAD{n:08X}" for n in range(1, len(names) + 1)]
    assert len(by_folder[demo.landing / "travel/booking/bookings"]) >= 2
    assert len(by_folder[demo.landing / "travel/booking/bookings_audit"]) >= 5


def test_files_have_the_registry_columns_and_types(demo):
    for t in demo.tables.values():
        if t.format != "parquet":
            continue
        folder = demo.landing / "travel" / t.schema / t.source_table
        declared = pa.schema([(c.name, arrow_type(c.type)) for c in t.columns])
        for f in sorted(folder.rglob("*.parquet")):
            schema = pq.read_schema(f)
            if f.name.startswith("LOAD"):
                assert schema == declared, f  # full load: no Op column
            else:
                assert schema.names[0] == "Op" and schema.field("Op").type == pa.string()
                assert pa.schema(list(schema)[1:]) == declared, f


def test_payments_are_headerless_gzip_csv_with_null_marker(demo):
    t = demo.tables["payments"]
    assert (t.format, t.csv.header, t.csv.null_marker) == ("csv", False, "NULL")
    files = [f for r in demo.rounds for f in r.files if "payments" in f.parts]
    n_fields = len(t.columns) + 1
    saw_null = False
    for f in files:
        assert f.name.endswith(".csv.gz")
        text = gzip.decompress(f.read_bytes()).decode()
        lines = text.split("\n")
        assert lines[-1] == ""
        for line in lines[:-1]:
            fields = line.split(",")
            assert len(fields) == n_fields and fields[0] in ("I", "U", "D")
            if f.name.startswith("LOAD"):
                assert fields[0] == "I"  # the billing endpoint sets IncludeOpForFullLoad
            assert not fields[0].startswith("payment_id")  # no header
            saw_null |= "NULL" in fields
            assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$", fields[-1])
            assert re.match(r"^\d+\.\d\d$", fields[3])
    assert saw_null


def test_change_seq_is_strictly_increasing_across_the_database(demo, landed):
    seen: list[int] = []
    for name, t in demo.tables.items():
        if not t.sequence_by or name in generate.MIRRORS:  # a mirror lands its table's very changes again
            continue
        for c in landed[name]:
            seq = c["values"][t.sequence_by]
            if c["base"].startswith("LOAD"):
                assert seq == 0
            else:
                assert seq > 0
                seen.append(seq)
    assert len(seen) == len(set(seen)), "one sequence value per change, across tables"
    assert {n for n, t in demo.tables.items() if t.sequence_by} == {"customers", "bookings", "customer_versions"}


def test_a_late_file_arrives_after_later_named_files_of_its_table(demo, landed):
    assert demo.late
    late_tables = set()
    for f in demo.late:
        rnd = next(i for i, r in enumerate(demo.rounds) if f in r.files)
        table = _table_of(demo, f)
        delivered_before = [g for r in demo.rounds[1:rnd] for g in r.files if _table_of(demo, g) == table]
        assert any(g.name.split(".")[0] > f.name.split(".")[0] for g in delivered_before), f
        late_tables.add(table)
    # Late files for a sequence_by table and for tables that rely on the file-name fallback.
    assert {"bookings", "hotels", "payments"} <= late_tables


def _table_of(demo, f: Path) -> str:
    rel = f.relative_to(demo.landing).parts
    return next(n for n, t in demo.tables.items() if (t.schema, t.source_table) == (rel[1], rel[2]))


def test_late_files_carry_stale_changes_the_lake_must_not_apply(demo, landed):
    late = set(demo.late)
    for name in ("bookings", "hotels", "payments"):
        t = demo.tables[name]
        stale = 0
        for c in landed[name]:
            if c["path"] not in late:
                continue
            key = tuple(c["values"][k] for k in t.primary_key)
            newer_already_landed = [
                d
                for d in landed[name]
                if d["round"] < c["round"]
                and tuple(d["values"][k] for k in t.primary_key) == key
                and contract_order(t, d) > contract_order(t, c)
            ]
            stale += bool(newer_already_landed)
        assert stale > 0, name
    # A late update of a booking whose delete already landed: it must stay deleted.
    b = demo.tables["bookings"]
    deleted_for_good = {tuple(c["values"][k] for k in b.primary_key) for c in landed["bookings"] if c["op"] == "D"}
    deleted_for_good -= {tuple(r[k] for k in b.primary_key) for r in demo.expected["bookings"]}
    assert any(
        c["path"] in late and tuple(c["values"][k] for k in b.primary_key) in deleted_for_good for c in landed["bookings"]
    )


def test_rows_within_and_across_files_are_out_of_change_seq_order(demo, landed):
    for name in ("customers", "bookings"):
        t = demo.tables[name]
        by_file: dict[Path, list[dict]] = defaultdict(list)
        for c in landed[name]:
            if not c["base"].startswith("LOAD"):
                by_file[c["path"]].append(c)
        inverted_in_file = False
        for rows in by_file.values():
            last: dict = {}
            for c in rows:  # row order
                key = c["values"][t.primary_key[0]]
                if key in last and last[key] > c["values"]["change_seq"]:
                    inverted_in_file = True
                last[key] = c["values"]["change_seq"]
        assert inverted_in_file, f"{name}: a key whose newer change comes first in its file"
    b = demo.tables["bookings"]
    newest_by_file: dict[tuple, tuple] = {}
    crossed = False
    for c in landed["bookings"]:
        if c["base"].startswith("LOAD"):
            continue
        key = c["values"]["booking_id"]
        for (k, base), seq in newest_by_file.items():
            if k == key and base < c["base"] and seq > c["values"]["change_seq"]:
                crossed = True
        prev = newest_by_file.get((key, c["base"]), 0)
        newest_by_file[(key, c["base"])] = max(prev, c["values"]["change_seq"])
    assert crossed, "a change in an earlier-named bookings file is newer than one in a later-named file"
    assert b.sequence_by == "change_seq"


def test_several_changes_of_one_key_in_one_file_and_across_files(demo, landed):
    for name in ("customers", "bookings", "hotels", "payments"):
        t = demo.tables[name]
        per_file = Counter()
        files_per_key: dict[tuple, set] = defaultdict(set)
        for c in landed[name]:
            if c["base"].startswith("LOAD"):
                continue
            key = tuple(c["values"][k] for k in t.primary_key)
            per_file[(c["base"], key)] += 1
            files_per_key[key].add(c["base"])
        assert max(per_file.values()) >= (3 if name == "customers" else 2), name
        assert max(len(v) for v in files_per_key.values()) >= 2, name


def test_deletes_and_delete_then_reinsert_of_one_key(demo, landed):
    for name in ("bookings", "hotels"):
        t = demo.tables[name]
        ops: dict[tuple, list[str]] = defaultdict(list)
        for c in sorted(landed[name], key=lambda c: contract_order(t, c)):
            if not c["base"].startswith("LOAD"):
                ops[tuple(c["values"][k] for k in t.primary_key)].append(c["op"])
        final = {tuple(r[k] for k in t.primary_key) for r in demo.expected[name]}
        reinserted = [k for k, seq in ops.items() if "D" in seq and seq[-1] in ("I", "U")]
        assert reinserted and all(k in final for k in reinserted), name
        assert any(seq[-1] == "D" for seq in ops.values()) or name == "hotels"
    for name in ("customers", "promotions", "booking_status_history"):
        assert any(c["op"] == "D" for c in landed[name]), name
    history = demo.expected["booking_status_history"]
    assert Counter(r["Op"] for r in history)["D"] == 3


def test_full_load_and_cdc_overlap_on_a_customer_inserted_during_the_load(demo, landed):
    load_keys = {c["values"]["customer_id"] for c in landed["customers"] if c["base"].startswith("LOAD")}
    cdc_inserts = {c["values"]["customer_id"] for c in landed["customers"] if c["op"] == "I" and c["round"] > 0}
    assert load_keys & cdc_inserts


def test_audit_rows_land_in_commit_order(demo, landed):
    """The history table has no sequence_by: (file name, row) order must be the commit order."""
    t = demo.tables["booking_status_history"]
    cdc = sorted((c for c in landed[t.name] if c["round"] > 0), key=lambda c: contract_order(t, c))
    inserted = [c["values"]["audit_id"] for c in cdc if c["op"] == "I"]
    assert inserted == sorted(inserted)  # serial ids follow commit order
    changed_at = [c["values"]["changed_at"] for c in cdc if c["op"] == "I"]
    assert changed_at == sorted(changed_at)


def test_related_keys_hold_in_the_final_state(demo):
    e = demo.expected
    customers = {r["customer_id"] for r in e["customers"]}
    hotels = {r["hotel_id"] for r in e["hotels"]}
    promotions = {r["promotion_id"] for r in e["promotions"]}
    bookings = {r["booking_id"]: r for r in e["bookings"]}
    for b in bookings.values():
        assert b["customer_id"] in customers and b["hotel_id"] in hotels
        assert b["promotion_id"] is None or b["promotion_id"] in promotions
        assert b["nights"] == (b["check_out"] - b["check_in"]).days
        assert b["status"] in ("pending", "confirmed", "cancelled", "completed")
    for p in e["payments"]:
        assert p["booking_id"] in bookings
        assert p["currency"] == bookings[p["booking_id"]]["currency"]
        assert (p["card_number"] is None) == (p["method"] != "card")
    audited = {r["booking_id"] for r in e["booking_status_history"]}
    assert set(bookings) <= audited
    assert any(r["promotion_id"] is not None for r in bookings.values())


def test_pii_looks_like_pii(demo):
    customers = demo.expected["customers"]
    assert all("@" in c["email"] and c["email"].isascii() for c in customers)
    assert any(not (c["first_name"] + c["last_name"]).isascii() for c in customers)
    assert any(c["phone"] is None for c in customers) and any(c["date_of_birth"] is None for c in customers)
    cards = [p["card_number"] for p in demo.expected["payments"] if p["card_number"]]
    assert all(len(n) == 16 and _luhn_ok(n) for n in cards)


def _luhn_ok(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def test_decimals_keep_their_scale(demo):
    amounts = [b["amount"] for b in demo.expected["bookings"]]
    assert all(isinstance(a, Decimal) and a.as_tuple().exponent == -2 and a > 0 for a in amounts)


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path):
    kw = dict(customers=60, hotels=8, bookings=300, cdc_rounds=3)
    a = generate.generate_travel(tmp_path / "a", seed=11, **kw)
    b = generate.generate_travel(tmp_path / "b", seed=11, **kw)
    c = generate.generate_travel(tmp_path / "c", seed=12, **kw)
    files_a = [f.relative_to(tmp_path / "a") for r in a.rounds for f in r.files]
    files_b = [f.relative_to(tmp_path / "b") for r in b.rounds for f in r.files]
    assert files_a == files_b
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert a.expected == b.expected
    assert a.expected != c.expected


def test_small_sources_still_have_every_scenario(tmp_path):
    src = generate.generate_travel(tmp_path, seed=3, customers=20, hotels=5, bookings=50, cdc_rounds=2)
    assert len(src.rounds) == 3
    assert {_table_of(src, f) for f in src.late} == {"bookings", "hotels"}  # payments' late round needs 3
    for name, t in src.tables.items():
        got, want = src.expected_after(2)[name], src.expected[name]
        if t.mode == "history":
            got, want = sorted(got, key=history_key), sorted(want, key=history_key)
        assert got == want, name
    with pytest.raises(ValueError):
        generate.generate_travel(tmp_path / "x", bookings=10)


@pytest.mark.parametrize("seed", range(1, 7))
def test_files_replay_to_the_expected_state_for_any_seed(tmp_path, seed):
    src = generate.generate_travel(tmp_path, seed=seed, customers=40, hotels=6, bookings=120, cdc_rounds=3 + seed % 2)
    for name, t in src.tables.items():
        changes = [
            {"op": op, "values": values, "base": f.name.split(".")[0], "row": i}
            for r in src.rounds
            for f in r.files
            if _table_of(src, f) == name
            for i, (op, values) in enumerate(read_landed(f, t), 1)
        ]
        got, want = replay(t, changes), src.expected[name]
        if t.mode == "history":
            got, want = sorted(got, key=history_key), sorted(want, key=history_key)
        assert got == want, name


def test_deliver_copies_a_round_into_another_landing_zone(demo, tmp_path):
    copied = demo.deliver(2, tmp_path)
    assert [p.relative_to(tmp_path) for p in copied] == [f.relative_to(demo.landing) for f in demo.rounds[2].files]
    assert all(p.read_bytes() == f.read_bytes() for p, f in zip(copied, demo.rounds[2].files))


def test_cli_prints_files_per_round_and_rows_per_table(tmp_path, capsys):
    generate.main(["--landing", str(tmp_path), "--seed", "5", "--bookings", "200", "--customers", "40", "--hotels", "8"])
    out = capsys.readouterr().out
    assert "full_load:" in out and "cdc_4:" in out and "(late)" in out
    assert "travel/booking/bookings/LOAD00000001.parquet" in out
    for name in ("customers", "hotels", "promotions", "bookings", "payments", "booking_status_history"):
        assert re.search(rf"^\s+{name}\s+full load", out, re.M)


# --- the taxi benchmark table ------------------------------------------------------------------


def test_taxi_registry_entry_matches_the_generator():
    (t,) = load_source_file(REPO / "bench/sources/taxi.yaml")
    assert (t.source, t.schema, t.name, t.primary_key) == ("nyc", "public", "yellow_trips", ("trip_id",))
    assert [(p.column, p.transform) for p in t.partition_by] == [("tpep_pickup_datetime", "day")]
    assert [(c.name, c.type) for c in t.columns] == taxi.TAXI_COLUMNS


def test_taxi_full_load_and_changes_replay_to_the_expected_table(tmp_path):
    rows = 20_000
    loads = taxi.write_taxi_full_load(tmp_path, rows=rows, files=3)
    assert [p.name for p in loads] == ["LOAD00000001.parquet", "LOAD00000002.parquet", "LOAD00000003.parquet"]
    assert loads[0].parent == tmp_path / "nyc/public/yellow_trips"
    full = pa.concat_tables([pq.read_table(p) for p in loads])
    assert full.num_rows == rows and full.column_names == [n for n, _ in taxi.TAXI_COLUMNS]
    assert full.column("trip_id").to_pylist() == list(range(1, rows + 1))
    assert full.column("passenger_count").null_count > 0

    (cdc,) = taxi.write_taxi_changes(tmp_path, base_rows=rows)
    assert CDC_NAME.match(cdc.name.split(".")[0])
    changes = pq.read_table(cdc)
    assert changes.column_names[0] == "Op"
    plan = taxi.taxi_change_plan(rows)
    assert Counter(changes.column("Op").to_pylist()) == {"U": plan.updates, "D": plan.deletes, "I": plan.inserts}
    assert plan.changes == rows // 10
    ids = changes.column("trip_id").to_pylist()
    assert len(set(ids)) == len(ids)
    ops = changes.column("Op").to_pylist()
    assert ops != sorted(ops)  # interleaved, not grouped by op

    state = {r["trip_id"]: r for r in full.to_pylist()}
    for r in changes.to_pylist():
        op = r.pop("Op")
        if op == "D":
            assert state.pop(r["trip_id"]) == r  # D carries the before-image
        else:
            assert (op == "I") == (r["trip_id"] not in state)
            state[r["trip_id"]] = r
    expected = taxi.expected_taxi_table(rows)
    assert len(state) == expected.num_rows == taxi.expected_taxi_rows(rows)
    assert [state[k] for k in sorted(state)] == expected.to_pylist()


def test_taxi_values_are_plausible_and_deterministic(tmp_path):
    a = taxi.taxi_trips(1, 5_000, seed=4)
    assert a.equals(taxi.taxi_trips(1, 5_000, seed=4))
    assert not a.equals(taxi.taxi_trips(1, 5_000, seed=5))
    for r in a.to_pylist():
        assert r["tpep_dropoff_datetime"] > r["tpep_pickup_datetime"]
        assert datetime(2026, 10, 1) <= r["tpep_pickup_datetime"] < datetime(2026, 11, 1)
        parts = ("fare_amount", "extra", "mta_tax", "tip_amount", "tolls_amount", "improvement_surcharge")
        extras = sum(r[p] or 0 for p in ("congestion_surcharge", "airport_fee"))
        assert abs(r["total_amount"] - sum(r[p] for p in parts) - extras) < 0.006
        assert 1 <= r["pu_location_id"] <= 263 and r["payment_type"] in (0, 1, 2, 3, 4)
        assert (r["payment_type"] == 0) == (r["passenger_count"] is None)
