"""The code location: a snapshot of the demo registry's asset specs (what a reviewer sees change in a
diff), the refresh schedules evaluated against a ledger, a broken registry file shown in the UI
while every other source loads, and definitions built only when Dagster asks for them."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest

from demo.dms_writer import cdc_file_name, load_file_name, write_dms_file
from lake_assets.core.arrivals import record_arrivals
from lake_assets.core.registry import BUILTIN_SOURCES_DIR, load_registry
from lake_assets.core.settings import current_settings
from lake_assets.definitions import REGISTRY_ERRORS_GROUP, build_definitions
from resources.lake import LakeResource
from tests.lakehelpers import make_lake

REPO = Path(__file__).resolve().parents[1]
CHECKS = ["freshness", "ledger_reconciled", "quarantine_rate", "table_health", "unique_primary_key"]
OWNERS = ["data-platform@example.com"]
TRAVEL = "lake_assets/sources/travel.yaml"
LAKE_COLUMNS = "_lake_seq string, _lake_op string, _lake_batch_id string, _lake_ingested_at timestamptz"


def _spec(table, schema, folder, mode, pk, seq, description, columns, source="travel"):
    lake_columns = LAKE_COLUMNS + {"history": ", _lake_file string, _lake_row long",
                                   "scd2": ", _lake_from_seq string, _lake_end_seq string, _valid_from long, _valid_to long, "
                                           "_is_current boolean"}.get(mode, "")
    return {
        "group": source, "kinds": ["duckdb", "iceberg"], "op": f"merge_{source}", "pools": [f"merge_{source}"],
        "owners": OWNERS, "checks": CHECKS, "tags": {"lake/engine": "inprocess", "lake/mode": mode},
        "description": description, "deps": [f"landing/{source}/{table}"],
        "metadata": {"iceberg_table": f"{source}.{table}", "primary_key": pk, "sequence_by": seq,
                     "landing_prefix": f"{source}/{schema}/{folder}/", "registry_file": f"lake_assets/sources/{source}.yaml",
                     "dagster/table_name": f"{source}.{table}", "dagster/column_schema": f"{columns}, {lake_columns}"},
    }


def _landing(table, schema, folder, fmt="parquet", source="travel", layout="AWS DMS layout", kind=None):
    return {
        "group": source, "kinds": [kind or fmt], "op": f"observe_landing_{source}", "pools": [], "owners": OWNERS, "checks": [],
        "tags": {}, "deps": [],
        "description": f"Files landed for {source}.{table} under {source}/{schema}/{folder}/ ({layout}), as the ledger records them",
        "metadata": {"format": fmt, "landing_prefix": f"{source}/{schema}/{folder}/"},
    }


# The demo registry as the asset catalog shows it. Change it together with travel.yaml or the factory.
DEMO_SNAPSHOT = {
    "landing/travel/booking_status_history": _landing("booking_status_history", "booking", "bookings_audit"),
    "landing/travel/bookings": _landing("bookings", "booking", "bookings"),
    "landing/travel/customer_versions": _landing("customer_versions", "booking", "customers_versions"),
    "landing/travel/customers": _landing("customers", "booking", "customers"),
    "landing/travel/hotels": _landing("hotels", "booking", "hotels"),
    "landing/travel/payments": _landing("payments", "billing", "payments", "csv"),
    "landing/travel/promotions": _landing("promotions", "booking", "promotions"),
    "landing/unclaimed_folders": {
        "group": "landing", "kinds": [], "op": "observe_unclaimed_landing_folders", "pools": [], "owners": [],
        "checks": ["no_unclaimed_folders"], "tags": {}, "deps": [], "metadata": {},
        "description": "Landing folders holding files that no registry table claims: they are recorded (as failed, unroutable) "
                       "but not ingested. Each row names the `python -m lake_assets.discover` command that drafts its registry entry.",
    },
    "source_aligned/travel/booking_status_history": _spec(
        "booking_status_history", "booking", "bookings_audit", "history", "audit_id", "(file, row)",
        "Every status change of a booking (append-only history of the bookings_audit table).",
        "audit_id long, booking_id long, old_status string, new_status string, changed_at timestamp"),
    "source_aligned/travel/bookings": _spec(
        "bookings", "booking", "bookings", "current", "booking_id", "change_seq", "Hotel bookings (current state).",
        "change_seq long, booking_id long, customer_id long, hotel_id long, promotion_id long, check_in date, check_out date, "
        "nights int, amount decimal(12, 2), currency string, status string, created_at timestamp, updated_at timestamp"),
    "source_aligned/travel/customer_versions": _spec(
        "customer_versions", "booking", "customers_versions", "scd2", "customer_id", "change_seq",
        "Customer versions (type-2 history): a point-in-time lookup is _valid_from <= change_seq < _valid_to.",
        "change_seq long, customer_id long, email string, country string, marketing_opt_in boolean, created_at timestamp, "
        "updated_at timestamp"),
    "source_aligned/travel/customers": _spec(
        "customers", "booking", "customers", "current", "customer_id", "change_seq", "Customer accounts (current state).",
        "change_seq long, customer_id long, first_name string, last_name string, email string, phone string, "
        "date_of_birth date, country string, marketing_opt_in boolean, created_at timestamp, updated_at timestamp"),
    "source_aligned/travel/hotels": _spec(
        "hotels", "booking", "hotels", "current", "hotel_id", "(file, row)", "Hotels on sale (current state).",
        "hotel_id long, name string, city string, country string, region string, stars int, rooms int, created_at timestamp"),
    "source_aligned/travel/payments": _spec(
        "payments", "billing", "payments", "current", "payment_id", "(file, row)", "Payments for bookings (current state).",
        "payment_id long, booking_id long, amount decimal(12, 2), currency string, method string, card_number string, "
        "region string, status string, paid_at timestamp"),
    "source_aligned/travel/promotions": _spec(
        "promotions", "booking", "promotions", "current", "promotion_id", "(file, row)", "Discount codes (current state).",
        "promotion_id long, code string, discount_pct decimal(5, 2), region string, valid_from date, valid_to date"),
}
# The demo's second source: Debezium members, a daily snapshot drop and a Firehose event stream. "(file, row)" is what the
# factory shows for any table without sequence_by, though a Debezium table orders by source position.
DEMO_SNAPSHOT |= {
    "landing/loyalty/hotel_rates": _landing("hotel_rates", "partners", "hotel_rates", "csv", "loyalty", "csv files, load snapshot"),
    "landing/loyalty/members": _landing("members", "public", "loyalty.public.members", "debezium", "loyalty", "debezium files, load cdc",
                                        kind="kafka"),
    "source_aligned/loyalty/hotel_rates": _spec(
        "hotel_rates", "partners", "hotel_rates", "current", "hotel_id, room_type", "(file, row)",
        "Partner hotels' member rates (current rate sheet), one row per hotel and room type.",
        "hotel_id long, room_type string, nightly_rate decimal(10, 2), currency string, member_discount_pct decimal(5, 2), "
        "points_per_night int", "loyalty"),
    "source_aligned/loyalty/members": _spec(
        "members", "public", "loyalty.public.members", "current", "customer_id", "(file, row)",
        "Loyalty members (current state): a member who leaves is deleted, one who rejoins is a new row.",
        "customer_id long, member_number string, tier string, points_balance long, lifetime_points long, "
        "enrolled_at timestamptz, updated_at timestamptz", "loyalty"),
    "landing/loyalty/points_events": _landing("points_events", "firehose", "points_events", "jsonl", "loyalty", "jsonl files, load events",
                                              kind="json"),
    "source_aligned/loyalty/points_events": _spec(
        "points_events", "firehose", "points_events", "history", "event_id", "(file, row)",
        "Points earned (at a booking, or the welcome bonus) and redeemed by loyalty members, one row per event.",
        "event_id string, customer_id long, event_time timestamptz, kind string, points long, booking_id long", "loyalty"),
}


def _value(v):
    v = getattr(v, "value", v)
    if isinstance(v, dg.TableSchema):  # as the snapshot spells it: "name type, ..."
        return ", ".join(f"{c.name} {c.type}" for c in v.columns)
    return v


def snapshot(defs: dg.Definitions) -> dict[str, dict]:
    graph = defs.resolve_asset_graph()
    out = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        metadata = {k: _value(v) for k, v in node.metadata.items()}
        if "registry_file" in metadata:
            metadata["registry_file"] = Path(metadata["registry_file"]).relative_to(REPO).as_posix()
        out[key.to_user_string()] = {
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "op": node.assets_def.node_def.name,
            "pools": sorted(node.pools),
            "owners": list(node.owners),
            "checks": sorted(c.name for c in node.check_keys),
            "tags": {k: v for k, v in node.tags.items() if not k.startswith("dagster/kind/")},
            "description": node.description,
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "metadata": metadata,
        }
    return out


@pytest.fixture(autouse=True)
def _lake_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKE_HOME", str(tmp_path / "lake"))
    monkeypatch.setenv("LAKE_ENV", "local")
    monkeypatch.delenv("LAKE_SOURCES_DIR", raising=False)


def test_demo_registry_asset_specs_snapshot():
    defs = build_definitions(load_registry([BUILTIN_SOURCES_DIR]), with_dbt=False)
    assert snapshot(defs) == DEMO_SNAPSHOT
    graph = defs.resolve_asset_graph()
    tables = [dg.AssetKey(k.split("/")) for k in DEMO_SNAPSHOT if k.startswith("source_aligned/")]
    landing = [dg.AssetKey(k.split("/")) for k in DEMO_SNAPSHOT if k.startswith(("landing/travel/", "landing/loyalty/"))]
    assert graph.get(dg.AssetKey(["landing", "unclaimed_folders"])).is_observable  # one for the whole landing zone
    assert all(graph.get(k).is_materializable for k in tables)
    assert all(graph.get(k).is_observable and not graph.get(k).is_materializable for k in landing)
    ops = {graph.get(k).assets_def for k in tables}
    assert sorted(op.node_def.name for op in ops) == ["merge_loyalty", "merge_travel"]
    assert all(op.can_subset for op in ops)  # one op per source, any table materializable alone
    observers = {graph.get(k).assets_def for k in landing}
    assert len(observers) == 2 and all(observe.can_subset for observe in observers)  # one per source
    assert [s.name for s in defs.sensors] == ["landing_sensor"]
    # on_arrival tables: no refresh schedule; the demo sources' nightly maintenance
    assert [(s.name, s.cron_schedule) for s in defs.schedules] == [("maintain_loyalty_0_3", "0 3 * * *"), ("maintain_travel_0_3", "0 3 * * *")]
    assert sorted(defs.resources) == ["lake"]  # no table of the demo asks for Spark
    assert [j.name for j in defs.jobs] == ["ingest_loyalty", "ingest_travel", "maintain_loyalty", "maintain_travel"]
    (sensor,) = defs.sensors
    assert [t.job_name for t in sensor.targets] == ["ingest_loyalty", "ingest_travel"]  # named jobs, never an anonymous one


# ---------------------------------------------------------------------------------------------
# Refresh schedules

SCHEDULED = """
source: shop
defaults: {refresh: "*/10 * * * *"}
tables:
  - name: orders
    schema: app
    primary_key: [order_id]
    columns: [{name: order_id, type: long}, {name: total, type: double}]
  - name: refunds
    schema: app
    primary_key: [refund_id]
    columns: [{name: refund_id, type: long}, {name: amount, type: double}]
  - name: daily_rates
    schema: app
    primary_key: [rate_id]
    refresh: "0 6 * * MON-FRI"
    columns: [{name: rate_id, type: long}, {name: rate, type: double}]
  - name: events
    schema: app
    primary_key: [event_id]
    refresh: on_arrival
    columns: [{name: event_id, type: long}]
