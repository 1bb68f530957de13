"""EMR Serverless submission against moto's server on 127.0.0.1.

moto's EMR Serverless is a stub: a job run reports SUCCESS at once and runs nothing. So these tests
prove the request (script, arguments, Spark conf for Iceberg + Glue, CloudWatch logging, role), the
spec the job would read from S3, and what the resource does with the outcome. The job's side is
played by what its driver would leave behind: Pipes messages on stdout in CloudWatch, or a FAILED
state with EMR's reason. The job itself is tested under local Spark in the other modules.
"""


import json
import time

import boto3
import pytest
import requests
from dagster import AssetExecutionContext, DagsterInstance, MaterializeResult, asset, materialize
from dagster_pipes import PIPES_PROTOCOL_VERSION, PIPES_PROTOCOL_VERSION_FIELD
from moto.backends import get_backend
from moto.server import ThreadedMotoServer

from demo.dms_writer import load_file_name, table_dir, write_dms_file
from lake_assets.core.cdc.runner import merge_pending
from lake_assets.core.landing import S3LandingZone
from lake_assets.core.ledger import sqlite_ledger
from lake_assets.core.spark.emr_package import publish_job_script
from resources.spark import SparkMergeResource, spark_engine_for
from tests.spark.conftest import make_table, record_landed, sql_catalog

pytestmark = pytest.mark.spark

ACCOUNT, REGION = "123456789012", "us-east-1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/lake-emr-job"
SCRIPT = "s3://lake-code/merge/merge_job.py"
ENVIRONMENT = "s3://lake-code/merge/lake_env.tar.gz"
JOBS = "s3://lake-jobs/merge"
LOG_GROUP = "/aws/emr-serverless/lake"


@pytest.fixture
def aws(monkeypatch):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION}.items():
        monkeypatch.setenv(k, v)
    boto3.setup_default_session()  # fresh event hooks for the clients the resource creates
    yield endpoint
    requests.post(f"{endpoint}/moto-api/reset", timeout=10)
    server.stop()
    boto3.setup_default_session()


@pytest.fixture
def lake(aws, tmp_path):
    """An S3 landing zone with one full-load file, its ledger entries, an EMR application and the script."""
    s3 = boto3.client("s3")
    for bucket in ("lake-landing", "lake-code", "lake-jobs"):
        s3.create_bucket(Bucket=bucket)
    app = boto3.client("emr-serverless").create_application(name="lake-merge", releaseLabel="emr-7.5.0", type="SPARK")["applicationId"]
    publish_job_script(s3, SCRIPT)
    table = make_table("shop", "orders", columns=[("id", "long"), ("v", "long")])
    local = tmp_path / "files"
    f = write_dms_file(table_dir(local, table.source, table.schema, table.source_table) / load_file_name(1),
                       [{"id": i, "v": i} for i in range(3)], [("id", "long"), ("v", "long")], cdc=False)
    key = f.relative_to(local).as_posix()
    s3.put_object(Bucket="lake-landing", Key=f"dms/{key}", Body=f.read_bytes())
    landing = S3LandingZone("lake-landing", "dms", s3)
    ledger = sqlite_ledger(tmp_path / "ledger.db")
    record_landed(landing, ledger, [table])
    resource = SparkMergeResource(
        mode="emr", lake_home=str(tmp_path), landing="s3://lake-landing/dms", region=REGION, emr_application_id=app,
        emr_execution_role_arn=ROLE, emr_script_uri=SCRIPT, emr_environment_uri=ENVIRONMENT, emr_jobs_uri=JOBS,
        emr_log_group=LOG_GROUP, glue_warehouse="s3://lake-warehouse/iceberg",
    )
    return {"app": app, "table": table, "key": key, "landing": landing, "ledger": ledger, "resource": resource,
            "catalog": sql_catalog(tmp_path / "catalog")}


def _merge_asset(lake):
    table = lake["table"]

    @asset(key=["source_aligned", table.source, table.name])
    def orders(context: AssetExecutionContext, spark: SparkMergeResource) -> MaterializeResult:
        engine = spark_engine_for(context, spark)
        [r] = merge_pending(table, catalog=lake["catalog"], ledger=lake["ledger"], landing=lake["landing"], engine=engine).results
        return MaterializeResult(metadata={"inserted": r.inserted, "quarantined": r.quarantined, "snapshot_id": str(r.snapshot_id)})

    return orders


def _on_start_job_run(handler) -> None:
    boto3.DEFAULT_SESSION.events.register("after-call.emr-serverless.StartJobRun", handler)


def _job_run(app: str, run_id: str):
    return next(r for r in get_backend("emr-serverless")[ACCOUNT][REGION].job_runs[app] if r.id == run_id)


def _pipes_line(method: str, params: dict) -> str:
    return json.dumps({PIPES_PROTOCOL_VERSION_FIELD: PIPES_PROTOCOL_VERSION, "method": method, "params": params})


