"""The order of changes, decided once: each change's position as one string that sorts bytewise.

A change's position is, compared element by element (DESIGN.md "CDC semantics: order of changes"):

  phase     full-load rows (0) before CDC rows (1): a table's LOAD files rank below all its CDC
  sequence  the `sequence_by` value compared by its kind: numbers numerically at any width and
            sign (integers, decimals, numeric strings such as DMS's 35-digit `$AR_H_CHANGE_SEQ`),
            timestamps as instants (zones normalized, naive ones taken as UTC), dates as dates;
            empty when the table declares no `sequence_by`
  file      the file's name: LOAD number, or the CDC file's creation-time name
  version   the file version: a re-landed file's new content ranks after its earlier versions
  row       the row number in the file
  key       a short digest of the landing key, a last tie-break so that no two changes share a
            position (two files of one name in different folders); a digest because the position
            is stored in every row and compared by every merge

Strings rather than a struct because the position is stored in every table row (`_lake_seq`) and
compared by DuckDB, Spark and pyarrow alike: bytewise string order is the one comparison they all
share. Each part uses only characters above SEPARATOR, so comparing the joined strings compares the
parts in order.
"""

from __future__ import annotations

import decimal
import hashlib
import re
from dataclasses import dataclass
from enum import Enum

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

SEPARATOR = "!"  # sorts below every character a part contains
LOAD_PHASE, CDC_PHASE = "0", "1"
VERSION_WIDTH, ROW_WIDTH = 8, 12
# Numbers are 0.d1d2...dn x 10^E; E is stored biased in fixed width, so |E| < EXPONENT_BIAS digits.
EXPONENT_BIAS, EXPONENT_WIDTH = 500_000, 6
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class SequenceKind(str, Enum):
    """How a table's sequence_by values compare. The letter prefixes the encoded value."""

    NUMBER = "n"
    INSTANT = "t"
    DATE = "d"


class SequenceTypeError(ValueError):
    """A sequence_by column whose type cannot be ordered (boolean, binary, nested ...)."""


def sequence_kind(t: pa.DataType) -> SequenceKind:
    """The kind a column of this Arrow type orders by (strings hold numbers)."""
    if pa.types.is_integer(t) or pa.types.is_decimal(t) or pa.types.is_floating(t):
        return SequenceKind.NUMBER
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return SequenceKind.NUMBER
    if pa.types.is_timestamp(t):
        return SequenceKind.INSTANT
    if pa.types.is_date(t):
        return SequenceKind.DATE
    raise SequenceTypeError(
        f"type {t} cannot order changes; sequence_by takes an integer, decimal, numeric string, date or timestamp column"
    )


@dataclass(frozen=True)
class EncodedSequence:
    """Encoded values (null where the value is null or bad) and, per bad row index, why."""

    values: pa.Array
    bad: dict[int, str]


_NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}

# One SQL expression turns a plain decimal text (no exponent) into its order-preserving form; the
# rare exponent forms go through `encode_number` below, which gives the same strings.
_ENCODE_SQL = f"""
WITH parts AS (
  SELECT i, starts_with(v, '-') AS neg,
         ltrim(split_part(ltrim(v, '+-'), '.', 1), '0') AS int_s,
         split_part(ltrim(v, '+-'), '.', 2) AS frac
  FROM input
), shaped AS (
  SELECT i, neg,
         CASE WHEN int_s <> '' THEN length(int_s)
              ELSE -(length(rtrim(frac, '0')) - length(ltrim(rtrim(frac, '0'), '0'))) END AS e,
         rtrim(CASE WHEN int_s <> '' THEN int_s || frac ELSE ltrim(frac, '0') END, '0') AS digits
  FROM parts
)
SELECT i, CASE WHEN digits = '' THEN '1'
  WHEN neg THEN '0' || lpad(CAST({EXPONENT_BIAS} - e AS VARCHAR), {EXPONENT_WIDTH}, '0')
                || translate(digits, '0123456789', '9876543210') || '~'
  ELSE '2' || lpad(CAST({EXPONENT_BIAS} + e AS VARCHAR), {EXPONENT_WIDTH}, '0') || digits END AS enc
FROM shaped ORDER BY i
"""


def encode_number(text: str) -> str:
    """The order-preserving form of one decimal number's text: '0...~' negative, '1' zero, '2...' positive.

    Within a sign, the biased exponent (digit count before the point) then the significant digits
    decide; negatives store both nine's-complemented and end in '~', so a longer magnitude sorts
    first. This is the reference the vectorised path is tested against.
    """
    d = decimal.Decimal(text.strip())
    if not d.is_finite():
        raise ValueError(f"{text!r} is not a finite number")
    if d.is_zero():
        return "1"
    sign, digits, exponent = d.as_tuple()  # exact: normalize() would round to the context's precision
    ds = "".join(map(str, digits)).lstrip("0")
    e = len(ds) + int(exponent)  # value = 0.ds x 10^e
    ds = ds.rstrip("0")
    if abs(e) >= EXPONENT_BIAS:
        raise ValueError(f"{text!r} is too large or small to order (more than {EXPONENT_BIAS} digits)")
    if sign:
        return "0" + f"{EXPONENT_BIAS - e:0{EXPONENT_WIDTH}d}" + ds.translate(str.maketrans("0123456789", "9876543210")) + "~"
    return "2" + f"{EXPONENT_BIAS + e:0{EXPONENT_WIDTH}d}" + ds


