"""dbt sources generated from the table registry: models/sources/<source>.yml, one per registry source.

The registry is the one declaration of the source-aligned tables (names, columns and types, primary
key, PII); the dbt sources restate it, so they are derived, never hand-written (a hand-written copy
went stale in days). Every registry source gets its file, used by a model yet or not: adding a
source YAML is all it takes to `source()` its tables. Source name = registry source = Iceberg
namespace (a Glue database on AWS). Columns are the registry's; the merge's own `_lake_*` columns
are left out, as they are no part of the source's contract. No Dagster imports.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from lake_assets.core.dbt_codegen import GeneratedFile, GeneratedFolder
from lake_assets.core.registry import ColumnSpec, Registry, TableConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCES_MODELS_DIR = Path("models") / "sources"
PII_TAG = "pii"

# The SQL type a query sees for each registry type: Trino's names, which Athena reports for the
# Iceberg tables and DuckDB accepts as written (DuckDB shows real as FLOAT and varbinary as BLOB).
_SQL_TYPES = {
    "string": "varchar",
    "int": "integer",
    "long": "bigint",
    "float": "real",
    "double": "double",
    "boolean": "boolean",
    "date": "date",
    "timestamp": "timestamp",
    "timestamptz": "timestamp with time zone",
    "binary": "varbinary",
}
_DECIMAL = re.compile(r"^decimal\((\d+),(\d+)\)$")


def sql_type(registry_type: str) -> str:
    """The dbt `data_type` of a registry column type."""
    t = registry_type.replace(" ", "").lower()
    if t in _SQL_TYPES:
        return _SQL_TYPES[t]
    m = _DECIMAL.match(t)
    if m:
        return f"decimal({m.group(1)},{m.group(2)})"
    raise ValueError(f"unknown registry type {registry_type!r}")


def registry_file_label(config_file: str) -> str:
    """A registry file as the generated files name it: relative to the repository when inside it,
    so the output does not depend on where the repository is checked out."""
    path = Path(config_file).resolve()
    try:
        return path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return path.as_posix()


def column_description(table: TableConfig, name: str, description: str | None) -> str | None:
    """A registry column's description with what the registry says of it (key, sequence, PII)."""
    notes = []
    if name in table.primary_key:
        notes.append("Primary key" if len(table.primary_key) == 1 else "Part of the primary key")
    if name == table.sequence_by:
        notes.append("Orders the changes (sequence_by)")
    if name in table.pii:
        notes.append("PII")
    text = (description or "").strip()
    if notes:
        if text and text[-1] not in ".!?":
            text += "."
        text = " ".join(filter(None, [text, ". ".join(notes) + "."]))
    return text or None


def _column(table: TableConfig, column: ColumnSpec) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": column.name, "data_type": sql_type(column.type)}
    description = column_description(table, column.name, column.description)
    if description:
        entry["description"] = description
    config: dict[str, Any] = {}
    if column.name in table.pii:
        config["tags"] = [PII_TAG]
    meta = {}
    if column.name in table.primary_key:
        meta["primary_key"] = True
    if column.name in table.pii:
        meta["pii"] = True
    if meta:
        config["meta"] = meta
    if config:
        entry["config"] = config
    return entry


def _table(table: TableConfig) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "primary_key": list(table.primary_key),
        "mode": table.mode,
        "landing_folder": table.landing_prefix,
    }
    if table.sequence_by:
        meta["sequence_by"] = table.sequence_by
    if table.pii:
        meta["pii_columns"] = list(table.pii)
    if table.owners:
        meta["owners"] = list(table.owners)
    entry: dict[str, Any] = {"name": table.name}
    if table.description:
        entry["description"] = table.description
    entry["config"] = {"meta": meta}
    if table.columns is not None:
        entry["columns"] = [_column(table, c) for c in table.columns if table.lands(c.name)]
    return entry


# YAML is written here rather than by PyYAML: its representer costs 1.5 s for 3,000 tables on every
# definitions load (prepare_manifest regenerates), this 0.1 s. tests/dbt checks that PyYAML reads
# back exactly the document written, for the registry and for arbitrary text.
_PLAIN = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$ .@/()'`-]*$")  # no ': ', ' #', ',' or brackets
_RESERVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}  # YAML 1.1 booleans, null


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and not text.endswith(" ") and text.lower() not in _RESERVED:
        return text
    return _double_quoted(text)


def _double_quoted(text: str) -> str:
    """A YAML double-quoted scalar; characters Python does not print (line breaks, controls,
    unassigned code points) as escapes, so no reader folds or rejects them."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, bool))


def _lines(mapping: dict[str, Any], indent: int) -> list[str]:
    pad, out = " " * indent, []
    for key, value in mapping.items():
        head = f"{pad}{_scalar(key)}:"
        if _is_scalar(value):
            out.append(f"{head} {_scalar(value)}")
        elif isinstance(value, list) and all(_is_scalar(v) for v in value):
            out.append(f"{head} [{', '.join(_scalar(v) for v in value)}]")
        elif isinstance(value, dict):
            out += [f"{head} {{}}"] if not value else [head, *_lines(value, indent + 2)]
        elif isinstance(value, list):
            out.append(head)
            for item in value:
                first, *rest = _lines(item, indent + 2)
                out += [f"{pad}- {first.lstrip()}", *rest]
        else:
            raise TypeError(f"cannot write {type(value).__name__} {value!r} to a sources file")
    return out


def dump_yaml(doc: dict[str, Any]) -> str:
    """Block-style YAML of mappings, lists of mappings and lists of plain values (`tags: [pii]`)."""
    return "\n".join(_lines(doc, 0)) + "\n"


def render_source(source: str, tables: list[TableConfig], description: str | None = None) -> GeneratedFile:
    """The dbt properties file of one registry source."""
    files = sorted({registry_file_label(f) for f in {t.config_file for t in tables}})
    entry: dict[str, Any] = {"name": source, "schema": source}
    if description:
        entry["description"] = description
    entry["config"] = {"meta": {"lake_registry": files[0] if len(files) == 1 else files}}
    entry["tables"] = [_table(t) for t in tables]
    body = dump_yaml({"version": 2, "sources": [entry]})
    return GeneratedFile(f"{', '.join(files)} (source {source}). Edit the registry, not this file.", body)


def generated_sources(registry: Registry) -> GeneratedFolder:
    """models/sources/: one file per registry source, in registry order."""
    files = {
        SOURCES_MODELS_DIR / f"{source}.yml": render_source(source, tables, source_description(tables))
        for source, tables in registry.by_source().items()
    }
    return GeneratedFolder(SOURCES_MODELS_DIR, "the table registry (lake_assets/sources/*.yaml, LAKE_SOURCES_DIR)", files)


# A top-level `description:` of a block-style registry file: its line and the indented (or blank,
# or comment) lines that continue its value.
_TOP_LEVEL_DESCRIPTION = re.compile(r"^description[ \t]*:.*(?:\n(?:[ \t#].*)?$)*", re.MULTILINE)


def source_description(tables: list[TableConfig]) -> str | None:
    """The source-level `description:` of its registry file(s). TableConfig carries only the
    tables' descriptions, so the file is read again, parsing just that entry (the whole file
    only when it is written in flow style)."""
    for path in dict.fromkeys(t.config_file for t in tables):
        text = Path(path).read_text(encoding="utf-8")
        if text.lstrip().startswith("{"):
            doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        else:
            match = _TOP_LEVEL_DESCRIPTION.search(text)
            doc = yaml.safe_load(match.group(0)) if match else None
        description = doc.get("description") if isinstance(doc, dict) else None
        if description:
            return str(description).strip()
    return None
