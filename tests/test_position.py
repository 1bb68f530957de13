"""The order of changes as cdc/position.py encodes it: encoded sequence values sort bytewise exactly
as the numbers, instants and dates they hold, whichever of its two paths (one DuckDB expression for
plain decimal text, `encode_number` for the rest) encodes them.

The engine tests reach this code with the values DMS writes (plain integers and decimals); these
tests add what they never land: exponent forms, leading zeros and signs, values before 1970.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa
from hypothesis import example, given
from hypothesis import strategies as st

from lake_assets.core.cdc.position import SequenceKind, encode_number, encode_sequence

PLAIN_ONLY = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)$"  # what the DuckDB path takes (position._encode_number_texts)


@st.composite
def number_texts(draw) -> str:
    """Decimal text as producers write it: a sign or none, leading zeros, a fraction, an exponent."""
    sign = draw(st.sampled_from(["", "", "-", "+"]))
    whole = draw(st.text("0123456789", max_size=38))
    frac = draw(st.one_of(st.none(), st.text("0123456789", max_size=12)))
    if not whole and not frac:
        whole = "0"
    text = sign + whole + ("" if frac is None else "." + frac)
    if draw(st.integers(0, 3)) == 0:
        text += draw(st.sampled_from("eE")) + draw(st.sampled_from(["", "+", "-"])) + str(draw(st.integers(0, 60)))
    return text


def encoded(texts: list[str]) -> list[str | None]:
    enc = encode_sequence(pa.array(texts, pa.string()), SequenceKind.NUMBER, "seq")
    assert enc.bad == {}, enc.bad
    return enc.values.to_pylist()


@given(st.lists(number_texts(), min_size=2, max_size=12))
@example(["1e3", "999", "-1E3", "-999", "2.5e-3", "0.003", "1000.0", "-0", "+.5", "0007"])
@example(["-2.00", "-1.00", "-10", "3", "9", "10", "99999999999999999999999999999999998", "99999999999999999999999999999999999"])
def test_numbers_in_text_sort_as_numbers(texts):
    enc = encoded(texts)
    values = [Decimal(t) for t in texts]
    for i in range(len(texts)):
        for j in range(len(texts)):
            assert (enc[i] < enc[j]) == (values[i] < values[j]), (texts[i], texts[j], enc[i], enc[j])
            assert (enc[i] == enc[j]) == (values[i] == values[j]), (texts[i], texts[j], enc[i], enc[j])


@given(st.lists(number_texts().filter(lambda t: "e" not in t.lower()), min_size=1, max_size=12))
def test_the_duckdb_path_writes_what_encode_number_writes(texts):
    # Plain decimal text goes through one DuckDB expression; encode_number is its reference.
    assert all(pa.compute.match_substring_regex(pa.array(texts), PLAIN_ONLY).to_pylist())
    assert encoded(texts) == ["n" + encode_number(t) for t in texts]


@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=2, max_size=12))
def test_integers_of_any_sign_sort_as_numbers(values):
    enc = encode_sequence(pa.array(values, pa.int64()), SequenceKind.NUMBER, "seq").values.to_pylist()
    assert sorted(range(len(values)), key=lambda i: (enc[i], i)) == sorted(range(len(values)), key=lambda i: (values[i], i))


instants = st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1),
                        timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-8)), dt.timezone(dt.timedelta(hours=9))]))


@given(st.lists(instants, min_size=2, max_size=12))
def test_instants_before_and_after_1970_sort_as_instants(values):
    enc = encode_sequence(pa.array(values, pa.timestamp("us", tz="UTC")), SequenceKind.INSTANT, "at").values.to_pylist()
    for i in range(len(values)):
        for j in range(len(values)):
            assert (enc[i] < enc[j]) == (values[i] < values[j]), (values[i], values[j])


@given(st.lists(st.dates(min_value=dt.date(1800, 1, 1), max_value=dt.date(2300, 1, 1)), min_size=2, max_size=12))
def test_dates_before_and_after_1970_sort_as_dates(values):
    enc = encode_sequence(pa.array(values, pa.date32()), SequenceKind.DATE, "day").values.to_pylist()
    for i in range(len(values)):
        for j in range(len(values)):
            assert (enc[i] < enc[j]) == (values[i] < values[j]), (values[i], values[j])
