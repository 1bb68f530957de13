"""The DMS reader on one file at a time: odd but real files read into the lake's types, bad rows are
quarantined with a reason, and anything else fails that file alone with a short, printable reason that
names the file and the table.

Files are written as DMS writes them (demo/dms_writer.py) or, for what DMS never writes but other
producers do (pandas' nanosecond timestamps, unsigned and nested columns), with pyarrow directly.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lake_assets.core.cdc.dms as dms
from demo.dms_writer import cdc_file_name, load_file_name, write_dms_file
from lake_assets.core.cdc.dms import (
    OP,
    ROW,
    FileChanges,
    FileReadError,
    LandingKeyError,
    parse_landing_key,
    read_dms_file,
)
from lake_assets.core.registry import TableConfig, load_source_file

SOURCE = """
source: shop
tables:
  # Declared columns: values are cast to these types, and those that do not fit are bad rows.
  - name: orders
    schema: app
    primary_key: [id]
    columns:
      - {name: id, type: long}
      - {name: amount, type: long}
      - {name: qty, type: int}
      - {name: at, type: timestamp}
      - {name: at_tz, type: timestamptz}
      - {name: note, type: string}
  # No declared columns: the table takes its types from the files.
  - name: accounts
    schema: app
    primary_key: [id]
  # Header-less CSV as DMS writes it, with a null marker.
  - name: events
    schema: app
    primary_key: [id]
    format: csv
    csv: {null_marker: "NULL"}
    columns:
      - {name: id, type: long}
      - {name: label, type: string}
  # CSV with a header row.
  - name: visits
    schema: app
    primary_key: [id]
    format: csv
    csv: {header: true}