def _encode_number_texts(texts: pa.Array, column: str, what: str) -> EncodedSequence:
    n = len(texts)
    texts = pc.utf8_trim_whitespace(texts.cast(pa.string()))
    plain = pc.match_substring_regex(texts, r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)$")
    bad: dict[int, str] = {}
    out: list[str | None] = [None] * n
    plain_ix = pc.indices_nonzero(pc.fill_null(plain, False))
    if len(plain_ix):
        con = duckdb.connect()
        con.register("input", pa.table({"i": plain_ix, "v": texts.take(plain_ix)}))
        rows = con.execute(_ENCODE_SQL).arrow().read_all()
        con.close()
        for i, enc in zip(rows.column("i").to_pylist(), rows.column("enc").to_pylist()):
            out[i] = enc
    rest = pc.indices_nonzero(pc.and_(pc.invert(pc.fill_null(plain, False)), pc.is_valid(texts))).to_pylist()
    for i in rest:
        v = texts[i].as_py()
        if not _NUMBER.match(v):
            bad[i] = f"sequence_by column {column}: {what} {_shown(v)} is not a number"
            continue
        try:
            out[i] = encode_number(v)
        except (ValueError, decimal.InvalidOperation) as e:
            bad[i] = f"sequence_by column {column}: {what} {_shown(v)} cannot be ordered: {e}"
    return EncodedSequence(pa.array(out, pa.string()), bad)


def _shown(v: object, limit: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def encode_sequence(values: pa.Array | pa.ChunkedArray, kind: SequenceKind, column: str) -> EncodedSequence:
    """Encode one file's sequence_by values of the given kind. Nulls stay null (the caller decides
    whether a null is a bad row); values that do not parse as the kind are reported as bad."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    t = values.type
    if sequence_kind(t) != kind:
        raise SequenceTypeError(f"sequence_by column {column} is {t} in this file, but the table orders by {kind.name.lower()}s")
    if kind is SequenceKind.NUMBER:
        if pa.types.is_floating(t):
            finite = pc.is_finite(values)
            enc = _encode_number_texts(pc.cast(values, pa.string()), column, "value")
            bad = dict(enc.bad)
            for i in pc.indices_nonzero(pc.invert(pc.fill_null(finite, True))).to_pylist():
                bad[i] = f"sequence_by column {column}: value {values[i].as_py()!r} is not a finite number"
            encoded = pc.if_else(pc.fill_null(finite, True), enc.values, pa.scalar(None, pa.string()))
            return EncodedSequence(_prefix(encoded, kind), bad)
        enc = _encode_number_texts(pc.cast(values, pa.string()), column, "value")
        return EncodedSequence(_prefix(enc.values, kind), enc.bad)
    if kind is SequenceKind.INSTANT:
        scale = _NS_PER_UNIT[t.unit]
        ns = pc.multiply(values.cast(pa.int64()).cast(pa.decimal128(19, 0)), pa.scalar(decimal.Decimal(scale), pa.decimal128(10, 0)))
        enc = _encode_number_texts(pc.cast(ns, pa.string()), column, "instant")
        return EncodedSequence(_prefix(enc.values, kind), enc.bad)
    days = values.cast(pa.date32()).cast(pa.int32())
    enc = _encode_number_texts(pc.cast(days, pa.string()), column, "date")
    return EncodedSequence(_prefix(enc.values, kind), enc.bad)


def _prefix(encoded: pa.Array, kind: SequenceKind) -> pa.Array:
    return pc.binary_join_element_wise(pa.scalar(kind.value), encoded, "")


_UNSAFE = re.compile(r"[\x00-\x21%]")


def name_part(name: str) -> str:
    """A file name as a position part: characters at or below the separator are escaped (%XX)."""
    return _UNSAFE.sub(lambda m: f"%{ord(m.group(0)):02X}", name)


def key_digest(key: str) -> str:
    """10 hex digits naming a landing key in positions (a tie-break only: never decoded)."""
    return hashlib.blake2b(key.encode(), digest_size=5).hexdigest()


def file_positions(*, is_load: bool | pa.Array, sequence: pa.Array | None, name: str, version: int, rows: pa.Array,
                   key: str) -> pa.Array:
    """Positions of one file's changes. is_load: the file's phase, or each row's (a Debezium file's
    snapshot reads rank like full-load rows); sequence: encoded sequence parts (no nulls), or None when
    the table declares no sequence_by (or a full-load row carries none: the empty part ranks lowest)."""
    n = len(rows)
    if isinstance(is_load, bool):
        head = pa.scalar(f"{LOAD_PHASE if is_load else CDC_PHASE}{SEPARATOR}")
    else:
        head = pc.if_else(is_load, f"{LOAD_PHASE}{SEPARATOR}", f"{CDC_PHASE}{SEPARATOR}")
    seq = pc.fill_null(sequence, "") if sequence is not None else pa.scalar("")
    middle = pa.scalar(f"{SEPARATOR}{name_part(name)}{SEPARATOR}{version:0{VERSION_WIDTH}d}{SEPARATOR}")
    row_part = pc.utf8_lpad(rows.cast(pa.string()), width=ROW_WIDTH, padding="0")
    tail = pa.scalar(f"{SEPARATOR}{key_digest(key)}")
    joined = pc.binary_join_element_wise(head, seq, middle, row_part, tail, "")
    if not isinstance(joined, (pa.Array, pa.ChunkedArray)):  # all scalars: a file of no rows
        return pa.array([], pa.string())
    assert len(joined) == n
    return joined
