"""Naming rules of the lake: identifiers, asset keys and groups, decided once here."""

from __future__ import annotations

import re

IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")

# Sibling tables the lake keeps next to each source-aligned table, in the source's namespace.
TOMBSTONE_SUFFIX = "__tombstones"
QUARANTINE_SUFFIX = "__quarantine"


class NamingError(ValueError):
    """A name that Athena/Glue (and therefore the lake) cannot use."""


def check_identifier(name: str, what: str) -> str:
    if not isinstance(name, str) or not IDENTIFIER.fullmatch(name):
        raise NamingError(
            f"{what} {name!r} is not a valid lake identifier: use lowercase [a-z][a-z0-9_]* (Athena's rule)"
        )
    return name


def source_aligned_key(source: str, table: str) -> list[str]:
    return ["source_aligned", source, table]


def table_identifier(source: str, table: str) -> str:
    return f"{source}.{table}"


def tombstone_identifier(source: str, table: str) -> str:
    return f"{source}.{table}{TOMBSTONE_SUFFIX}"


def quarantine_identifier(source: str, table: str) -> str:
    return f"{source}.{table}{QUARANTINE_SUFFIX}"


def source_pool(source: str) -> str:
    """Concurrency pool of a source's merge op: at most one merge of any of its tables at a time."""
    return f"merge_{source}"
