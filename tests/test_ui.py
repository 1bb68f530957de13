"""What a data engineer sees in the Dagster UI, asked through the GraphQL API of a real `dagster dev`
(webserver, daemon, code server; the lake's run launcher) on a temporary demo lake: lineage from
landing to consumer, column schemas with types, a check run alone keeping its result, a merge with
nothing to do leaving its downstream fresh, runs that re-execute, and a corrupt file failing a check.

One server for the module (about a minute in all, most of it the demo building the lake).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo.dms_writer import cdc_file_name, write_raw
from lake_assets.dev import DevServer

REPO = Path(__file__).resolve().parents[1]
LOCATION = {"repositoryLocationName": "lake", "repositoryName": "__repository__"}
PROMOTIONS = ["source_aligned", "travel", "promotions"]
CHAIN = [["landing", "travel", "promotions"], PROMOTIONS, ["aggregated", "promotion_uptake"],
         ["consumer", "marketing", "promotion_uptake"]]

pytestmark = pytest.mark.slow


class UI:
    def __init__(self, server: DevServer, home: Path):
        self.server, self.home = server, home

    def query(self, text: str, **variables) -> dict:
        return self.server.graphql(text, variables)

    def launch(self, job: str, assets: list[list[str]], checks: list[tuple[list[str], str]] = ()) -> str:
        """A run as the UI's Materialize / Execute buttons launch it; returns its id."""
        selector = {**LOCATION, "pipelineName": job, "assetSelection": [{"path": p} for p in assets],
                    "assetCheckSelection": [{"assetKey": {"path": p}, "name": n} for p, n in checks]}
        out = self.query(LAUNCH, params={"selector": selector, "mode": "default", "runConfigData": {}})["launchPipelineExecution"]
        assert out["__typename"] == "LaunchRunSuccess", out
        return out["run"]["runId"]

    def wait_for_run(self, run_id: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.query(RUN_STATUS, runId=run_id)["runOrError"]["status"]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                return status
            time.sleep(0.3)
        raise TimeoutError(f"run {run_id} still not finished after {timeout}s")

    def check_executions(self, path: list[str], name: str, limit: int = 1) -> list[dict]:
        return self.query(CHECK_EXECUTIONS, assetKey={"path": path}, checkName=name, limit=limit)["assetCheckExecutions"]

    def asset(self, path: list[str]) -> dict:
        return self.query(ASSET, assetKey={"path": path})["assetNodeOrError"]


LAUNCH = """
mutation($params: ExecutionParams!) { launchPipelineExecution(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on InvalidSubsetError { message } ... on RunConfigValidationInvalid { errors { message } } } }
"""
RUN_STATUS = "query($runId: ID!) { runOrError(runId: $runId) { ... on Run { status } } }"
CHECK_EXECUTIONS = """
query($assetKey: AssetKeyInput!, $checkName: String!, $limit: Int!) {
  assetCheckExecutions(assetKey: $assetKey, checkName: $checkName, limit: $limit) {
    runId status evaluation { success severity metadataEntries { label
      ... on TextMetadataEntry { text } ... on MarkdownMetadataEntry { mdStr } ... on IntMetadataEntry { intValue } } } } }
"""
ASSET = """
fragment Entry on MetadataEntry { label __typename
  ... on TableSchemaMetadataEntry { schema { columns { name type description } } }
  ... on IntMetadataEntry { intValue } ... on TextMetadataEntry { text } }
query($assetKey: AssetKeyInput!) { assetNodeOrError(assetKey: $assetKey) { ... on AssetNode {
  assetKey { path } dependencyKeys { path } staleStatus isObservable isMaterializable owners { ... on UserAssetOwner { email } }
  metadataEntries { ...Entry }
  assetMaterializations(limit: 2) { runId timestamp tags { key value } metadataEntries { ...Entry } }
  assetObservations(limit: 1) { metadataEntries { ...Entry } }
} } }
"""


def _entry(entries: list[dict], label: str) -> dict:
    return next(e for e in entries if e["label"] == label)


def _columns(entries: list[dict]) -> dict[str, str]:
    return {c["name"]: c["type"] for c in _entry(entries, "dagster/column_schema")["schema"]["columns"]}


@pytest.fixture(scope="module")
def ui(tmp_path_factory) -> UI:
    tmp = tmp_path_factory.mktemp("ui")
    home = tmp / "lake"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_") and k != "DAGSTER_HOME"}
    env |= {"LAKE_HOME": str(home), "LAKE_SETTLE_SECONDS": "0", "PYTHONWARNINGS": "ignore",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    demo = subprocess.run([sys.executable, "-m", "demo", "--reset", "--rounds", "1"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    with DevServer(env=env, log_path=tmp / "dagster-dev.log") as server:
        yield UI(server, home)


def test_lineage_runs_from_landing_to_consumer(ui):
    nodes = [ui.asset(p) for p in CHAIN]
    for child, parent in zip(nodes[1:], CHAIN):
        assert {"path": parent} in child["dependencyKeys"], (child["assetKey"], parent)
    landing = nodes[0]
    assert landing["isObservable"] and not landing["isMaterializable"]
    observed = {e["label"]: e for e in landing["assetObservations"][0]["metadataEntries"]}
    assert observed["files_landed"]["intValue"] >= 4 and observed["failed"]["intValue"] == 0  # reported by the merge
    assert all(n["owners"] for n in nodes[1:]), "every table has owners"


def test_column_schemas_have_types(ui):
    source = ui.asset(PROMOTIONS)
    defined = _columns(source["metadataEntries"])
    assert defined["promotion_id"] == "long" and defined["discount_pct"] == "decimal(5, 2)"
    assert defined["_lake_seq"] == "string" and defined["_lake_ingested_at"] == "timestamptz"
    assert _entry(source["metadataEntries"], "dagster/table_name")["text"] == "travel.promotions"
    materialized = source["assetMaterializations"][0]["metadataEntries"]
    assert _columns(materialized) == defined
    assert _entry(materialized, "dagster/row_count")["intValue"] == 12

    model = ui.asset(["consumer", "marketing", "promotion_uptake"])
    assert _entry(model["metadataEntries"], "dagster/table_name")["text"] == "consumer_marketing.promotion_uptake"
    materialized = model["assetMaterializations"][0]["metadataEntries"]
    columns = _columns(materialized)
    assert columns["promotion_id"] == "long" and "?" not in columns.values()
    assert _entry(materialized, "dagster/table_name")["text"] == "consumer_marketing.promotion_uptake"
    assert _entry(materialized, "dagster/row_count")["intValue"] == 12


def test_a_check_run_alone_keeps_its_result(ui):
    """The UI's Execute on a check: a run selecting only that check. It evaluates the check on the
    table as it is (nothing merged) and its result stands: not Skipped."""
    before = ui.asset(PROMOTIONS)["assetMaterializations"][0]["runId"]
    run_id = ui.launch("__ASSET_JOB", [], [(PROMOTIONS, "unique_primary_key")])
    assert ui.wait_for_run(run_id) == "SUCCESS"
    [execution] = ui.check_executions(PROMOTIONS, "unique_primary_key")
    assert execution["runId"] == run_id and execution["status"] == "SUCCEEDED"
    assert ui.asset(PROMOTIONS)["assetMaterializations"][0]["runId"] == before  # nothing merged


def test_a_merge_with_nothing_pending_leaves_downstream_fresh(ui):
    model = ["aggregated", "promotion_uptake"]
    assert ui.asset(model)["staleStatus"] == "FRESH"
    builds = len(ui.asset(model)["assetMaterializations"])
    run_id = ui.launch("ingest_travel", [PROMOTIONS])
    assert ui.wait_for_run(run_id) == "SUCCESS"
    first, previous = ui.asset(PROMOTIONS)["assetMaterializations"][:2]
    assert first["runId"] == run_id  # the run shows it looked
    version = {t["key"]: t["value"] for t in first["tags"]}["dagster/data_version"]
    assert version == {t["key"]: t["value"] for t in previous["tags"]}["dagster/data_version"]
    assert ui.asset(model)["staleStatus"] == "FRESH"
    time.sleep(12)  # two ticks of the automation sensor (every 5 s)
    runs = ui.query('{ runsOrError(filter: {tags: [{key: "dagster/sensor_name", value: "dbt_layers_automation_sensor"}]}) '
                    '{ ... on Runs { results { runId } } } }')["runsOrError"]["results"]
    assert runs == [] and len(ui.asset(model)["assetMaterializations"]) == builds  # nothing rebuilt


def test_runs_are_named_jobs_and_re_execute(ui):
    runs = ui.query("{ runsOrError { ... on Runs { results { runId jobName status } } } }")["runsOrError"]["results"]
    assert {r["jobName"] for r in runs} <= {"ingest_travel", "ingest_loyalty", "dbt_layers", "maintain_travel", "__ASSET_JOB"}
    assert {"ingest_travel", "ingest_loyalty", "dbt_layers", "maintain_travel"} <= {r["jobName"] for r in runs}  # the demo's runs
    demo_run = next(r for r in reversed(runs) if r["jobName"] == "ingest_travel")
    out = ui.query("""mutation($p: ReexecutionParams!) { launchPipelineReexecution(reexecutionParams: $p) {
        __typename ... on LaunchRunSuccess { run { runId jobName } } ... on PythonError { message } } }""",
                   p={"parentRunId": demo_run["runId"], "strategy": "ALL_STEPS"})["launchPipelineReexecution"]
    assert out["__typename"] == "LaunchRunSuccess", out
    assert out["run"]["jobName"] == "ingest_travel"
    assert ui.wait_for_run(out["run"]["runId"]) == "SUCCESS"


def test_a_corrupt_file_fails_a_check(ui):
    name = cdc_file_name(dt.datetime.now(dt.UTC).replace(tzinfo=None)) + ".parquet"
    key = f"travel/booking/promotions/{name}"
    write_raw(ui.home / "landing" / key, b"PAR1 truncated, not parquet")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # the landing sensor records it and runs ingest_travel
        executions = ui.check_executions(PROMOTIONS, "ledger_reconciled")
        if executions and executions[0]["evaluation"] and not executions[0]["evaluation"]["success"]:
            break
        time.sleep(0.5)
    else:
        pytest.fail("no failed ledger_reconciled evaluation for the corrupt file")
    evaluation = executions[0]["evaluation"]
    assert evaluation["severity"] == "ERROR"
    entries = {e["label"]: e for e in evaluation["metadataEntries"]}
    assert entries["failed_files"]["intValue"] == 1
    assert key in entries["files"]["mdStr"] and "Parquet" in entries["files"]["mdStr"]
    observed = {e["label"]: e for e in ui.asset(CHAIN[0])["assetObservations"][0]["metadataEntries"]}
    assert observed["failed"]["intValue"] == 1
