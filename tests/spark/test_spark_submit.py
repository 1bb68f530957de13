"""The job as production runs it locally: `spark-submit` in its own process, plainly and through
Dagster Pipes, with crash recovery across the process boundary."""


import datetime as dt

import pytest
from dagster import AssetExecutionContext, AssetKey, DagsterInstance, MaterializeResult, asset, materialize

from demo.dms_writer import cdc_file_name, load_file_name, table_dir, write_dms_file
from lake_assets.core.cdc.iceberg import committed_batches
from lake_assets.core.cdc.inprocess import InProcessEngine
from lake_assets.core.cdc.runner import merge_pending
from lake_assets.core.landing import LocalLandingZone
from lake_assets.core.ledger import sqlite_ledger
from lake_assets.core.naming import quarantine_identifier, tombstone_identifier
from lake_assets.core.spark.engine import SparkEngine, SparkJobError
from resources.spark import LocalSpark, SparkMergeResource, plain_launcher, spark_engine_for
from tests.spark.conftest import make_table, record_landed, sql_catalog, table_rows

pytestmark = pytest.mark.spark

COLS = [("id", "long"), ("v", "long")]


def _deliver(landing, table) -> None:
    folder = table_dir(landing, table.source, table.schema, table.source_table)
    write_dms_file(folder / load_file_name(1), [{"id": i, "v": i} for i in range(1, 5)], COLS, cdc=False)
    changes = [{"id": 2, "v": 0, "Op": "D"}, {"id": 3, "v": 30, "Op": "U"}, {"id": 5, "v": 50, "Op": "I"}, {"id": None, "v": 1, "Op": "I"}]
    write_dms_file(folder / cdc_file_name(dt.datetime(2026, 11, 21, 10)), changes, COLS, cdc=True)


def test_a_job_killed_after_its_sidecar_writes_resumes_exactly_once(tmp_path, monkeypatch):
    table = make_table("crash", columns=COLS)
    landing = tmp_path / "landing"
    _deliver(landing, table)
    catalog, ledger = sql_catalog(tmp_path), sqlite_ledger(tmp_path / "ledger.db")
    record_landed(LocalLandingZone(landing), ledger, [table])
    local = LocalSpark(workdir=tmp_path / "jobs", master="local[2]", driver_memory="1g")
    engine = SparkEngine(plain_launcher(local), landing=str(landing), scratch=str(tmp_path / "scratch"))

    # The job dies after writing quarantine and tombstones, before its MERGE commits.
    monkeypatch.setenv("LAKE_FAILPOINT", "spark:before_commit")
    with pytest.raises(SparkJobError, match="without reporting a result"):
        merge_pending(table, catalog=catalog, ledger=ledger, landing=LocalLandingZone(landing), engine=engine)
    assert committed_batches(catalog.load_table(table.identifier)) == {}
    assert len(table_rows(catalog, quarantine_identifier(table.source, table.name), ["row"])) == 1
    assert ledger.status_counts(table.identifier)["processing"] == 2

    monkeypatch.delenv("LAKE_FAILPOINT")
    [result] = merge_pending(table, catalog=catalog, ledger=ledger, landing=LocalLandingZone(landing), engine=engine).results
    assert (result.inserted, result.deleted, result.quarantined, result.already_committed) == (4, 0, 1, False)
    assert ledger.status_counts(table.identifier)["committed"] == 2

    # The same files through the in-process engine, uninterrupted: the same tables.
    ref_home = tmp_path / "reference"
    ref_catalog, ref_ledger = sql_catalog(ref_home), sqlite_ledger(ref_home / "ledger.db")
    record_landed(LocalLandingZone(landing), ref_ledger, [table])
    merge_pending(table, catalog=ref_catalog, ledger=ref_ledger, landing=LocalLandingZone(landing), engine=InProcessEngine())
    assert [(r["id"], r["v"]) for r in table_rows(catalog, table.identifier, ["id"])] == [(1, 1), (3, 30), (4, 4), (5, 50)]
    drop = lambda rows: [{k: v for k, v in r.items() if k not in ("_lake_ingested_at", "_lake_batch_id")} for r in rows]  # noqa: E731
    assert drop(table_rows(catalog, table.identifier, ["id"])) == drop(table_rows(ref_catalog, table.identifier, ["id"]))
    for ident, order in ((quarantine_identifier(table.source, table.name), ["row"]), (tombstone_identifier(table.source, table.name), ["id"])):
        got, want = table_rows(catalog, ident, order), table_rows(ref_catalog, ident, order)
        assert [(r.get("id"), r.get("row"), r.get("reason"), r.get("_lake_seq")) for r in got] == [
            (r.get("id"), r.get("row"), r.get("reason"), r.get("_lake_seq")) for r in want]