def test_job_run_request_and_result_through_cloudwatch(lake):
    submitted = {}

    def driver_output(parsed, **_):
        """What the job's driver prints to stdout, as EMR Serverless ships it to CloudWatch."""
        app, run_id = parsed["applicationId"], parsed["jobRunId"]
        submitted["run_id"] = run_id
        spec_uri = _job_run(app, run_id).job_driver["sparkSubmit"]["entryPointArguments"][1]
        bucket, _, key = spec_uri.removeprefix("s3://").partition("/")
        spec = json.loads(boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())
        submitted["spec"] = spec
        result = {"table": "shop.orders", "batch_id": spec["batch_id"], "files": [f["key"] for f in spec["files"]],
                  "rows_read": 3, "inserted": 3, "quarantined": 0, "snapshot_id": 4242, "per_file": {lake["key"]: [3, 0]}}
        logs = boto3.client("logs")
        stream = f"lake/applications/{app}/jobs/{run_id}/SPARK_DRIVER"
        try:
            logs.create_log_group(logGroupName=LOG_GROUP)
        except logs.exceptions.ResourceAlreadyExistsException:
            pass
        lines = [_pipes_line("log", {"message": "shop.orders: batch committed snapshot 4242", "level": "INFO"}),
                 _pipes_line("report_custom_message", {"payload": {"ok": True, "result": result}}),
                 _pipes_line("closed", {})]
        for name, messages in (("stdout", lines), ("stderr", ["26/11/21 10:00:00 WARN NativeCodeLoader: ..."])):
            logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=f"{stream}/{name}")
            now = int(time.time() * 1000)
            logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=f"{stream}/{name}",
                                logEvents=[{"timestamp": now + i, "message": m} for i, m in enumerate(messages)])

    _on_start_job_run(driver_output)
    instance = DagsterInstance.ephemeral()
    res = materialize([_merge_asset(lake)], resources={"spark": lake["resource"]}, instance=instance)
    assert res.success

    # The counts came back through Pipes (CloudWatch), and the ledger holds the job's snapshot.
    [mat] = res.asset_materializations_for_node("source_aligned__shop__orders")
    assert {k: v.value for k, v in mat.metadata.items()} == {"inserted": 3, "quarantined": 0, "snapshot_id": "4242"}
    assert [e.snapshot_id for e in lake["ledger"].entries("shop.orders")] == [4242]
    assert any("committed snapshot 4242" in e.user_message for e in instance.all_logs(res.run_id))

    # The request: the packaged script with the spec on S3, Iceberg on Glue, CloudWatch for Pipes.
    run = boto3.client("emr-serverless").get_job_run(applicationId=lake["app"], jobRunId=submitted["run_id"])["jobRun"]
    assert run["executionRole"] == ROLE
    driver = run["jobDriver"]["sparkSubmit"]
    assert driver["entryPoint"] == SCRIPT
    args = driver["entryPointArguments"]
    assert args[0] == "--spec" and args[1].startswith(f"{JOBS}/runs/shop.orders/") and args[2] == "--result"
    words = driver["sparkSubmitParameters"].split()
    assert words[::2] == ["--conf"] * (len(words) // 2)
    conf = dict(w.split("=", 1) for w in words[1::2])
    assert conf["spark.sql.catalog.lake"] == "org.apache.iceberg.spark.SparkCatalog"
    assert conf["spark.sql.catalog.lake.catalog-impl"] == "org.apache.iceberg.aws.glue.GlueCatalog"
    assert conf["spark.sql.catalog.lake.io-impl"] == "org.apache.iceberg.aws.s3.S3FileIO"
    assert conf["spark.sql.catalog.lake.warehouse"] == "s3://lake-warehouse/iceberg"
    assert conf["spark.sql.extensions"] == "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions"
    assert conf["spark.jars"] == "/usr/share/aws/iceberg/lib/iceberg-spark3-runtime.jar"
    assert conf["spark.archives"] == f"{ENVIRONMENT}#environment"
    for python in ("spark.emr-serverless.driverEnv.PYSPARK_PYTHON", "spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON",
                   "spark.executorEnv.PYSPARK_PYTHON"):
        assert conf[python] == "./environment/bin/python"  # the launcher emr_package packs (tests/spark/test_emr_package.py)
    assert conf["spark.emr-serverless.driverEnv.AWS_REGION"] == REGION
    assert conf["spark.sql.catalog.lake.client.region"] == REGION
    assert "spark.emr-serverless.driverEnv.DAGSTER_PIPES_CONTEXT" in conf  # injected by Pipes
    logging = run["configurationOverrides"]["monitoringConfiguration"]["cloudWatchLoggingConfiguration"]
    assert logging["enabled"] and logging["logGroupName"] == LOG_GROUP
    assert logging["logTypes"] == {"SPARK_DRIVER": ["STDOUT", "STDERR"]}  # the driver's stdout carries the Pipes messages
    assert run["tags"]["lake-table"] == "shop.orders"

    spec = submitted["spec"]
    assert spec["landing"] == "s3://lake-landing/dms" and spec["scratch"] == f"{JOBS}/scratch"
    assert spec["catalog"] == {"type": "glue", "warehouse": "s3://lake-warehouse/iceberg", "uri": None,
                               "properties": {"glue.region": REGION, "s3.region": REGION}}
    assert spec["table"]["primary_key"] == ["id"] and [f["key"] for f in spec["files"]] == [lake["key"]]
    assert all(len(f["md5"]) == 32 for f in spec["files"])


def test_a_failed_job_run_fails_the_materialization_with_its_reason(lake):
    reason = ("Job failed, please check complete logs in configured logging destination. ExitCode: 1. "
              "Last few exceptions: py4j.protocol.Py4JJavaError: An error occurred while calling o123.sql.")

    def fail(parsed, **_):
        run = _job_run(parsed["applicationId"], parsed["jobRunId"])
        run.state, run.state_details = "FAILED", reason

    _on_start_job_run(fail)
    res = materialize([_merge_asset(lake)], resources={"spark": lake["resource"]}, instance=DagsterInstance.ephemeral(),
                      raise_on_error=False)
    assert not res.success
    [failure] = [e for e in res.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.to_string()
    assert "ended FAILED" in message and "ExitCode: 1" in message and "shop.orders" in message
    # Nothing was committed: the batch stays claimed and is resumed by the next run.
    counts = lake["ledger"].status_counts("shop.orders")
    assert (counts["processing"], counts["committed"], counts["failed"]) == (1, 0, 0)
