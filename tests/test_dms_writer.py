"""The DMS writer lands files the way the AWS DMS S3 target does; read them back with plain readers."""

from __future__ import annotations

import gzip
import io
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from demo.dms_writer import (
    cdc_file_name,
    load_file_name,
    table_dir,
    write_dms_file,
    write_dms_table,
    write_raw,
)

ALL_TYPES = [
    ("id", "long"),
    ("n", "int"),
    ("name", "string"),
    ("ratio", "float"),
    ("score", "double"),
    ("active", "boolean"),
    ("born", "date"),
    ("seen_at", "timestamp"),
    ("seen_tz", "timestamptz"),
    ("blob", "binary"),
    ("price", "decimal(12,2)"),
]
ARROW_TYPES = [
    pa.int64(),
    pa.int32(),
    pa.string(),
    pa.float32(),
    pa.float64(),
    pa.bool_(),
    pa.date32(),
    pa.timestamp("us"),
    pa.timestamp("us", tz="UTC"),
    pa.binary(),
    pa.decimal128(12, 2),
]
ROW = {
    "id": 1,
    "n": 7,
    "name": "Zoë O'Brien",
    "ratio": 0.5,
    "score": 2.25,
    "active": True,
    "born": date(1990, 2, 3),
    "seen_at": datetime(2026, 11, 21, 10, 15, 0, 123456),
    "seen_tz": datetime(2026, 11, 21, 12, 15, 0, 5, tzinfo=timezone(timedelta(hours=2))),
    "blob": b"\x00\xffab",
    "price": Decimal("1234.5"),
}