"""


def test_refresh_schedules_request_only_tables_with_pending_files(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKE_HOME", str(tmp_path))
    lake = make_lake(tmp_path, {"shop": SCHEDULED})
    defs = build_definitions(lake.registry, with_dbt=False)
    schedules = {s.name: s for s in defs.schedules if s.name.startswith("refresh_")}  # maintain_*: tests/test_maintenance.py
    assert {n: s.cron_schedule for n, s in schedules.items()} == {
        "refresh_shop_0_6_mon_fri": "0 6 * * MON-FRI", "refresh_shop_10": "*/10 * * * *"}  # none for on_arrival
    assert {s.job_name for s in schedules.values()} == {"ingest_shop"}  # the source's named job

    write_dms_file(lake.landing / "shop" / "app" / "orders" / load_file_name(1), [{"order_id": 1, "total": 9.5}],
                   [("order_id", "long"), ("total", "double")], cdc=False)
    write_dms_file(lake.landing / "shop" / "app" / "events" / cdc_file_name(dt.datetime(2026, 11, 21, 10)),
                   [{"Op": "I", "event_id": 1}], [("event_id", "long")], cdc=True)
    record_arrivals(lake.env.landing, lake.env.ledger, lake.registry)

    with dg.DagsterInstance.ephemeral() as instance:
        def tick(name):
            return schedules[name](dg.build_schedule_context(instance=instance, resources={"lake": LakeResource()}))

        ten = tick("refresh_shop_10")
        assert isinstance(ten, dg.RunRequest)
        assert ten.asset_selection == [dg.AssetKey(["source_aligned", "shop", "orders"])]  # refunds has nothing pending
        daily = tick("refresh_shop_0_6_mon_fri")
        assert isinstance(daily, dg.SkipReason) and "no pending files" in daily.skip_message


# ---------------------------------------------------------------------------------------------
# A broken registry file: the other sources load, the error is shown

BROKEN = """
source: crm
tables:
  - name: contacts
    schema: dbo
    primary_key: [contact_id]
    sequence_by: score
    columns: [{name: contact_id, type: long}, {name: score, type: double}]
