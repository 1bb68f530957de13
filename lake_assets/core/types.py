"""Registry column types as Arrow types, and casting of landed values to them."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

_DECIMAL = re.compile(r"^decimal\((\d+),(\d+)\)$")

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


def arrow_type(registry_type: str) -> pa.DataType:
    """The Arrow type of a registry column type (the one mapping every reader and writer uses)."""
    registry_type = registry_type.replace(" ", "").lower()
    if registry_type in _SIMPLE:
        return _SIMPLE[registry_type]
    m = _DECIMAL.match(registry_type)
    if m:
        return pa.decimal128(int(m.group(1)), int(m.group(2)))
    raise ValueError(f"unknown registry type {registry_type!r}")


def normalize_arrow_type(t: pa.DataType) -> pa.DataType:
    """Types Iceberg stores: large/view strings become strings, ns/ms/s timestamps become us."""
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_timestamp(t) and t.unit != "us":
        return pa.timestamp("us", tz=t.tz)
    if pa.types.is_dictionary(t):
        return normalize_arrow_type(t.value_type)
    if pa.types.is_date64(t):
        return pa.date32()
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t) or pa.types.is_uint16(t):
        return pa.int32()
    if pa.types.is_uint32(t):
        return pa.int64()
    return t


def cast_column(values: pa.Array | pa.ChunkedArray, target: pa.DataType) -> tuple[pa.Array, list[int]]:
    """Cast values to target; return the cast array and the row indices that do not fit.

    Rows that do not fit are returned as null in the array (the caller quarantines them).
    The fast path is one vectorised cast; only when it fails are values checked one by one.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.type == target:
        return values, []
    src = values
    if pa.types.is_string(target) and not (pa.types.is_string(src.type) or pa.types.is_large_string(src.type)):
        # A number or date landing in a string column is representable; keep its text form.
        return pc.cast(src, target), []
    if pa.types.is_timestamp(target) and pa.types.is_timestamp(src.type) and target.tz is None and src.type.tz is not None:
        src = pc.cast(src, pa.timestamp(src.type.unit))
    if pa.types.is_timestamp(target) and pa.types.is_timestamp(src.type) and target.tz is not None and src.type.tz is None:
        src = pc.assume_timezone(src, "UTC") if src.type.unit else src
    try:
        return pc.cast(src, target), []
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    out: list = []
    bad: list[int] = []
    for i, v in enumerate(src):
        if not v.is_valid:
            out.append(None)
            continue
        try:
            out.append(pc.cast(pa.array([v.as_py()], type=src.type), target)[0].as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError):
            out.append(None)
            bad.append(i)
    return pa.array(out, type=target), bad
