"""The table registry: every kind of bad entry is refused with the file, table and field named, a
bad file fails its own source only, and the parsed-file cache never serves a stale registry."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from lake_assets.core import registry as registry_module
from lake_assets.core.registry import (
    BUILTIN_SOURCES_DIR,
    ColumnSpec,
    CsvOptions,
    PartitionField,
    RegistryError,
    TableConfig,
    check_cron,
    load_registry,
    load_source_file,
)

GOOD = """
source: shop
defaults: {refresh: on_arrival}
tables:
  - name: orders
    schema: app
    primary_key: [order_id]
    sequence_by: seq
    columns:
      - {name: seq, type: long}
      - {name: order_id, type: long}
      - {name: total, type: "decimal(12,2)"}
"""

OTHER = """
source: crm
tables:
  - name: contacts
    schema: dbo
    primary_key: [contact_id]
    columns: [{name: contact_id, type: long}]
"""


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


def table_entry(extra: str = "", columns: str = "[{name: id, type: long}, {name: seq, type: long}]",
                name: str = "items", primary_key: str = "[id]") -> str:
    return f"""
source: broken
tables:
  - name: {name}
    schema: app
    primary_key: {primary_key}
    columns: {columns}
{textwrap.indent(textwrap.dedent(extra).strip(), "    ") if extra else ""}
"""


@pytest.fixture(autouse=True)
def _lake_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKE_HOME", str(tmp_path / "lake"))  # the registry cache lives there
    monkeypatch.delenv("LAKE_SOURCES_DIR", raising=False)


# ---------------------------------------------------------------------------------------------
# Each kind of bad entry: refused with file, table and field; the other sources still load

BAD_ENTRIES = {
    "unknown_field": (table_entry("colour: red"), "table 'items': field colour: Extra inputs are not permitted"),
    "bad_table_name": (table_entry(name="Items"), "field name: table name 'Items' is not a valid lake identifier"),
    "bad_column_name": (table_entry(columns="[{name: id, type: long}, {name: Total, type: long}]"),
                        "table 'items': field columns.1.name: column name 'Total' is not a valid lake identifier"),
    "bad_type": (table_entry(columns="[{name: id, type: long}, {name: seq, type: varchar}]"),
                 "table 'items': field columns.1.type: unknown column type 'varchar'"),
    "primary_key_not_in_columns": (table_entry(primary_key="[item_id]"),
                                   "table 'items': field primary_key: column(s) ['item_id'] are not in columns"),
    "pii_not_in_columns": (table_entry("pii: [email]"), "table 'items': field pii: column(s) ['email'] are not in columns"),
    "partition_not_in_columns": (table_entry("partition_by: [{column: day, transform: day}]"),
                                 "table 'items': field partition_by: column(s) ['day'] are not in columns"),
    "bad_transform": (table_entry("partition_by: [{column: seq, transform: weekly}]"),
                      "table 'items': field partition_by.0.transform: unknown partition transform 'weekly'"),
    "bad_cron_words": (table_entry("refresh: every 10 minutes"),
                       "table 'items': field refresh: refresh 'every 10 minutes' is neither a 5-field cron"),
    "bad_cron_range": (table_entry("refresh: '61 * * * *'"),
                       "table 'items': field refresh: refresh '61 * * * *' is not a valid cron expression: minute '61' is outside 0-59"),
    "bad_mode": (table_entry("mode: upsert"), "table 'items': field mode: Input should be 'current', 'history' or 'scd2'"),
    "headerless_csv_without_columns": (
        "source: broken\ndefaults: {format: csv}\ntables:\n  - {name: items, schema: app, primary_key: [id]}\n",
        "table 'items': field columns: header-less CSV needs the ordered column list",
    ),
    "sequence_by_not_in_columns": (table_entry("sequence_by: lsn"),
                                   "table 'items': field sequence_by: column(s) ['lsn'] are not in columns"),
    "bad_source_name": ("source: Broken-Source\ntables: []\n", "field source: source name 'Broken-Source' is not a valid lake identifier"),
    "bad_default": ("source: broken\ndefaults: {refresh: hourly}\ntables: []\n", "field defaults.refresh: refresh 'hourly'"),
    "yaml_syntax": ("source: broken\ntables:\n  - name: items\n    schema: [app\n", "not valid YAML"),
    "not_a_mapping": ("- just\n- a list\n", "expected a mapping with 'source' and 'tables'"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ENTRIES))
def test_a_bad_entry_names_file_table_and_field_and_the_other_sources_load(tmp_path, kind):
    text, expected = BAD_ENTRIES[kind]
    folder = write(tmp_path / "sources", {"shop.yaml": GOOD, "broken.yaml": text, "crm.yaml": OTHER})
    reg = load_registry([folder])
    assert [t.identifier for t in reg.tables] == ["crm.contacts", "shop.orders"]
    (error,) = reg.errors
    assert error.path == str(folder / "broken.yaml")
    assert error.message.startswith(f"{folder / 'broken.yaml'}: ")
    assert expected in error.message
    with pytest.raises(RegistryError, match="broken.yaml"):
        load_registry([folder], strict=True)
    with pytest.raises(RegistryError, match="broken.yaml"):
        load_source_file(folder / "broken.yaml")


def test_the_source_of_a_broken_file_is_known_when_the_file_says_it(tmp_path):
    folder = write(tmp_path / "sources", {
        "a.yaml": table_entry("colour: red"),  # valid YAML, invalid entry
        "b.yaml": "source: syntax_error\ntables: [\n",  # YAML error: the source line still reads
        "c.yaml": "tables: [\n",  # no source at all
    })
    reg = load_registry([folder])
    assert [e.source for e in reg.errors] == ["broken", "syntax_error", None]
    assert reg.error_for_source("syntax_error").path == str(folder / "b.yaml")
    assert "not valid YAML" in reg.error_for_source("syntax_error").message
    assert reg.error_for_source("broken").message == reg.errors[0].message
    assert reg.error_for_source("shop") is None


def test_every_error_of_a_file_is_reported_at_once(tmp_path):
    text = table_entry("colour: red\nrefresh: '* * *'", primary_key="[nope]")
    reg = load_registry([write(tmp_path / "s", {"broken.yaml": text})])
    message = reg.errors[0].message
    assert "field colour" in message and "field refresh" in message and "field primary_key" in message


# ---------------------------------------------------------------------------------------------
# sequence_by: only types the merge orders by kind


@pytest.mark.parametrize("type_", ["float", "double", "boolean", "binary"])
def test_sequence_by_of_an_unorderable_type_is_refused(tmp_path, type_):
    text = table_entry("sequence_by: seq", columns=f"[{{name: id, type: long}}, {{name: seq, type: {type_}}}]")
    reg = load_registry([write(tmp_path / "s", {"broken.yaml": text, "shop.yaml": GOOD})])
    assert [t.identifier for t in reg.tables] == ["shop.orders"]
    message = reg.errors[0].message
    assert f"broken.yaml: table 'items': field sequence_by: column 'seq' has type {type_}" in message
    assert "int, long, decimal(p,s), string (holding an integer or decimal number), date, timestamp or timestamptz" in message


@pytest.mark.parametrize("type_", ["int", "long", '"decimal(38,0)"', '"decimal(12, 2)"', "string", "date", "timestamp", "timestamptz"])
def test_sequence_by_of_an_orderable_type_loads(tmp_path, type_):
    text = table_entry("sequence_by: seq", columns=f"[{{name: id, type: long}}, {{name: seq, type: {type_}}}]")
    reg = load_registry([write(tmp_path / "s", {"ok.yaml": text})])
    assert reg.errors == ()
    assert reg.get("broken", "items").sequence_by == "seq"


def test_sequence_by_without_declared_columns_is_checked_against_the_files(tmp_path):
    # No column list: the type is only known from the landed files (the merge refuses it there).
    text = "source: shop\ntables:\n  - {name: items, schema: app, primary_key: [id], sequence_by: AR_H_CHANGE_SEQ}\n"
    reg = load_registry([write(tmp_path / "s", {"shop.yaml": text})])
    assert reg.errors == () and reg.tables[0].sequence_by == "AR_H_CHANGE_SEQ"


# ---------------------------------------------------------------------------------------------
# Across files: a duplicate is an error of the later file


def test_a_table_declared_twice_is_an_error_of_the_later_file(tmp_path):
    first = write(tmp_path / "first", {"shop.yaml": GOOD})
    second = write(tmp_path / "second", {"shop_copy.yaml": GOOD + "  - {name: refunds, schema: app, primary_key: [id]}\n"})
    reg = load_registry([first, second])
    assert [t.identifier for t in reg.tables] == ["shop.orders"]  # nothing of the later file, not even refunds
    (error,) = reg.errors
    assert error.path == str(second / "shop_copy.yaml") and error.source == "shop"
    assert f"{second / 'shop_copy.yaml'}: table 'orders': field name: shop.orders is already declared in {first / 'shop.yaml'}" in error.message


def test_a_table_declared_twice_in_one_file_is_an_error(tmp_path):
    text = GOOD + "  - {name: orders, schema: app, source_table: orders_v2, primary_key: [id]}\n"
    reg = load_registry([write(tmp_path / "s", {"shop.yaml": text, "crm.yaml": OTHER})])
    assert [t.identifier for t in reg.tables] == ["crm.contacts"]
    assert "table 'orders': field name: shop.orders is already declared in" in reg.errors[0].message


def test_a_landing_folder_used_twice_is_an_error_of_the_later_file(tmp_path):
    later = "source: shop\ntables:\n  - {name: orders_copy, schema: app, source_table: orders, primary_key: [id]}\n"
    folder = write(tmp_path / "s", {"a_shop.yaml": GOOD, "b_shop_extra.yaml": later})
    reg = load_registry([folder])
    assert [t.identifier for t in reg.tables] == ["shop.orders"]
    (error,) = reg.errors
    assert error.path == str(folder / "b_shop_extra.yaml")
    assert "table 'orders_copy': field source_table: landing folder shop/app/orders/ is already used by shop.orders" in error.message


def test_the_same_directory_listed_twice_declares_nothing_twice(tmp_path):
    folder = write(tmp_path / "s", {"shop.yaml": GOOD})
    reg = load_registry([folder, tmp_path / "s" / ".." / "s"])
    assert reg.errors == () and [t.identifier for t in reg.tables] == ["shop.orders"]


def test_a_missing_sources_directory_is_an_error_and_the_rest_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKE_SOURCES_DIR", os.pathsep.join([str(tmp_path / "nowhere"), str(write(tmp_path / "s", {"shop.yaml": GOOD}))]))
    reg = load_registry()
    assert {t.identifier for t in reg.tables} == {"shop.orders"}  # the user's own sources, not the demo's
    assert [e.path for e in reg.errors] == [str(tmp_path / "nowhere")]
    assert "sources directory does not exist" in reg.errors[0].message


def test_the_builtin_registry_is_valid():
    reg = load_registry([BUILTIN_SOURCES_DIR], strict=True)
    assert len(reg.by_source()["travel"]) == 7 and reg.errors == ()


def test_the_builtin_registry_holds_the_demos_second_source():
    reg = load_registry([BUILTIN_SOURCES_DIR], strict=True)
    got = {t.identifier: (t.format, t.load, t.archive) for t in reg.by_source()["loyalty"]}
    assert got == {"loyalty.members": ("debezium", "cdc", False), "loyalty.hotel_rates": ("csv", "snapshot", True),
                   "loyalty.points_events": ("jsonl", "events", False)}
    events = reg.get("loyalty", "points_events")
    assert (events.mode, events.quarantine_identifier, events.quarantine_max_rate) == ("history", "loyalty.points_events__errors", 0.1)
    assert events.events is not None and (events.events.time_field, events.events.required) == ("event_time", ("customer_id", "kind", "points"))
    assert [(p.column, p.transform) for p in events.partition_by] == [("event_time", "day")]


# ---------------------------------------------------------------------------------------------
# Cron expressions: the registry accepts nothing Dagster's scheduler refuses


@pytest.mark.parametrize("cron", [
    "*/10 * * * *", "0 7 * * 1-5", "0 7 * * MON-FRI", "0 0 1 jan *", "0,30 6-18 * * *", "5/15 * * * *",
    "0 0 29 2 *", "0 0 ? * 0", "0 0 * * 7",
])
def test_valid_cron_expressions_load_and_dagster_agrees(cron):
    from dagster._utils.schedules import is_valid_cron_string

    assert check_cron(cron) == cron and is_valid_cron_string(cron)


@pytest.mark.parametrize("cron", [
    "61 * * * *", "0 24 * * *", "0 0 0 * *", "0 0 * 13 *", "0 0 * * 8", "*/0 * * * *", "0 0 30 2 *",
    "0 0 31 feb *", "* * * *", "0 0 * * funday", "every 10 minutes",
])
def test_invalid_cron_expressions_are_refused(cron):
    from dagster._utils.schedules import is_valid_cron_string

    assert not is_valid_cron_string(cron)
    with pytest.raises(ValueError, match="refresh"):
        check_cron(cron)


# ---------------------------------------------------------------------------------------------
# TableConfig: a validated, frozen model with the old attribute names


def make_config(**overrides) -> TableConfig:
    fields = dict(
        source="shop", name="items", schema="app", source_table="items", primary_key=("id",), sequence_by="seq",
        columns=(ColumnSpec(name="id", type="long"), ColumnSpec(name="seq", type="long")),
        partition_by=(PartitionField(column="id", transform="bucket[4]"),), pii=(), format="parquet",
        csv=CsvOptions(), mode="current", engine="spark", refresh="on_arrival", tombstone_retention_days=7,
        quarantine_max_rate=0.5, owners=(), description=None, config_file="<test>",
    )
    return TableConfig(**(fields | overrides))


def test_table_config_built_in_code_has_the_registry_properties():
    t = make_config()
    assert (t.identifier, t.asset_key_path, t.landing_prefix, t.schema) == (
        "shop.items", ["source_aligned", "shop", "items"], "shop/app/items/", "app")
    with pytest.raises(ValidationError):
        t.mode = "history"  # frozen
    assert t.model_copy(update={"engine": "inprocess"}).engine == "inprocess"


def test_table_config_round_trips_through_json_for_the_spark_job():
    t = make_config(csv=CsvOptions(header=True, null_marker="NULL"), format="csv", pii=("id",), owners=("a@b",))
    d = json.loads(json.dumps(t.to_json_dict()))
    assert d["schema"] == "app" and d["columns"][0] == {"name": "id", "type": "long", "description": None}
    back = TableConfig.from_json_dict(d)
    assert back == t and hash(back) == hash(t) and isinstance(back.primary_key, tuple)


@pytest.mark.parametrize("overrides, field", [
    ({"mode": "upsert"}, "mode"),
    ({"name": "Items"}, "name"),
    ({"source": "bad-source"}, "source"),
    ({"primary_key": ("nope",)}, "primary_key"),
    ({"sequence_by": "seq", "columns": (ColumnSpec(name="id", type="long"), ColumnSpec(name="seq", type="double"))}, "sequence_by"),
    ({"refresh": "61 * * * *"}, "refresh"),
    ({"quarantine_max_rate": 2.0}, "quarantine_max_rate"),
    ({"colour": "red"}, "colour"),
])
def test_table_config_obeys_the_registry_rules(overrides, field):
    with pytest.raises(ValidationError) as e:
        make_config(**overrides)
    assert field in {str(err["loc"][0]) for err in e.value.errors()}


# ---------------------------------------------------------------------------------------------
# The parsed-file cache


def _count_parses(monkeypatch) -> list[Path]:
    parsed: list[Path] = []
    real = registry_module._parse_source_file

    def counting(path, text):
        parsed.append(path)
        return real(path, text)

    monkeypatch.setattr(registry_module, "_parse_source_file", counting)
    return parsed


def test_unchanged_files_are_served_from_the_cache(tmp_path, monkeypatch):
    folder = write(tmp_path / "s", {"shop.yaml": GOOD, "crm.yaml": OTHER, "broken.yaml": table_entry("colour: red")})
    first = load_registry([folder])
    assert (tmp_path / "lake" / "cache" / "registry.pickle").is_file()
    parsed = _count_parses(monkeypatch)
    second = load_registry([folder])
    assert parsed == []  # nothing parsed again
    assert second == first and second.errors and second.errors == first.errors  # errors are cached too


def test_an_edit_keeping_size_and_mtime_is_never_served_stale(tmp_path, monkeypatch):
    folder = write(tmp_path / "s", {"shop.yaml": GOOD, "crm.yaml": OTHER})
    path = folder / "shop.yaml"
    assert load_registry([folder]).get("shop", "orders").primary_key == ("order_id",)
    stat = path.stat()
    path.write_text(path.read_text().replace("primary_key: [order_id]", "primary_key: [total]   "))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime (cp -p, git, rsync)
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    parsed = _count_parses(monkeypatch)
    reg = load_registry([folder])
    assert parsed == [path]  # only the edited file is parsed again
    assert reg.get("shop", "orders").primary_key == ("total",)


def test_a_file_that_becomes_invalid_or_is_removed_is_seen(tmp_path):
    folder = write(tmp_path / "s", {"shop.yaml": GOOD, "crm.yaml": OTHER})
    load_registry([folder])
    (folder / "shop.yaml").write_text(GOOD.replace("type: long}", "type: nope}", 1))
    reg = load_registry([folder])
    assert [t.identifier for t in reg.tables] == ["crm.contacts"] and "unknown column type 'nope'" in reg.errors[0].message
    (folder / "crm.yaml").unlink()
    assert load_registry([folder]).tables == ()


def test_a_cache_from_other_code_or_a_corrupt_cache_is_ignored(tmp_path, monkeypatch):
    folder = write(tmp_path / "s", {"shop.yaml": GOOD})
    expected = load_registry([folder], cache=False)
    cache = tmp_path / "lake" / "cache" / "registry.pickle"
    load_registry([folder])
    # A cache written by a different registry module (new rules) is not trusted.
    data = pickle.loads(cache.read_bytes())
    monkeypatch.setattr(registry_module, "_code_version", lambda: data["version"] + "-changed")
    parsed = _count_parses(monkeypatch)
    assert load_registry([folder]) == expected and parsed == [folder / "shop.yaml"]
    cache.write_bytes(b"\x80\x05not a pickle")
    assert load_registry([folder]) == expected


def test_no_cache_when_asked(tmp_path):
    folder = write(tmp_path / "s", {"shop.yaml": GOOD})
    load_registry([folder], cache=False)
    assert not (tmp_path / "lake" / "cache").exists()
    own = tmp_path / "elsewhere" / "reg.pickle"
    load_registry([folder], cache=own)
    assert own.is_file()


def test_the_registry_imports_no_dagster():
    code = "import sys, lake_assets.core.registry; print(any(m.split('.')[0] == 'dagster' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.strip() == "False"