def test_spark_submit_through_dagster_pipes(tmp_path):
    table = make_table("pipes", columns=None)  # columns come from the files: a type change is schema drift
    landing = tmp_path / "landing"
    _deliver(landing, table)
    catalog, ledger = sql_catalog(tmp_path), sqlite_ledger(tmp_path / "ledger.db")

    @asset(key=["source_aligned", table.source, table.name])
    def items(context: AssetExecutionContext, spark: SparkMergeResource) -> MaterializeResult:
        engine = spark_engine_for(context, spark)
        [r] = merge_pending(table, catalog=catalog, ledger=ledger, landing=LocalLandingZone(landing), engine=engine).results
        return MaterializeResult(metadata={"inserted": r.inserted, "deleted": r.deleted, "quarantined": r.quarantined,
                                           "snapshot_id": str(r.snapshot_id)})

    instance = DagsterInstance.ephemeral()
    resources = {"spark": SparkMergeResource(lake_home=str(tmp_path), master="local[2]", driver_memory="1g")}
    record_landed(LocalLandingZone(landing), ledger, [table])
    res = materialize([items], resources=resources, instance=instance)
    assert res.success
    [mat] = res.asset_materializations_for_node("source_aligned__pipes__items")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert (meta["inserted"], meta["deleted"], meta["quarantined"]) == (4, 0, 1)
    assert meta["snapshot_id"] == str(catalog.load_table(table.identifier).current_snapshot().snapshot_id)
    # The job's own log lines came back through Pipes into the run's event log.
    messages = [e.user_message for e in instance.all_logs(res.run_id)]
    assert any("pipes.items: batch" in m and "committed snapshot" in m for m in messages), messages

    # The job fails on schema drift: the materialization fails with the job's reason, nothing is committed.
    folder = table_dir(landing, table.source, table.schema, table.source_table)
    write_dms_file(folder / cdc_file_name(dt.datetime(2026, 11, 21, 11)), [{"id": 7, "v": "seven", "Op": "I"}],
                   [("id", "long"), ("v", "string")], cdc=True)
    record_landed(LocalLandingZone(landing), ledger, [table])
    snapshots = len(catalog.load_table(table.identifier).metadata.snapshots)
    res = materialize([items], resources=resources, instance=instance, raise_on_error=False)
    assert not res.success
    [failure] = [e for e in res.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "SchemaDriftError" in failure.step_failure_data.error.to_string()
    assert "column v is long in the table but string" in failure.step_failure_data.error.to_string()
    assert len(catalog.load_table(table.identifier).metadata.snapshots) == snapshots


def test_a_spark_table_of_the_registry_merges_through_the_code_location(tmp_path, monkeypatch):
    """`engine: spark` in a registry YAML is all it takes: build_definitions wires the Spark resource
    from the settings, the source's op asks for it, and the merge runs as spark-submit via Pipes."""
    from lake_assets.definitions import build_definitions
    from tests.lakehelpers import make_lake

    monkeypatch.setenv("LAKE_HOME", str(tmp_path))
    monkeypatch.setenv("LAKE_SPARK_MASTER", "local[2]")
    monkeypatch.setenv("LAKE_SPARK_DRIVER_MEMORY", "1g")
    lake = make_lake(tmp_path, {"sp": """
source: sp
tables:
  - name: items
    schema: app
    primary_key: [id]
    engine: spark
    columns: [{name: id, type: long}, {name: v, type: long}]
"""})
    folder = table_dir(lake.landing, "sp", "app", "items")
    write_dms_file(folder / load_file_name(1), [{"id": i, "v": i} for i in range(1, 6)], [("id", "long"), ("v", "long")], cdc=False)
    write_dms_file(folder / cdc_file_name(dt.datetime(2026, 11, 21, 10)), [{"id": 2, "v": 20, "Op": "U"}, {"id": 3, "v": 3, "Op": "D"}],
                   [("id", "long"), ("v", "long")], cdc=True)
    from lake_assets.core.arrivals import record_arrivals

    record_arrivals(lake.env.landing, lake.env.ledger, lake.registry)
    defs = build_definitions(lake.registry, with_dbt=False)
    assert "spark" in defs.resources
    instance = DagsterInstance.ephemeral()
    res = materialize(list(defs.assets), selection=[AssetKey(["source_aligned", "sp", "items"])],
                      resources=dict(defs.resources), instance=instance)
    assert res.success
    assert sorted((r["id"], r["v"]) for r in lake.rows("sp.items")) == [(1, 1), (2, 20), (4, 4), (5, 5)]
    messages = [e.user_message for e in instance.all_logs(res.run_id)]
    assert any("sp.items: batch" in m and "committed snapshot" in m for m in messages), messages  # the job's own log