"""

SHOP = """
source: shop
tables:
  - name: orders
    schema: app
    primary_key: [order_id]
    refresh: "*/10 * * * *"
    columns: [{name: order_id, type: long}]
"""


def test_a_broken_registry_file_leaves_the_other_sources_and_shows_its_error(tmp_path, caplog):
    lake = make_lake(tmp_path, {"shop": SHOP, "crm": BROKEN}, builtin=True)
    with caplog.at_level(logging.ERROR, logger="lake_assets.definitions"):
        defs = build_definitions(lake.registry, with_dbt=False)
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"source_aligned/shop/orders", *DEMO_SNAPSHOT} <= keys
    assert not any(k.startswith("source_aligned/crm/") for k in keys)
    assert [s.name for s in defs.schedules if s.name.startswith("refresh_")] == ["refresh_shop_10"]

    node = graph.get(dg.AssetKey(["registry", "crm"]))
    assert node.group_name == REGISTRY_ERRORS_GROUP and not node.is_materializable and not node.is_executable
    crm_file = str(tmp_path / "sources" / "crm.yaml")
    message = f"{crm_file}: table 'contacts': field sequence_by: column 'score' has type double"
    assert message in node.description
    assert node.metadata["registry_file"].value == crm_file
    assert node.metadata["source"].value == "crm"
    assert message in node.metadata["error"].value
    assert [k for k in keys if k.startswith("registry/")] == ["registry/crm"]
    assert any(r.levelno == logging.ERROR and message in r.getMessage() for r in caplog.records)


def test_broken_files_with_the_same_name_in_two_directories_get_two_keys(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "crm.yaml").write_text("source: crm\ntables: [\n")
    defs = build_definitions(load_registry([a, b]), with_dbt=False)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {"registry/crm", "registry/crm_2", "landing/unclaimed_folders"}


def _run(code: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO), **env}, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_importing_the_code_location_builds_nothing(tmp_path):
    """workspace.yaml points at a @definitions function: importing the module loads no registry and
    no dbt; Dagster calls `defs` when it loads the code location."""
    home = tmp_path / "home"
    out = _run("""
        import sys
        from lake_assets import definitions
        print(type(definitions.defs).__name__, 'dagster_dbt' in sys.modules, 'lake_assets.dbt_assets' in sys.modules)
    """, {"LAKE_HOME": str(home)})
    assert out == "LazyDefinitions False False"
    assert not (home / "cache").exists()  # the registry was not even read
    assert "attribute: defs" in (REPO / "workspace.yaml").read_text()


def test_the_ingest_command_never_touches_dbt(tmp_path):
    home = tmp_path / "home"
    out = _run("""
        import sys
        from lake_assets.ingest import main
        code = main([])
        print(code, 'dagster_dbt' in sys.modules, 'lake_assets.dbt_assets' in sys.modules)
    """, {"LAKE_HOME": str(home), "DAGSTER_HOME": ""})
    assert out.splitlines()[-1] == "0 False False"  # no dagster-dbt import, so no manifest prepared
    assert "0 new files recorded" in out


def test_the_code_location_loads_with_a_broken_registry_file(tmp_path, monkeypatch):
    """What Dagster loads through workspace.yaml (dbt layers included) with one file broken."""
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "crm.yaml").write_text(textwrap.dedent(BROKEN))
    (sources / "shop.yaml").write_text(textwrap.dedent(SHOP))
    monkeypatch.setenv("LAKE_SOURCES_DIR", str(sources))
    monkeypatch.setenv("LAKE_BUILTIN_SOURCES", "true")  # and the demo's, which the dbt models read
    # The code location generates models/sources/shop.yml: into a copy, not this checkout's project.
    from lake_assets import dbt_assets

    project = tmp_path / "dbt_project"
    shutil.copytree(dbt_assets.DBT_PROJECT_DIR, project, ignore=shutil.ignore_patterns("logs", "dbt_packages"))
    monkeypatch.setattr(dbt_assets, "DBT_PROJECT_DIR", project)
    from lake_assets.definitions import code_location, defs

    code_location.cache_clear()  # built once per process; this test wants its own registry
    loaded = defs()
    assert defs() is loaded
    dg.Definitions.validate_loadable(loaded)
    graph = loaded.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"source_aligned/shop/orders", "registry/crm", "aggregated/promotion_uptake", *DEMO_SNAPSHOT} <= keys
    assert graph.get(dg.AssetKey(["registry", "crm"])).group_name == REGISTRY_ERRORS_GROUP


def test_a_lake_holds_only_its_own_sources_unless_asked(tmp_path, monkeypatch):
    """LAKE_SOURCES_DIR replaces the built-in demo source; the dbt layers, built on the demo's
    tables, are then absent (and say why) instead of failing the code location."""
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "shop.yaml").write_text(textwrap.dedent(SHOP))
    monkeypatch.setenv("LAKE_SOURCES_DIR", str(sources))
    assert {t.source for t in load_registry().tables} == {"shop"}
    defs = build_definitions()
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {"landing/shop/orders", "source_aligned/shop/orders", "registry/dbt_layers", "landing/unclaimed_folders"}
    node = defs.resolve_asset_graph().get(dg.AssetKey(["registry", "dbt_layers"]))
    assert "travel" in node.description and node.group_name == REGISTRY_ERRORS_GROUP
    monkeypatch.setenv("LAKE_BUILTIN_SOURCES", "true")
    current_settings.cache_clear()
    assert {t.source for t in load_registry().tables} == {"loyalty", "shop", "travel"}
    monkeypatch.delenv("LAKE_SOURCES_DIR")
    monkeypatch.delenv("LAKE_BUILTIN_SOURCES")
    current_settings.cache_clear()
    assert {t.source for t in load_registry().tables} == {"loyalty", "travel"}  # no directory given: the demo's


def test_the_instance_config_is_where_dagster_reads_it(tmp_path, monkeypatch):
    """`make ui` runs dagster dev from $DAGSTER_HOME with the repository's dagster.yaml written there
    (Dagster warns about a dagster.yaml in any other current folder); the ingest command opens the
    same instance, and a user's own dagster.yaml there is left alone."""
    from lake_assets.dev import dev_command
    from lake_assets.instance import lake_instance, prepare_dagster_home

    home = tmp_path / "lake"
    monkeypatch.setenv("LAKE_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", "")  # unset for the lake's settings; restored after what lake_instance sets
    current_settings.cache_clear()
    argv, env, cwd = dev_command("127.0.0.1", 3999)
    assert cwd == home / "dagster" and env["DAGSTER_HOME"] == str(cwd)
    assert (cwd / "dagster.yaml").read_text() == (REPO / "dagster.yaml").read_text()
    assert argv[1:] == ["dev", "-h", "127.0.0.1", "-p", "3999", "-w", str(REPO / "workspace.yaml")]
    with lake_instance() as instance:
        assert Path(instance.root_directory) == cwd
        assert type(instance.run_launcher).__name__ == "WarmProcessRunLauncher"
    (cwd / "dagster.yaml").write_text("telemetry: {enabled: false}\n")  # the user's own
    prepare_dagster_home()
    assert (cwd / "dagster.yaml").read_text() == "telemetry: {enabled: false}\n"
    assert "location_name: lake" in (REPO / "workspace.yaml").read_text()


def test_dagster_loads_the_workspace_once_with_a_broken_file(tmp_path):
    """`dagster definitions validate -w workspace.yaml`: the location loads with the broken file's
    error logged, and is built once although Dagster's loader calls `defs` twice."""
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "crm.yaml").write_text(textwrap.dedent(BROKEN))
    env = {**os.environ, "PYTHONPATH": str(REPO), "LAKE_SOURCES_DIR": str(sources), "LAKE_HOME": str(tmp_path / "lake"),
           "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    (tmp_path / "dagster_home").mkdir()
    out = subprocess.run([str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    logged = [line for line in out.stderr.splitlines() if line.startswith("registry file ")]
    assert logged == [f"registry file {sources / 'crm.yaml'} is invalid; its tables are not loaded, the other sources are:"]
    assert "All code locations passed validation" in out.stdout + out.stderr
