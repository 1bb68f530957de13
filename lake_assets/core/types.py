"""Registry column types as Arrow types, the lake type of any landed Arrow type, and casting to them.

The lake stores what Iceberg v2 stores and both engines (pyiceberg and Spark) write: boolean, int,
long, float, double, decimal(p<=38,s), date, timestamp and timestamptz in microseconds, string and
binary. Landed files bring more (pandas' nanoseconds, unsigned integers, dictionaries, nested
columns): each is converted exactly where it can be, timestamps below a microsecond are truncated,
and the rest is refused with an `UnsupportedTypeError` the reader turns into a failed file.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

_DECIMAL = re.compile(r"^decimal\((\d+),(\d+)\)$")
MAX_DECIMAL_PRECISION = 38  # Iceberg's limit
_UINT64 = pa.decimal128(20, 0)  # every uint64 value; Iceberg has no unsigned types
# Fractional-second digits beyond microseconds in timestamp text (`.123456789` -> `.123456`).
_SUB_MICROSECOND_DIGITS = r"(\.\d{6})\d+"

_SIMPLE = {
    "string": pa.string(),
    "int": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "binary": pa.binary(),
}
_STORED = frozenset(_SIMPLE.values())


class UnsupportedTypeError(ValueError):
    """An Arrow type the lake cannot store, or cannot read as a column's declared type."""


REGISTRY_TYPES_TEXT = "string, int, long, float, double, boolean, date, timestamp, timestamptz, binary or decimal(p,s)"
SEQUENCE_TYPES_TEXT = "int, long, decimal(p,s), string (holding an integer or decimal number), date, timestamp or timestamptz"


def canonical_type(registry_type: str) -> str:
    """A registry column type in its one spelling (`decimal(12, 2)` -> `decimal(12,2)`), or ValueError."""
    name = registry_type.replace(" ", "").lower()
    arrow_type(name)
    return name


def arrow_type(registry_type: str) -> pa.DataType:
    """The Arrow type of a registry column type (the one mapping every reader and writer uses)."""
    registry_type = registry_type.replace(" ", "").lower()
    if registry_type in _SIMPLE:
        return _SIMPLE[registry_type]
    m = _DECIMAL.fullmatch(registry_type)
    if m and 1 <= int(m.group(1)) <= MAX_DECIMAL_PRECISION and int(m.group(2)) <= int(m.group(1)):
        return pa.decimal128(int(m.group(1)), int(m.group(2)))
    raise ValueError(f"unknown column type {registry_type!r}; use {REGISTRY_TYPES_TEXT}"
                     + (f" (decimal precision 1..{MAX_DECIMAL_PRECISION}, scale <= precision)" if m else ""))


def orders_by_kind(registry_type: str) -> bool:
    """Whether a column of this registry type can be a sequence_by column (compared by its kind:
    numbers numerically, dates and instants as such). Floats are refused: equal-looking values differ."""
    t = arrow_type(registry_type)
    return pa.types.is_integer(t) or pa.types.is_decimal(t) or pa.types.is_string(t) or pa.types.is_date(t) \
        or pa.types.is_timestamp(t)


def normalize_arrow_type(t: pa.DataType) -> pa.DataType:
    """The type the lake stores for a landed Arrow type (the type of an undeclared column).

    `null` (a column pyarrow wrote with no values) stays null: there is no type to give it, the caller
    decides. Raises UnsupportedTypeError for types with no lake equivalent.
    """
    if isinstance(t, pa.BaseExtensionType):
        return normalize_arrow_type(t.storage_type)
    if pa.types.is_dictionary(t):
        return normalize_arrow_type(t.value_type)
    if t in _STORED or pa.types.is_null(t):
        return t
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t) or pa.types.is_fixed_size_binary(t):
        return pa.binary()
    if pa.types.is_timestamp(t):
        # Any zone is the same instant in UTC, which is what timestamptz stores.
        return pa.timestamp("us", tz="UTC" if t.tz is not None else None)
    if pa.types.is_date64(t):
        return pa.date32()
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t) or pa.types.is_uint16(t):
        return pa.int32()
    if pa.types.is_uint32(t):
        return pa.int64()
    if pa.types.is_uint64(t):
        return _UINT64
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_decimal(t):
        if t.precision > MAX_DECIMAL_PRECISION or t.scale < 0:
            raise UnsupportedTypeError(
                f"Arrow type {t} does not fit a lake decimal (precision at most {MAX_DECIMAL_PRECISION}, scale >= 0)"
            )
        return pa.decimal128(t.precision, t.scale)
    hint = " (declare the column as string to keep its text)" if _castable(t, pa.string()) else ""
    raise UnsupportedTypeError(f"Arrow type {t} has no lake (Iceberg) equivalent{hint}")


def _castable(source: pa.DataType, target: pa.DataType) -> bool:
    try:
        pc.cast(pa.array([], source), target)
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError, pa.ArrowInvalid):
        return False
    return True


def _plain(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One array of plain values: chunks combined, dictionaries decoded, extension types unwrapped."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values.type, pa.BaseExtensionType):
        values = values.storage
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    return values


def _to_microseconds(values: pa.Array) -> pa.Array:
    """Nanosecond timestamps truncated to microseconds (towards the past, as the digits read)."""
    if values.type.unit != "ns":
        return values
    naive = values.cast(pa.timestamp("ns"))  # the UTC wall clock: the same numbers, without the zone
    micros = pc.floor_temporal(naive, unit="microsecond").cast(pa.timestamp("us"))
    return micros if values.type.tz is None else micros.cast(pa.timestamp("us", tz="UTC"))


def cast_column(values: pa.Array | pa.ChunkedArray, target: pa.DataType) -> tuple[pa.Array, list[int]]:
    """Cast values to target; return the cast array and the row indices that do not fit.

    Rows that do not fit are returned as null in the array (the caller quarantines them). The fast
    path is one vectorised cast; when it fails, halves are cast until the bad values are isolated, so
    a few bad rows cost a few casts. Raises UnsupportedTypeError when no value of this type can be read
    as target (a nested column declared long); that is the file's problem, not a row's.
    """
    src = _plain(values)
    if pa.types.is_null(src.type):
        return pa.nulls(len(src), target), []
    if pa.types.is_timestamp(src.type) and pa.types.is_timestamp(target):
        # Iceberg stores microseconds: ns digits are dropped explicitly, s/ms convert exactly.
        # Between naive and zoned, a naive value is UTC (as DMS writes timestamptz) and a zoned one
        # becomes its UTC wall clock.
        src = _to_microseconds(src)
    elif (pa.types.is_string(src.type) or pa.types.is_large_string(src.type)) and pa.types.is_timestamp(target):
        src = pc.replace_substring_regex(src, _SUB_MICROSECOND_DIGITS, r"\1")
    if src.type == target:
        return src, []
    if not _castable(src.type, target):
        raise UnsupportedTypeError(f"Arrow type {values.type} cannot be read as {target}")
    bad: list[int] = []
    parts = _cast_isolating(src, target, 0, bad)
    return (parts[0] if len(parts) == 1 else pa.concat_arrays(parts)), bad


def _cast_isolating(src: pa.Array, target: pa.DataType, offset: int, bad: list[int]) -> list[pa.Array]:
    try:
        return [pc.cast(src, target)]
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        pass
    if len(src) == 1:
        bad.append(offset)
        return [pa.nulls(1, target)]
    mid = len(src) // 2
    return _cast_isolating(src.slice(0, mid), target, offset, bad) + _cast_isolating(
        src.slice(mid), target, offset + mid, bad
    )
