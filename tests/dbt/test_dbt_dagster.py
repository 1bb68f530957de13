"""The dbt layers in Dagster: keys and lineage from every source-aligned table through aggregated
models to consumer datasets, dbt tests as asset checks, declarative automation that refreshes
models after their parents change, and a real in-process materialization against a temporary lake."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from lake_assets.core import governance
from lake_assets.core.registry import load_registry
from lake_assets.core.settings import current_settings
from lake_assets.dbt_assets import dbt_definitions, dbt_executable, dbt_resource
from resources.lake import LakeResource

from dbt_lake_fixture import create_source_tables, lake_catalog

DEMO_TABLES = load_registry().tables  # travel and loyalty
SOURCE_KEYS = [dg.AssetKey(t.asset_key_path) for t in DEMO_TABLES]


@pytest.fixture(scope="module")
def defs(tmp_path_factory) -> dg.Definitions:
    mp = pytest.MonkeyPatch()
    mp.setenv("LAKE_ENV", "local")
    mp.setenv("LAKE_HOME", str(tmp_path_factory.mktemp("defs_lake")))
    try:
        yield dbt_definitions()
    finally:
        mp.undo()


def source_stubs() -> list[dg.AssetsDefinition]:
    """Stand-ins for the source-aligned assets another module defines with the same keys."""

    def stub(key: dg.AssetKey) -> dg.AssetsDefinition:
        @dg.asset(key=key, group_name=key.path[1])  # the source, as the source-aligned assets group
        def _source_aligned() -> None:
            return None

        return _source_aligned

    return [stub(k) for k in SOURCE_KEYS]


def test_definitions_load_and_keys_follow_the_layers(defs):
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k for k in graph.get_all_asset_keys() if graph.get(k).is_materializable}
    policy = governance.load_validated_policy()
    consumer_keys = {dg.AssetKey(["consumer", c, d]) for c, con in policy.consumers.items() for d in con.datasets}
    aggregated_keys = {k for k in keys if k.path[0] == "aggregated"}
    assert keys == aggregated_keys | consumer_keys
    assert {k.path[1] for k in aggregated_keys} == {
        "customer_lifetime_value", "daily_hotel_bookings", "loyalty_points_daily", "loyalty_tier_bookings", "payment_transactions",
        "promotion_uptake"
    }
    for key in keys:
        node = graph.get(key)
        assert node.group_name == ("aggregated" if key.path[0] == "aggregated" else f"consumer_{key.path[1]}")
        assert {"dbt", "iceberg"} <= set(node.kinds)
        assert node.automation_condition is not None
    for key in consumer_keys:
        assert graph.get(key).parent_keys <= aggregated_keys and graph.get(key).parent_keys
    for key in aggregated_keys:
        assert graph.get(key).parent_keys <= set(SOURCE_KEYS)


def test_every_source_table_reaches_a_consumer_through_an_aggregated_model(defs):
    graph = defs.resolve_asset_graph()
    # customer_versions (scd2) is the demo's point-in-time table: no consumer model reads it yet
    read = [k for k, t in zip(SOURCE_KEYS, DEMO_TABLES) if t.mode != "scd2"]
    assert len(read) == len(SOURCE_KEYS) - 1
    for source in read:
        children = graph.get(source).child_keys
        assert children and all(c.path[0] == "aggregated" for c in children), source
        assert any(g.path[0] == "consumer" for c in children for g in graph.get(c).child_keys), source


def test_dbt_tests_are_asset_checks(defs):
    graph = defs.resolve_asset_graph()
    checks = graph.asset_check_keys
    assert len(checks) >= 30
    by_asset = {}
    for check in checks:
        by_asset.setdefault(check.asset_key, []).append(check.name)
    for key in graph.get_all_asset_keys():
        if graph.get(key).is_materializable:
            assert any(name.startswith("lake_exact_columns") for name in by_asset[key]), key
    assert any(n.startswith("lake_row_filter") for n in by_asset[dg.AssetKey(["consumer", "finance", "payments"])])
    assert any(n.startswith("lake_masked") for n in by_asset[dg.AssetKey(["consumer", "finance", "payments"])])


def test_models_read_well_in_the_catalog(defs):
    """Descriptions are the models' own (no generated SQL), every model has owners (dbt meta, the
    policy's consumer owner, else the owners of the registry tables it reads), its Iceberg
    identifier, and short described checks."""
    graph = defs.resolve_asset_graph()
    models = [k for k in graph.get_all_asset_keys() if graph.get(k).is_materializable]
    for key in models:
        node = graph.get(key)
        assert "Raw SQL" not in node.description and "select" not in node.description.lower(), key
        assert node.owners, key
        namespace = "aggregated" if key.path[0] == "aggregated" else f"consumer_{key.path[1]}"
        assert node.metadata["dagster/table_name"] == f"{namespace}.{key.path[-1]}"  # not memory.<schema>.<table>
    assert graph.get(dg.AssetKey(["aggregated", "promotion_uptake"])).owners == ["data-platform@example.com"]  # travel.yaml
    assert graph.get(dg.AssetKey(["consumer", "finance", "payments"])).owners == ["finance-eu@example.com"]  # policy.yml
    assert graph.get(dg.AssetKey(["consumer", "finance", "payments"])).description == "EMEA payments with masked card numbers."
    specs = {s.key: s for a in defs.assets if isinstance(a, dg.AssetsDefinition) for s in a.check_specs}
    assert specs
    for key, spec in specs.items():
        assert len(key.name) <= 40, key.name
        assert spec.description and "No description" not in spec.description, key
        assert spec.metadata["dbt_test"]  # dbt's own name, to find the test in dbt's output
    payments = {k.name: s for k, s in specs.items() if k.asset_key == dg.AssetKey(["consumer", "finance", "payments"])}
    assert set(payments) == {"lake_exact_columns", "lake_masked__card_number", "lake_row_filter"}
    assert payments["lake_row_filter"].description == "Only rows where region = 'EMEA'"
    assert payments["lake_masked__card_number"].description.startswith("`card_number` is masked (partial)")


def test_automation_sensor_runs_by_default_and_resource_needs_no_venv(defs):
    (sensor,) = defs.sensors
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    resource = defs.resources["dbt"]
    assert Path(resource.dbt_executable).is_absolute() and resource.dbt_executable == dbt_executable()
    assert resource.target == "local"


def test_a_source_change_refreshes_its_downstream_models(defs):
    """Materializing source_aligned/travel/promotions requests aggregated/promotion_uptake and its
    consumer dataset in the same tick (one run refreshes the chain), and nothing else: no manual click."""
    (dbt_assets_def,) = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    stubs = source_stubs()
    all_defs = dg.Definitions(assets=[*stubs, dbt_assets_def], resources=defs.resources)
    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor):
        result = dg.evaluate_automation_conditions(defs=all_defs, instance=instance, cursor=cursor)
        return result, {r.key for r in result.results if r.true_subset.size}

    result, requested = tick(None)
    assert requested == set()  # sources never loaded: nothing to build from
    dg.materialize(stubs, instance=instance)
    result, requested = tick(result.cursor)
    assert requested == set(dbt_assets_def.keys)  # first load of the sources builds every layer
    for key in requested:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key))
    result, requested = tick(result.cursor)
    assert requested == set()

    promotions = next(s for s in stubs if s.key.path[-1] == "promotions")
    dg.materialize([promotions], instance=instance)
    result, requested = tick(result.cursor)
    assert requested == {
        dg.AssetKey(["aggregated", "promotion_uptake"]),
        dg.AssetKey(["consumer", "marketing", "promotion_uptake"]),
    }


def test_a_parent_materialized_with_the_same_data_version_rebuilds_nothing(defs):
    """A merge with nothing pending materializes its table with the data version it had: the models
    downstream are not requested (eager automation would rebuild on any new materialization)."""
    (dbt_assets_def,) = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    version = {"v": "snapshot 1"}

    def stub(key: dg.AssetKey) -> dg.AssetsDefinition:
        @dg.asset(key=key, group_name=key.path[1])  # the source, as the source-aligned assets group
        def _source_aligned() -> dg.MaterializeResult:
            return dg.MaterializeResult(data_version=dg.DataVersion(version["v"]))

        return _source_aligned

    stubs = [stub(k) for k in SOURCE_KEYS]
    all_defs = dg.Definitions(assets=[*stubs, dbt_assets_def], resources=defs.resources)
    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor):
        result = dg.evaluate_automation_conditions(defs=all_defs, instance=instance, cursor=cursor)
        return result, {r.key for r in result.results if r.true_subset.size}

    result, _ = tick(None)
    dg.materialize(stubs, instance=instance)
    result, requested = tick(result.cursor)
    assert requested == set(dbt_assets_def.keys)
    for key in requested:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key))
    result, _ = tick(result.cursor)
    promotions = next(s for s in stubs if s.key.path[-1] == "promotions")
    dg.materialize([promotions], instance=instance)  # nothing changed: same data version
    result, requested = tick(result.cursor)
    assert requested == set()
    version["v"] = "snapshot 2"
    dg.materialize([promotions], instance=instance)  # its data changed
    result, requested = tick(result.cursor)
    assert dg.AssetKey(["aggregated", "promotion_uptake"]) in requested


def test_materialize_in_process_writes_iceberg_and_runs_checks(defs, tmp_path, monkeypatch):
    home = tmp_path / "lake"
    create_source_tables(home)
    monkeypatch.setenv("LAKE_HOME", str(home))
    current_settings.cache_clear()  # this test's lake, for the lake resource too
    (dbt_assets_def,) = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    selection = [dg.AssetKey(["aggregated", "promotion_uptake"]), dg.AssetKey(["consumer", "marketing", "promotion_uptake"])]
    result = dg.materialize([dbt_assets_def], selection=selection, resources={"dbt": dbt_resource(), "lake": LakeResource()},
                            raise_on_error=False)
    assert result.success
    assert {e.asset_key for e in result.get_asset_materialization_events()} == set(selection)
    # Each materialization describes the Iceberg table dbt wrote: column types, rows, identifier.
    [consumer] = [e.materialization for e in result.get_asset_materialization_events()
                  if e.materialization.asset_key == selection[1]]
    columns = {c.name: c.type for c in consumer.metadata["dagster/column_schema"].value.columns}
    assert columns["promotion_id"] == "long" and "?" not in columns.values()
    assert consumer.metadata["dagster/row_count"].value == 4
    assert consumer.metadata["dagster/table_name"].value == "consumer_marketing.promotion_uptake"
    checks = result.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks)
    assert {c.asset_key for c in checks} == set(selection)
    table = lake_catalog(home).load_table("consumer_marketing.promotion_uptake")
    assert table.scan().to_arrow().num_rows == 4