"""

T0 = dt.datetime(2026, 11, 21, 10, 15, 0)
CDC = cdc_file_name(T0)


@pytest.fixture
def tables(tmp_path) -> dict[str, TableConfig]:
    path = tmp_path / "shop.yaml"
    path.write_text(SOURCE)
    return {t.name: t for t in load_source_file(path)}


def key(table: TableConfig, name: str) -> str:
    return f"{table.landing_prefix}{name}"


def read(table: TableConfig, name: str, data: bytes) -> FileChanges:
    return read_dms_file(parse_landing_key(key(table, name)), data, table)


def read_fails(table: TableConfig, name: str, data: bytes) -> str:
    """The reason a file fails with; it names the file and the table and is short, printable text."""
    with pytest.raises(FileReadError) as e:
        read(table, name, data)
    reason = str(e.value)
    assert reason.startswith(f"{key(table, name)} (table {table.identifier}): "), reason
    assert reason.isprintable() and len(reason) < 1000, reason
    return reason


def parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def dms_file(tmp_path: Path, rows: list[dict], columns: list[tuple[str, str]], **kw) -> bytes:
    return write_dms_file(tmp_path / "out" / CDC, rows, columns, **kw).read_bytes()


def rows(changes: FileChanges) -> list[dict]:
    return changes.table.drop_columns([OP, ROW]).to_pylist()


def reasons(changes: FileChanges) -> dict[int, str]:
    return {q.row: q.reason for q in changes.quarantined}


def ns(text: str, nanos: int) -> int:
    """Nanoseconds since the epoch of a UTC wall-clock time plus some nanoseconds."""
    t = dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
    return (int(t.timestamp()) * 1_000_000_000) + nanos


# --- 1. nanosecond timestamps --------------------------------------------------------------------


def test_nanosecond_timestamps_are_truncated_to_microseconds(tables):
    # pandas writes timestamp[ns]; Iceberg stores microseconds, so the digits below a microsecond go.
    # Pre-1970 values truncate towards the past, as the digits read.
    values = [ns("2026-11-21T10:15:00", 123_456_789), ns("1969-12-31T23:59:59", 999_999_999), None]
    naive = pa.array(values, pa.timestamp("ns"))
    paris = pa.array(values, pa.timestamp("ns", tz="Europe/Paris"))
    file = pa.table({
        "Op": ["I", "U", "I"], "id": pa.array([1, 2, None], pa.int64()),
        "at": naive, "at_tz": paris,  # declared timestamp / timestamptz
        "seen": naive, "seen_tz": paris,  # undeclared
    })
    expected = [dt.datetime(2026, 11, 21, 10, 15, 0, 123456), dt.datetime(1969, 12, 31, 23, 59, 59, 999999)]
    utc = [t.replace(tzinfo=dt.UTC) for t in expected]

    for table in (tables["orders"], tables["accounts"]):
        got = read(table, CDC + ".parquet", parquet(file))
        out = got.table
        assert out.schema.field("seen").type == pa.timestamp("us")
        assert out.schema.field("seen_tz").type == pa.timestamp("us", tz="UTC")
        assert out.column("seen").to_pylist() == expected
        assert out.column("seen_tz").to_pylist() == utc
        if table.name == "orders":
            assert out.column("at").to_pylist() == expected and out.column("at_tz").to_pylist() == utc
        # The row with a null key is quarantined, and its raw values show the nanoseconds as text.
        [q] = got.quarantined
        assert (q.row, q.reason) == (3, "null primary key column id")
        assert json.loads(q.raw)["seen"] is None
        assert got.table.column(ROW).to_pylist() == [1, 2]


def test_nanoseconds_in_a_quarantined_row_show_in_its_raw_values(tables):
    file = pa.table({"Op": ["I", "X"], "id": pa.array([1, 2], pa.int64()),
                     "seen": pa.array([ns("2026-11-21T10:15:00", 1), ns("2026-11-21T10:15:00", 123_456_789)],
                                      pa.timestamp("ns"))})
    got = read(tables["accounts"], CDC + ".parquet", parquet(file))
    [q] = got.quarantined
    assert q.row == 2 and "unknown Op 'X'" in q.reason
    assert json.loads(q.raw) == {"Op": "X", "id": 2, "seen": "2026-11-21 10:15:00.123456789"}
    assert rows(got) == [{"id": 1, "seen": dt.datetime(2026, 11, 21, 10, 15)}]


@pytest.mark.parametrize("unit", ["s", "ms"])
def test_second_and_millisecond_timestamps_convert_exactly(tables, unit):
    per_s = {"s": 1, "ms": 1000}[unit]
    value = int(dt.datetime(2026, 11, 21, 10, 15, 7, tzinfo=dt.UTC).timestamp()) * per_s + (per_s - 1)
    file = pa.table({"Op": ["I"], "id": [1], "at": pa.array([value], pa.timestamp(unit)),
                     "seen": pa.array([value], pa.timestamp(unit, tz="UTC"))})
    got = read(tables["orders"], CDC + ".parquet", parquet(file))
    want = dt.datetime(2026, 11, 21, 10, 15, 7, 999000 if unit == "ms" else 0)
    assert got.quarantined == []
    assert got.table.column("at").to_pylist() == [want]
    assert got.table.column("seen").to_pylist() == [want.replace(tzinfo=dt.UTC)]
    assert got.table.schema.field("seen").type == pa.timestamp("us", tz="UTC")


def test_csv_timestamps_with_nanosecond_digits_are_truncated(tables, tmp_path):
    table = tables["visits"]
    data = b"Op,id,at\nI,1,2026-11-21 10:15:00.123456789\nI,2,2026-11-21 10:15:00.5\n"
    assert read(table, CDC + ".csv", data).table.column("at").to_pylist() == ["2026-11-21 10:15:00.123456789",
                                                                              "2026-11-21 10:15:00.5"]
    # Declared as timestamp (orders is Parquet in the registry, but a CSV drop is read by its name).
    got = read(tables["orders"], CDC + ".csv", b"I,1,,,2026-11-21 10:15:00.123456789,,\nI,2,,,2026-11-21 10:15:00.5,,\n")
    assert got.quarantined == []
    assert got.table.column("at").to_pylist() == [dt.datetime(2026, 11, 21, 10, 15, 0, 123456),
                                                  dt.datetime(2026, 11, 21, 10, 15, 0, 500000)]


# --- 2. columns of Arrow type null ---------------------------------------------------------------


def test_all_null_columns_take_the_declared_type_or_are_left_out(tables):
    # pyarrow writes a column with no values as type null.
    file = pa.table({"Op": ["I", "U"], "id": [1, 2], "amount": pa.nulls(2), "note": pa.nulls(2), "extra": pa.nulls(2)})
    got = read(tables["orders"], CDC + ".parquet", parquet(file))
    assert got.table.schema.field("amount").type == pa.int64()
    assert got.table.schema.field("note").type == pa.string()
    assert "extra" not in got.table.column_names  # no type to give it; a later file with values adds it
    assert rows(got) == [
        {"id": 1, "amount": None, "qty": None, "at": None, "at_tz": None, "note": None},
        {"id": 2, "amount": None, "qty": None, "at": None, "at_tz": None, "note": None},
    ]

    got = read(tables["accounts"], CDC + ".parquet", parquet(file))
    assert got.table.column_names == ["id", OP, ROW]
    assert rows(got) == [{"id": 1}, {"id": 2}] and got.quarantined == []


def test_an_undeclared_key_column_with_no_values_fails_the_file(tables):
    # No row has a key and the key column has no type the table could be built with.
    file = pa.table({"Op": ["I", "U"], "id": pa.nulls(2), "balance": [1, 2]})
    reason = read_fails(tables["accounts"], CDC + ".parquet", parquet(file))
    assert "primary key column id has Arrow type null" in reason
    # Declared, the same file has a typed key column and two null-key rows.
    file = pa.table({"Op": ["I", "U"], "id": pa.nulls(2), "amount": [1, 2]})
    got = read(tables["orders"], CDC + ".parquet", parquet(file))
    assert got.table.num_rows == 0 and got.table.schema.field("id").type == pa.int64()
    assert reasons(got) == {1: "null primary key column id", 2: "null primary key column id"}


# --- 3. unsigned integers ------------------------------------------------------------------------


def test_undeclared_unsigned_columns_get_a_signed_type_that_holds_every_value(tables):
    big = 2**64 - 1
    file = pa.table({
        "Op": ["I", "I"], "id": pa.array([1, 2], pa.uint64()),
        "u8": pa.array([0, 255], pa.uint8()), "u16": pa.array([0, 65535], pa.uint16()),
        "u32": pa.array([0, 2**32 - 1], pa.uint32()), "u64": pa.array([7, big], pa.uint64()),
    })
    got = read(tables["accounts"], CDC + ".parquet", parquet(file))
    types = dict(zip(got.table.schema.names, got.table.schema.types))
    assert types == {"id": pa.decimal128(20, 0), "u8": pa.int32(), "u16": pa.int32(), "u32": pa.int64(),
                     "u64": pa.decimal128(20, 0), OP: pa.string(), ROW: pa.int64()}
    assert rows(got) == [
        {"id": Decimal(1), "u8": 0, "u16": 0, "u32": 0, "u64": Decimal(7)},
        {"id": Decimal(2), "u8": 255, "u16": 65535, "u32": 2**32 - 1, "u64": Decimal(big)},
    ]


def test_unsigned_values_that_do_not_fit_a_declared_column_are_bad_rows(tables):
    file = pa.table({
        "Op": ["I", "I", "I"], "id": pa.array([1, 2**63, 3], pa.uint64()),
        "amount": pa.array([2**63 - 1, 5, 2**64 - 1], pa.uint64()),
        "qty": pa.array([2**31 - 1, 1, 1], pa.uint32()),
    })
    got = read(tables["orders"], CDC + ".parquet", parquet(file))
    assert reasons(got) == {
        2: f"value {2**63} does not fit column id (int64)",
        3: f"value {2**64 - 1} does not fit column amount (int64)",
    }
    assert [(r["id"], r["amount"], r["qty"]) for r in rows(got)] == [(1, 2**63 - 1, 2**31 - 1)]

    file = file.set_column(3, "qty", pa.array([2**31, 1, 1], pa.uint32()))
    assert reasons(read(tables["orders"], CDC + ".parquet", parquet(file)))[1] == f"value {2**31} does not fit column qty (int32)"


# --- 4. names that collide -----------------------------------------------------------------------


def test_columns_whose_names_differ_only_in_case_fail_the_file(tables, tmp_path):
    file = pa.table({"Op": ["I"], "id": [1], "v": [1], "V": [2]})
    reason = read_fails(tables["accounts"], CDC + ".parquet", parquet(file))
    assert "'v'" in reason and "'V'" in reason and "ambiguous" in reason

    reason = read_fails(tables["visits"], CDC + ".csv", b"Op,id,Note,NOTE\nI,1,a,b\n")
    assert "'Note'" in reason and "'NOTE'" in reason and "ambiguous" in reason

    twice = pa.Table.from_arrays([pa.array(["I"]), pa.array([1]), pa.array([1]), pa.array([2])], ["Op", "id", "v", "v"])
    reason = read_fails(tables["accounts"], CDC + ".parquet", parquet(twice))
    assert "'v'" in reason and "more than once" in reason


# --- 5. big CSV rows -----------------------------------------------------------------------------


def test_a_csv_row_over_64_mib_reads(tables, tmp_path):
    label = "x" * (65 << 20) + ",\n\"quoted\""  # a quoted value with a delimiter and a newline in it
    data = dms_file(tmp_path, [{"Op": "I", "id": 1, "label": label}, {"Op": "U", "id": 2, "label": "b"}],
                    [("id", "long"), ("label", "string")], fmt="csv", cdc=True, null_marker="NULL")
    got = read(tables["events"], CDC + ".csv", data)
    assert got.quarantined == []
    assert got.table.column("id").to_pylist() == [1, 2]
    assert got.table.column("label")[0].as_py() == label
    assert got.table.column(OP).to_pylist() == ["I", "U"]


def test_csv_full_load_with_op_and_a_field_over_128_kib_in_its_first_row(tables, tmp_path):
    # Header-less full-load files carry Op only with IncludeOpForFullLoad: the reader counts fields
    # over the first rows to tell, and a long field must not stop the count.
    label = "y" * (200 << 10)
    data = write_dms_file(tmp_path / load_file_name(1), [{"id": 1, "label": label}, {"id": 2, "label": "b"}],
                          [("id", "long"), ("label", "string")], fmt="csv", cdc=False, include_op_for_full_load=True,
                          null_marker="NULL").read_bytes()
    got = read(tables["events"], load_file_name(1) + ".csv", data)
    assert got.quarantined == []
    assert [(r["id"], len(r["label"])) for r in rows(got)] == [(1, len(label)), (2, 1)]


# --- 6. binary where text belongs ----------------------------------------------------------------


def test_parquet_bytes_in_a_csv_file_fail_it_with_a_clean_reason(tables, tmp_path):
    data = dms_file(tmp_path, [{"Op": "I", "id": 1, "label": "a"}], [("id", "long"), ("label", "string")], cdc=True)
    assert data.startswith(b"PAR1")
    for name, content in ((CDC + ".csv", data), (CDC + ".csv.gz", gzip.compress(data))):
        reason = read_fails(tables["events"], name, content)
        assert "not a CSV file: starts with Parquet magic 'PAR1'" in reason
    # A gzip file not named .gz, and text with NUL bytes in it.
    reason = read_fails(tables["events"], CDC + ".csv", gzip.compress(b"I,1,a\n"))
    assert "not a CSV file" in reason and "gzip" in reason
    reason = read_fails(tables["events"], CDC + ".csv", b"I,1,a\nI,2,b\x00\x01\x02c\n")
    assert "not a CSV file" in reason and "NUL" in reason
    # And the other way: a .csv.gz that is not gzip at all.
    reason = read_fails(tables["events"], CDC + ".csv.gz", data)
    assert "not a gzip file" in reason and "Parquet magic" in reason


# --- 7. landing keys -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad, words", [
    ("shop/app/orders/2026/13/99/20261121-101500000.parquet", ["2026/13/99", "calendar date"]),
    ("shop/app/orders/2026/02/30/20261121-101500000.parquet", ["2026/02/30", "calendar date"]),
    ("shop/app/orders/20261321-101500000.parquet", ["20261321-101500000", "not a real time"]),
    ("shop/app/orders/20261121-256000000.parquet", ["20261121-256000000", "not a real time"]),
    ("shop//orders/20261121-101500000.parquet", ["empty folder name"]),
])
def test_landing_keys_with_impossible_dates_are_refused(bad, words):
    with pytest.raises(LandingKeyError) as e:
        parse_landing_key(bad)
    for w in words:
        assert w in str(e.value)


def test_landing_keys_with_real_dates_parse():
    f = parse_landing_key("shop/app/orders/2024/02/29/20240229-235959999.csv.gz")
    assert (f.source, f.schema, f.table, f.base, f.extension, f.is_load) == (
        "shop", "app", "orders", "20240229-235959999", ".csv.gz", False)


# --- 8. every other type, and anything unexpected ------------------------------------------------


@pytest.mark.parametrize("column, values, type_words", [
    ("s", pa.array([{"a": 1}], pa.struct([("a", pa.int64())])), "struct"),
    ("l", pa.array([[1, 2]], pa.list_(pa.int64())), "list"),
    ("m", pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64())), "map"),
    ("t", pa.array([dt.time(10, 15)], pa.time64("us")), "time64"),
    ("d", pa.array([dt.timedelta(seconds=1)], pa.duration("us")), "duration"),
    ("big", pa.array([Decimal("1.5")], pa.decimal256(40, 2)), "decimal256(40, 2)"),
    ("t32", pa.array([dt.time(10, 15)], pa.time32("s")), "time32"),
])
def test_types_the_lake_cannot_store_fail_the_file_naming_column_and_type(tables, column, values, type_words):
    file = pa.table({"Op": ["I"], "id": [1], column: values})
    for table in (tables["accounts"], tables["orders"]):
        reason = read_fails(table, CDC + ".parquet", parquet(file))
        assert f"column {column}" in reason and type_words in reason, reason


def test_odd_types_with_a_lake_equivalent_read_as_it(tables):
    file = pa.table({
        "Op": pa.array(["I", "D"]).dictionary_encode(), "id": [1, 2],
        "label": pa.array(["a", "b"]).dictionary_encode(),
        "code": pa.array([3, 3], pa.int16()).dictionary_encode(),
        "price": pa.array([Decimal("1.50"), None], pa.decimal256(38, 2)),
        "half": pa.array([1.5, None], pa.float16()),
        "day": pa.array([dt.date(2026, 11, 21), None], pa.date64()),
        "raw": pa.array([b"ab", None], pa.binary(2)),
        "long_text": pa.array(["x", None], pa.large_string()),
        "small_dec": pa.array([Decimal("12.5"), None], pa.decimal32(5, 1)),
    })
    got = read(tables["accounts"], CDC + ".parquet", parquet(file))
    types = dict(zip(got.table.schema.names, got.table.schema.types))
    assert types == {"id": pa.int64(), "label": pa.string(), "code": pa.int32(), "price": pa.decimal128(38, 2),
                     "half": pa.float32(), "day": pa.date32(), "raw": pa.binary(), "long_text": pa.string(),
                     "small_dec": pa.decimal128(5, 1), OP: pa.string(), ROW: pa.int64()}
    assert rows(got) == [
        {"id": 1, "label": "a", "code": 3, "price": Decimal("1.50"), "half": 1.5, "day": dt.date(2026, 11, 21),
         "raw": b"ab", "long_text": "x", "small_dec": Decimal("12.5")},
        {"id": 2, "label": "b", "code": 3, "price": None, "half": None, "day": None, "raw": None, "long_text": None,
         "small_dec": None},
    ]
    assert got.table.column(OP).to_pylist() == ["I", "D"]


def test_a_time_column_declared_as_string_keeps_its_text(tables, tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("""
source: shop
tables:
  - {name: shifts, schema: app, primary_key: [id], columns: [{name: id, type: long}, {name: starts, type: string}]}