def read_csv(path: Path, names: list[str], null_marker: str = "", delimiter: str = ",") -> list[dict]:
    """Read header-less DMS CSV as text, keeping quoted strings non-null as DMS readers must."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    t = pcsv.read_csv(
        io.BytesIO(data),
        read_options=pcsv.ReadOptions(column_names=names),
        parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(
            column_types={n: pa.string() for n in names},
            null_values=[null_marker],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    return t.to_pylist()


def test_file_names():
    assert load_file_name(1) == "LOAD00000001"
    assert load_file_name(10) == "LOAD0000000A"
    assert load_file_name(255) == "LOAD000000FF"
    assert load_file_name(0x1234ABCD) == "LOAD1234ABCD"
    with pytest.raises(ValueError):
        load_file_name(0)
    assert cdc_file_name(datetime(2026, 11, 21, 10, 15, 0, 123999)) == "20261121-101500123"
    assert cdc_file_name(datetime(2026, 1, 2, 3, 4, 5)) == "20260102-030405000"
    assert table_dir(Path("/l"), "travel", "booking", "bookings") == Path("/l/travel/booking/bookings")


def test_parquet_full_load_has_declared_types_and_no_op(tmp_path):
    path = write_dms_file(tmp_path / "src/sch/t" / load_file_name(1), [ROW], ALL_TYPES, cdc=False)
    assert path == tmp_path / "src/sch/t/LOAD00000001.parquet"
    t = pq.read_table(path)
    assert t.schema.names == [n for n, _ in ALL_TYPES]
    assert t.schema.types == ARROW_TYPES
    got = t.to_pylist()[0]
    assert got["price"] == Decimal("1234.50")
    assert got["seen_tz"] == datetime(2026, 11, 21, 10, 15, 0, 5, tzinfo=UTC)
    assert {k: v for k, v in got.items() if k not in ("price", "seen_tz", "ratio")} == {
        k: v for k, v in ROW.items() if k not in ("price", "seen_tz", "ratio")
    }


def test_parquet_cdc_puts_op_first(tmp_path):
    rows = [{**ROW, "Op": "I"}, {**ROW, "n": 8, "Op": "U"}, {**ROW, "Op": "D"}]
    path = write_dms_file(tmp_path / cdc_file_name(datetime(2026, 11, 21, 10, 15)), rows, ALL_TYPES, cdc=True)
    assert path.name == "20261121-101500000.parquet"
    t = pq.read_table(path)
    assert t.schema.names[0] == "Op" and t.schema.types[0] == pa.string()
    assert t.schema.names[1:] == [n for n, _ in ALL_TYPES]
    assert t.column("Op").to_pylist() == ["I", "U", "D"]
    assert t.column("n").to_pylist() == [7, 8, 7]


def test_include_op_for_full_load(tmp_path):
    path = write_dms_file(tmp_path / "LOAD00000001", [ROW, ROW], ALL_TYPES, cdc=False, include_op_for_full_load=True)
    t = pq.read_table(path)
    assert t.schema.names[0] == "Op" and t.column("Op").to_pylist() == ["I", "I"]


def test_cdc_rows_need_a_valid_op(tmp_path):
    with pytest.raises(ValueError, match="Op"):
        write_dms_file(tmp_path / "x", [ROW], ALL_TYPES, cdc=True)
    with pytest.raises(ValueError, match="Op"):
        write_dms_file(tmp_path / "x", [{**ROW, "Op": "X"}], ALL_TYPES, cdc=True)


def test_missing_keys_are_nulls_and_extra_keys_are_ignored(tmp_path):
    cols = [("id", "long"), ("name", "string")]
    path = write_dms_file(tmp_path / "f", [{"id": 1, "other": 5}], cols, cdc=False)
    assert pq.read_table(path).to_pylist() == [{"id": 1, "name": None}]


def test_parquet_type_mismatch_names_the_column(tmp_path):
    with pytest.raises(ValueError, match="column id"):
        write_dms_file(tmp_path / "f", [{"id": "not a number"}], [("id", "long")], cdc=False)


def test_csv_is_headerless_with_op_first_and_dms_value_formats(tmp_path):
    rows = [{**ROW, "Op": "U"}, {"id": 2, "Op": "D"}]
    path = write_dms_file(tmp_path / "f", rows, ALL_TYPES, fmt="csv", cdc=True, null_marker="NULL")
    assert path.name == "f.csv"
    lines = path.read_bytes().decode().split("\n")
    assert lines[-1] == "" and len(lines) == 3  # every row ends with \n, nothing else
    assert lines[0] == (
        "U,1,7,Zoë O'Brien,0.5,2.25,true,1990-02-03,2026-11-21 10:15:00.123456,"
        "2026-11-21 10:15:00.000005+00:00,00FF6162,1234.50"
    )
    assert lines[1] == "D,2," + ",".join(["NULL"] * (len(ALL_TYPES) - 1))


def test_csv_quotes_only_when_needed(tmp_path):
    cols = [("id", "long"), ("s", "string")]
    values = ["plain", "a,b", 'say "hi"', "two\nlines", "cr\rhere", "NULL", "", " padded "]
    rows = [{"id": i, "s": v} for i, v in enumerate(values)] + [{"id": 99, "s": None}]
    path = write_dms_file(tmp_path / "f", rows, cols, fmt="csv", cdc=False, null_marker="NULL")
    text = path.read_bytes().decode()
    assert text.startswith('0,plain\n1,"a,b"\n2,"say ""hi"""\n3,"two\nlines"\n4,"cr\rhere"\n5,"NULL"\n6,\n7, padded \n')
    assert text.endswith("99,NULL\n")
    got = read_csv(path, ["id", "s"], null_marker="NULL")
    assert [r["s"] for r in got] == values + [None]


def test_csv_default_null_marker_keeps_empty_strings_apart(tmp_path):
    cols = [("id", "long"), ("s", "string")]
    path = write_dms_file(tmp_path / "f", [{"id": 1, "s": ""}, {"id": 2, "s": None}], cols, fmt="csv", cdc=False)
    assert path.read_bytes().decode() == '1,""\n2,\n'
    assert [r["s"] for r in read_csv(path, ["id", "s"])] == ["", None]


