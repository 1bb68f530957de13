"""The lake deployed on AWS, end to end, on moto's server (127.0.0.1) and a real PostgreSQL.

The infra/ stack is applied with terraform (tests/aws_fixtures.py `applied`, shared with
test_infra.py); every name comes from its outputs, the code location's environment is exactly
`code_location_environment` plus the ledger DSN the operator puts in Secrets Manager. The demo's DMS
source (full load and three CDC rounds: updates, deletes, a delete and re-insert of one key, late
files) is put into the landing bucket round by round; the stack's bucket notification delivers the
ObjectCreated events to its queue (moto 5.2.5 does deliver them: the test asserts every file was
notified, it sends no message itself); the SQS sensor is evaluated and the runs it requests are
materialized in process. Then: the Glue tables on S3, read with pyiceberg through the Glue catalog,
are the source's final state; the ledger on PostgreSQL reconciles (the `ledger_reconciled` check);
`dbt compile --target athena` of the same project succeeds offline for the stack's names; and the
Lake Formation grants in the state and the data cells filters in the plan are what
lake_assets.core.infra_codegen generates from the policy (and what dbt-athena would apply)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from dagster import DagsterInstance, build_sensor_context, materialize

from demo.generate import DemoSource, generate_travel
from lake_assets.checks import LEDGER_RECONCILED, evaluate
from lake_assets.core import governance, infra_codegen
from lake_assets.core.ledger import COMMITTED
from lake_assets.core.naming import consumer_model_name
from lake_assets.core.registry import Registry, load_registry
from lake_assets.core.settings import current_settings
from lake_assets.dbt_assets import DBT_PROJECT_DIR, dbt_executable
from lake_assets.definitions import build_definitions
from resources.lake import LakeResource
from tests.aws_fixtures import MOTO_ACCOUNT_ID, MOTO_CREDENTIALS, needs_terraform, plain_http_allowed
from tests.postgres_server import fresh_database

pytestmark = needs_terraform

CDC_ROUNDS = 3
NOTIFIED_WITHIN = 20.0  # seconds for the bucket notifications of one round to reach the queue


@dataclass
class Deployed:
    """What the end-to-end run left: the source's truth, the lake's registry, what was landed and
    run, and the stack it ran on."""

    source: DemoSource
    registry: Registry
    landed: list[str]  # landing keys (below the prefix), in delivery order
    runs: list[Any]  # ExecuteInProcessResult of each requested run
    requests: list[Any]  # the sensor's run requests
    applied: dict[str, Any]
    ledger_dsn: str
    home: Path

    @property
    def tables(self) -> list:
        """The tables the run lands files for: the demo's DMS source (the loyalty source's Debezium,
        drop and event files are proven locally, tests/test_demo_loyalty.py)."""
        return [t for t in self.registry.tables if t.source == "travel"]

    @property
    def env(self) -> dict[str, str]:
        return self.applied["out"]["code_location_environment"]


def _queued(sqs, url: str) -> int:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def _wait_for_notifications(sqs, url: str, at_least: int) -> int:
    deadline = time.monotonic() + NOTIFIED_WITHIN
    while (n := _queued(sqs, url)) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
    return n


@pytest.fixture(scope="module")
def deployed(applied, pg_server, tmp_path_factory) -> Any:
    out = applied["out"]
    env = out["code_location_environment"]
    home = tmp_path_factory.mktemp("aws_lake")
    source = generate_travel(tmp_path_factory.mktemp("dms_source"), seed=7, customers=30, hotels=6, bookings=90,
                             cdc_rounds=CDC_ROUNDS)
    ledger_dsn = fresh_database(pg_server)
    s3, sqs = applied["s3"], applied["sqs"]
    landing, prefix, queue = env["LAKE_LANDING_BUCKET"], env["LAKE_LANDING_PREFIX"], env["LAKE_ARRIVALS_QUEUE_URL"]
    warehouse = env["LAKE_WAREHOUSE_URI"].split("/")[2]
    with pytest.MonkeyPatch.context() as mp:
        # The code location's environment as infra/README.md step 5 sets it; the DSN is the
        # `ledger-dsn` secret's value. AWS_ENDPOINT_URL: every AWS client of the lake goes to moto.
        for k in [k for k in os.environ if k.startswith(("LAKE_", "DAGSTER_"))]:
            mp.delenv(k)
        for k, v in {**env, **MOTO_CREDENTIALS, "AWS_ENDPOINT_URL": applied["endpoint"], "LAKE_HOME": str(home),
                     "LAKE_LEDGER_DSN": ledger_dsn}.items():
            mp.setenv(k, v)
        mp.delenv("AWS_PROFILE", raising=False)
        current_settings.cache_clear()
        registry = load_registry()  # the demo's registry: what infra/generated/ was generated from
        defs = build_definitions(registry, with_dbt=False)
        sensor = next(s for s in defs.sensors if s.name == "sqs_sensor")
        landed: list[str] = []
        runs, requests = [], []
        cursor = None
        started = time.monotonic()
        # The buckets stay open to moto's plain HTTP while the module's tests read the tables.
        with plain_http_allowed(s3, landing, warehouse), DagsterInstance.ephemeral() as instance:
            for rnd in source.rounds:
                before = _queued(sqs, queue)  # the s3:TestEvent of the notification configuration, on a fresh stack
                keys = [f.relative_to(source.landing).as_posix() for f in rnd.files]
                for key, f in zip(keys, rnd.files, strict=True):
                    s3.put_object(Bucket=landing, Key=prefix + key, Body=f.read_bytes())
                landed += keys
                notified = _wait_for_notifications(sqs, queue, before + len(keys))
                assert notified == before + len(keys), f"{rnd.name}: {notified - before} notifications for {len(keys)} files"
                result = sensor(build_sensor_context(instance=instance, cursor=cursor, resources={"lake": LakeResource()}))
                cursor = result.cursor
                assert _queued(sqs, queue) == 0, f"{rnd.name}: the sensor left messages in the queue"
                assert result.run_requests, f"{rnd.name}: no run requested for {len(keys)} new files"
                for req in result.run_requests:
                    requests.append(req)
                    runs.append(materialize(list(defs.assets), resources=dict(defs.resources), instance=instance,
                                            selection=req.asset_selection, tags=req.tags))
                    assert runs[-1].success, f"{rnd.name}: run {req.run_key} failed"
            print(f"\nend to end on the applied stack: {len(landed)} files in {len(source.rounds)} rounds, {len(runs)} runs, "
                  f"{time.monotonic() - started:.1f} s")
            yield Deployed(source, registry, landed, runs, requests, applied, ledger_dsn, home)
    current_settings.cache_clear()


@pytest.fixture
def aws_settings(deployed):
    """The deployment's settings, read afresh from the code location's environment `deployed` keeps."""
    current_settings.cache_clear()
    settings = current_settings()
    assert settings.env == "aws"
    return settings


def _comparable(table, rows: list[dict]) -> list[tuple]:
    cols = [c.name for c in table.columns if table.lands(c.name)]
    return sorted(tuple(str(r[c]) if isinstance(r[c], Decimal) else r[c] for c in cols) for r in rows)


def test_the_source_history_has_what_cdc_must_survive(deployed):
    """The delivered history holds updates, deletes and a delete then re-insert of one key (else the
    comparison below proves less than it says)."""
    ops: dict[tuple[str, tuple], list[str]] = {}
    for e in deployed.source.emitted:
        t = deployed.source.tables[e.table]
        if not e.is_load and t.mode == "current":
            ops.setdefault((e.table, tuple(e.values[k] for k in t.primary_key)), []).append(e.op)
    assert any("U" in o for o in ops.values()) and any("D" in o for o in ops.values())
    assert any("I" in o[o.index("D"):] for o in ops.values() if "D" in o), "no key deleted then re-inserted"
    assert len(deployed.source.rounds) == 1 + CDC_ROUNDS and deployed.source.late
    assert {t.source for t in deployed.registry.tables} == {"travel", "loyalty"} and len(deployed.tables) >= 5
    # The last round changes every table's state: a lake that missed it would not pass below.
    before_last = deployed.source.expected_after(CDC_ROUNDS - 1)
    changed = {t.name for t in deployed.tables
               if _comparable(t, before_last[t.name]) != _comparable(t, deployed.source.expected[t.name])}
    assert changed == {t.name for t in deployed.tables}, "a table the last CDC round leaves as it was"


def test_every_run_came_from_the_sqs_sensor(deployed):
    assert {r.job_name for r in deployed.requests} == {"ingest_travel"}
    assert {r.tags["lake/trigger"] for r in deployed.requests} == {"sqs_sensor"}
    assert len(deployed.runs) == len(deployed.source.rounds)  # one run per round: every table of the source that got files
    # every table got at least one run
    selected = {tuple(k.path) for r in deployed.requests for k in r.asset_selection}
    assert selected == {tuple(t.asset_key_path) for t in deployed.tables}


def test_glue_tables_on_s3_are_the_sources_final_state(deployed, aws_settings):
    lake = LakeResource()
    glue = deployed.applied["glue"]
    warehouse = deployed.env["LAKE_WAREHOUSE_URI"]
    for t in deployed.tables:
        tbl = lake.catalog.load_table(t.identifier)  # pyiceberg's GlueCatalog, on moto's Glue
        assert type(lake.catalog).__name__ == "GlueCatalog"
        database, name = t.identifier.split(".")
        params = glue.get_table(DatabaseName=database, Name=name)["Table"]["Parameters"]
        assert params["table_type"].upper() == "ICEBERG" and params["metadata_location"] == tbl.metadata_location
        assert tbl.metadata_location.startswith(f"{warehouse}/{database}.db/"), tbl.metadata_location
        rows = tbl.scan().to_arrow().to_pylist()
        if t.mode == "scd2":  # its current versions are the source's rows
            rows = [r for r in rows if r["_is_current"]]
        want = deployed.source.expected[t.name]
        assert _comparable(t, rows) == _comparable(t, want), t.identifier


def test_the_ledger_on_postgresql_reconciles(deployed, aws_settings):
    lake = LakeResource()
    assert aws_settings.aws is not None and aws_settings.aws.ledger_dsn.get_secret_value() == deployed.ledger_dsn
    for t in deployed.tables:
        (check,) = evaluate(t, lake, [LEDGER_RECONCILED])
        assert check.passed, f"{t.identifier}: {check.description} {check.metadata}"
        assert check.metadata["committed_files"].value == sum(1 for k in deployed.landed if k.startswith(f"travel/{t.schema}/{t.source_table}/"))
    entries = lake.ledger.entries()
    assert sorted(e.key for e in entries) == sorted(deployed.landed)
    assert {e.status for e in entries} == {COMMITTED}
    with psycopg2.connect(deployed.ledger_dsn) as conn, conn.cursor() as cur:  # the rows really are in PostgreSQL
        cur.execute("SELECT count(*) FROM landed_files WHERE status = %s", (COMMITTED,))
        assert cur.fetchone() == (len(deployed.landed),)
    conn.close()


def _expected_principal(p: str) -> str:
    return p.replace("{aws_account_id}", MOTO_ACCOUNT_ID)


def test_dbt_compiles_for_athena_on_the_stacks_names(deployed, tmp_path):
    """`dbt compile --target athena` of dbt_project with the code location's environment: offline
    (`--no-populate-cache`: dbt-athena lists no Glue schema), into the databases the stack created,
    with the filters the stack plans. Every AWS endpoint points at a closed port: without the flag
    the same compile calls Glue and fails there (EndpointConnectionError, exit 2)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBT_", "LAKE_", "AWS_"))}
    env |= {**deployed.env, **MOTO_CREDENTIALS, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "LAKE_HOME": str(tmp_path / "lake"),
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    started = time.monotonic()
    proc = subprocess.run([dbt_executable(), "compile", "--target", "athena", "--no-populate-cache", "--target-path", str(tmp_path),
                           "--log-path", str(tmp_path)], cwd=DBT_PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"dbt compile --target athena:\n{proc.stdout[-5000:]}{proc.stderr[-2000:]}"
    took = time.monotonic() - started
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["metadata"]["adapter_type"] == "athena"
    databases = set(deployed.applied["out"]["glue_databases"])
    models = {n["name"]: n for n in manifest["nodes"].values() if n["resource_type"] == "model"}
    assert {n["schema"] for n in models.values()} <= databases
    assert {s["schema"] for s in manifest["sources"].values()} <= databases
    model = infra_codegen.lake_model(deployed.registry, governance.load_validated_policy(registry=deployed.registry))
    for cname, consumer in model["consumers"].items():
        for fname, f in consumer["filters"].items():
            node = models[consumer_model_name(cname, f["table"])]
            assert (node["schema"], node["alias"]) == (consumer["database"], f["table"])
            dbt_filter = node["config"]["lf_grants"]["data_cell_filters"]["filters"]
            assert list(dbt_filter) == [fname] and dbt_filter[fname]["row_filter"] == f["row_filter"]
            assert sorted(dbt_filter[fname]["principals"]) == sorted(_expected_principal(p) for p in consumer["principals"])
    assert took < 120, f"dbt compile took {took:.0f} s"


def test_lake_formation_grants_and_filters_are_what_infra_codegen_generates(deployed, filters_plan):
    """The applied state's consumer database grants and LF tags, the plan's data cells filters and
    their SELECT grants (moto has no API for filters): exactly infra_codegen's model of the policy."""
    applied = deployed.applied
    model = infra_codegen.lake_model(deployed.registry, governance.load_validated_policy(registry=deployed.registry))
    resources = filters_plan["prior_state"]["values"]["root_module"]["resources"]  # the applied state the plan starts from
    db_grants = sorted((r["values"]["principal"], r["values"]["database"][0]["name"], tuple(r["values"]["permissions"]))
                       for r in resources if r["type"] == "aws_lakeformation_permissions" and r["name"] == "consumer_database")
    assert db_grants == sorted((_expected_principal(p), c["database"], ("DESCRIBE",))
                               for c in model["consumers"].values() for p in c["principals"])
    tags = {r["values"]["key"]: sorted(r["values"]["values"]) for r in resources if r["type"] == "aws_lakeformation_lf_tag"}
    assert tags == {k: sorted(v) for k, v in model["lf_tags"].items()}
    db_tags = {r["index"]: {t["key"]: t["value"] for t in r["values"]["lf_tag"]}
               for r in resources if r["type"] == "aws_lakeformation_resource_lf_tags"}
    assert db_tags == model["database_tags"]
    # what moto holds is what the state says (the grants the deploy step applied)
    granted = {(g["Principal"]["DataLakePrincipalIdentifier"], g["Resource"]["Database"]["Name"])
               for g in applied["lakeformation"].list_permissions()["PrincipalResourcePermissions"] if "Database" in g["Resource"]}
    assert {(p, d) for p, d, _ in db_grants} <= granted

    created = [r for r in filters_plan["resource_changes"] if r["change"]["actions"] == ["create"]]
    planned = {r["index"]: r["change"]["after"]["table_data"][0] for r in created if r["type"] == "aws_lakeformation_data_cells_filter"}
    wanted = {fname: (c["database"], f) for c in model["consumers"].values() for fname, f in c["filters"].items()}
    assert set(planned) == set(wanted)
    for fname, (database, f) in wanted.items():
        p = planned[fname]
        assert (p["database_name"], p["table_name"], p["name"]) == (database, f["table"], fname)
        assert p["table_catalog_id"] == MOTO_ACCOUNT_ID
        assert sorted(p["column_names"]) == sorted(f["column_names"])  # the provider keeps them as a set
        assert p["row_filter"] == [{"filter_expression": f["row_filter"], "all_rows_wildcard": []}]
    filter_grants = sorted((r["change"]["after"]["data_cells_filter"][0]["name"], r["change"]["after"]["principal"],
                            tuple(r["change"]["after"]["permissions"]))
                           for r in created if r["type"] == "aws_lakeformation_permissions" and r["name"] == "consumer_filter")
    assert filter_grants == sorted((fname, _expected_principal(p), ("SELECT",))
                                   for c in model["consumers"].values() for fname in c["filters"] for p in c["principals"])