""")
    [table] = load_source_file(path)
    file = pa.table({"Op": ["I"], "id": [1], "starts": pa.array([dt.time(10, 15, 30)], pa.time64("us"))})
    assert rows(read(table, CDC + ".parquet", parquet(file))) == [{"id": 1, "starts": "10:15:30.000000"}]


def test_columns_named_like_the_lake_own_columns_fail_the_file(tables):
    for name in ("_lake_seq", "_op", "_row", "_LAKE_FILE"):
        file = pa.table({"Op": ["I"], "id": [1], name: [1]})
        reason = read_fails(tables["accounts"], CDC + ".parquet", parquet(file))
        assert repr(name) in reason and "reserves" in reason


def test_an_op_column_that_is_not_text_fails_the_file(tables):
    for op in (pa.array([b"\xff\xfe"], pa.binary()), pa.array([{"a": "I"}], pa.struct([("a", pa.string())]))):
        reason = read_fails(tables["accounts"], CDC + ".parquet", parquet(pa.table({"Op": op, "id": [1]})))
        assert "Op" in reason and str(op.type) in reason


def test_binary_that_is_not_utf8_in_a_string_column_is_a_bad_row(tables):
    file = pa.table({"Op": ["I", "I"], "id": [1, 2], "note": pa.array([b"ok", b"\xff\x00bad"], pa.binary())})
    got = read(tables["orders"], CDC + ".parquet", parquet(file))
    assert list(reasons(got)) == [2] and "column note" in reasons(got)[2]
    assert reasons(got)[2].isprintable()
    assert [(r["id"], r["note"]) for r in rows(got)] == [(1, "ok")]


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_column(tables):
    got = read(tables["visits"], CDC + ".csv", "\ufeffOp,id,note\nI,1,a\n".encode())
    assert rows(got) == [{"id": "1", "note": "a"}] and got.table.column(OP).to_pylist() == ["I"]
    got = read(tables["events"], CDC + ".csv", "\ufeffI,1,a\n".encode())
    assert got.quarantined == [] and rows(got) == [{"id": 1, "label": "a"}]


def test_anything_unexpected_fails_the_file_with_the_error_type_and_message(tables, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("boom " + "z" * 5000)

    monkeypatch.setattr(dms.pq, "ParquetFile", broken)
    reason = read_fails(tables["accounts"], CDC + ".parquet", b"PAR1 anything")
    assert "KeyError" in reason and "boom zzz" in reason


def test_a_good_file_still_reads_as_before(tables, tmp_path):
    columns = [("id", "long"), ("amount", "long"), ("qty", "int"), ("at", "timestamp"), ("at_tz", "timestamptz"),
               ("note", "string")]
    at = dt.datetime(2026, 11, 21, 10, 15, 0, 123456)
    good = [{"Op": "I", "id": 1, "amount": 10, "qty": 1, "at": at, "at_tz": at, "note": "a"},
            {"Op": "D", "id": 2, "amount": None, "qty": None, "at": None, "at_tz": None, "note": None}]
    for kw in ({"fmt": "parquet"}, {"fmt": "csv"}, {"fmt": "csv", "gzip": True}):
        data = dms_file(tmp_path, good, columns, cdc=True, **kw)
        ext = ".parquet" if kw["fmt"] == "parquet" else (".csv.gz" if kw.get("gzip") else ".csv")
        got = read(tables["orders"], CDC + ext, data)
        assert got.quarantined == [] and got.rows_read == 2
        assert rows(got) == [
            {"id": 1, "amount": 10, "qty": 1, "at": at, "at_tz": at.replace(tzinfo=dt.UTC), "note": "a"},
            {"id": 2, "amount": None, "qty": None, "at": None, "at_tz": None, "note": None},
        ]
        assert got.table.column(OP).to_pylist() == ["I", "D"] and got.table.column(ROW).to_pylist() == [1, 2]