def test_csv_gzip_header_and_delimiter(tmp_path):
    cols = [("id", "long"), ("s", "string"), ("d", "decimal(5,2)")]
    rows = [{"id": 1, "s": "a|b", "d": Decimal("3"), "Op": "I"}]
    path = write_dms_file(
        tmp_path / "x/20261121-101500123", rows, cols, fmt="csv", cdc=True, gzip=True, csv_header=True, delimiter="|"
    )
    assert path.name == "20261121-101500123.csv.gz"
    assert gzip.decompress(path.read_bytes()).decode() == 'Op|id|s|d\nI|1|"a|b"|3.00\n'


def test_csv_gzip_is_byte_identical_across_writes(tmp_path):
    rows = [{**ROW, "Op": "I"}] * 50
    a = write_dms_file(tmp_path / "a", rows, ALL_TYPES, fmt="csv", cdc=True, gzip=True)
    b = write_dms_file(tmp_path / "b", rows, ALL_TYPES, fmt="csv", cdc=True, gzip=True)
    assert a.read_bytes() == b.read_bytes()
    pa_ = write_dms_file(tmp_path / "pa", rows, ALL_TYPES, cdc=True)
    pb = write_dms_file(tmp_path / "pb", rows, ALL_TYPES, cdc=True)
    assert pa_.read_bytes() == pb.read_bytes()


def test_csv_values_cast_back_to_declared_types(tmp_path):
    """What a lake reader does: read text, cast to the registry type, get the original values."""
    path = write_dms_file(tmp_path / "f", [ROW], ALL_TYPES, fmt="csv", cdc=False, null_marker="NULL")
    text = read_csv(path, [n for n, _ in ALL_TYPES], null_marker="NULL")
    as_arrow = pa.Table.from_pylist(text)
    for (name, _), t in zip(ALL_TYPES, ARROW_TYPES):
        if name == "blob":
            assert bytes.fromhex(text[0][name]) == ROW["blob"]
            continue
        value = as_arrow.column(name).cast(t)[0].as_py()
        expected = ROW[name]
        if name == "price":
            expected = Decimal("1234.50")
        if name == "seen_tz":
            expected = datetime(2026, 11, 21, 10, 15, 0, 5, tzinfo=UTC)
        assert value == expected, name


def test_write_dms_table_casts_and_orders_op_first(tmp_path):
    cols = [("id", "long"), ("n", "int")]
    t = pa.table({"n": pa.array([5, 6], pa.int64()), "Op": ["U", "D"], "id": [1, 2]})
    path = write_dms_table(tmp_path / "f", t, cols, cdc=True)
    got = pq.read_table(path)
    assert got.schema.names == ["Op", "id", "n"] and got.schema.field("n").type == pa.int32()
    assert got.to_pylist() == [{"Op": "U", "id": 1, "n": 5}, {"Op": "D", "id": 2, "n": 6}]
    csv = write_dms_table(tmp_path / "g", t, cols, fmt="csv", cdc=True, null_marker="NULL")
    assert csv.read_bytes().decode() == "U,1,5\nD,2,6\n"


def test_write_raw_writes_bytes_exactly(tmp_path):
    p = write_raw(tmp_path / "a/b/LOAD00000001.parquet", b"PAR1\x00truncated")
    assert p.read_bytes() == b"PAR1\x00truncated"


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)), max_size=8),
    null_marker=st.sampled_from(["", "NULL", "\\N"]),
    delimiter=st.sampled_from([",", "|", "\t", ";"]),
)
def test_csv_round_trips_any_text(tmp_path_factory, values, null_marker, delimiter):
    path = write_dms_file(
        tmp_path_factory.mktemp("csv") / "f",
        [{"id": i, "s": v, "Op": "I"} for i, v in enumerate(values)],
        [("id", "long"), ("s", "string")],
        fmt="csv",
        cdc=True,
        null_marker=null_marker,
        delimiter=delimiter,
        gzip=True,
    )
    if not values:
        assert gzip.decompress(path.read_bytes()) == b""
        return
    got = read_csv(path, ["Op", "id", "s"], null_marker=null_marker, delimiter=delimiter)
    assert [r["s"] for r in got] == values
