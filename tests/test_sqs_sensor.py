"""Event-driven arrivals on AWS, against moto's server on 127.0.0.1 and a real PostgreSQL ledger:
S3 ObjectCreated notifications into SQS, the SQS sensor recording them and requesting merges, poison
messages redriven to a dead-letter queue, and the S3 listing sensor's per-folder cursors behind it.

The deployment is opened from real `LAKE_ENV=aws` settings (Glue catalog, S3 landing, PostgreSQL
ledger, SQS queue), as the code location opens it; moto only stands in for the AWS endpoints."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import psycopg2
import pytest
from dagster import AssetKey, DagsterInstance, build_sensor_context

from demo.dms_writer import cdc_file_name, load_file_name, write_dms_file
from lake_assets.core.arrivals import ListingCursor, record_arrivals
from lake_assets.core.ledger import FAILED, LANDED
from lake_assets.core.notifications import receive_batch, record_batch, record_notifications
from lake_assets.core.registry import load_registry
from lake_assets.definitions import build_definitions
from lake_assets.sensors import build_landing_sensor, build_sqs_sensor
from resources.lake import LakeResource
from tests.postgres_server import fresh_database

SHOP = """
source: shop
defaults: {refresh: on_arrival}
tables:
  - name: orders
    schema: app
    primary_key: [order_id]
    columns: [{name: order_id, type: long}, {name: total, type: double}]
"""
COLUMNS = [("order_id", "long"), ("total", "double")]
ORDERS = "shop.orders"
ORDERS_KEY = AssetKey(["source_aligned", "shop", "orders"])
T0 = dt.datetime(2026, 11, 21, 10, 15)
VISIBILITY = 1  # seconds: a message not deleted comes back this soon (tests wait for it)


# moto_endpoint and pg_server: one moto server and one PostgreSQL server per session (tests/aws_fixtures.py).


@dataclass
class AwsLake:
    home: Path
    bucket: str
    prefix: str
    queue_url: str
    dlq_url: str
    s3: Any  # boto3 clients (no SQS type stubs are installed)
    sqs: Any
    dsn: str

    @property
    def registry(self):
        return load_registry([self.home / "sources"])

    def put(self, key: str, body: bytes) -> str:
        """Land an object under the landing prefix; returns its ETag."""
        return self.s3.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=body)["ETag"].strip('"')

    def dms_file(self, name: str, rows: list[dict], *, cdc: bool, table: str = "orders") -> tuple[str, bytes]:
        path = write_dms_file(self.home / "files" / "shop" / "app" / table / name, rows, COLUMNS, cdc=cdc)
        return path.relative_to(self.home / "files").as_posix(), path.read_bytes()

    def queued(self, url: str | None = None) -> int:
        """Messages in the queue, visible or in flight."""
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=url or self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    def ledger(self):
        return LakeResource().ledger


def _aws_lake(tmp_path, monkeypatch, endpoint: str, dsn: str, *, prefix: str = "dms/", max_receives: int = 2) -> AwsLake:
    for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "sources").mkdir()
    (tmp_path / "sources" / "shop.yaml").write_text(SHOP)
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    name = uuid.uuid4().hex[:8]  # moto's state lives as long as the server: every test its own bucket and queues
    bucket = f"landing-{name}"
    s3.create_bucket(Bucket=bucket)
    dlq_url = sqs.create_queue(QueueName=f"arrivals-dlq-{name}")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(QueueName=f"arrivals-{name}", Attributes={
        "VisibilityTimeout": str(VISIBILITY),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receives)}),
    })["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [{
        "QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}},
    }]})
    ledger_dsn = fresh_database(dsn)
    for k, v in {"LAKE_ENV": "aws", "LAKE_HOME": str(tmp_path), "LAKE_SOURCES_DIR": str(tmp_path / "sources"),
                 "LAKE_LANDING_BUCKET": bucket, "LAKE_LANDING_PREFIX": prefix, "LAKE_WAREHOUSE_URI": f"s3://{bucket}/warehouse",
                 "LAKE_LEDGER_DSN": ledger_dsn, "LAKE_ARRIVALS_QUEUE_URL": queue_url}.items():
        monkeypatch.setenv(k, v)
    return AwsLake(tmp_path, bucket, prefix, queue_url, dlq_url, s3, sqs, ledger_dsn)


@pytest.fixture
def aws(tmp_path, monkeypatch, moto_endpoint, pg_server) -> AwsLake:
    return _aws_lake(tmp_path, monkeypatch, moto_endpoint, pg_server)


def tick(sensor, instance, cursor: str | None = None):
    return sensor(build_sensor_context(instance=instance, cursor=cursor, resources={"lake": LakeResource()}))


def test_a_notification_records_the_file_and_requests_its_merge(aws):
    key, body = aws.dms_file(load_file_name(1), [{"order_id": 1, "total": 9.5}], cdc=False)
    etag = aws.put(key, body)
    assert aws.queued() == 2  # the s3:TestEvent of the notification configuration, then the ObjectCreated
    sensor = build_sqs_sensor(aws.registry)
    with DagsterInstance.ephemeral() as instance:
        result = tick(sensor, instance)
        [entry] = aws.ledger().entries()
        assert (entry.key, entry.checksum, entry.size, entry.table_id, entry.status) == (key, etag, len(body), ORDERS, LANDED)
        [req] = result.run_requests
        assert (req.job_name, req.asset_selection, req.run_key) == ("ingest_shop", [ORDERS_KEY], f"arrivals-shop-{ORDERS}:{entry.id}")
        assert aws.queued() == 0  # both messages deleted, the test event too
        again = tick(sensor, instance, result.cursor)
        assert not again.run_requests  # nothing new: no second request for the same file

        # The same key overwritten with new content: a new notification and a new file version.
        _, body2 = aws.dms_file(load_file_name(1), [{"order_id": 1, "total": 10.0}], cdc=False)
        aws.put(key, body2)
        third = tick(sensor, instance, again.cursor)
        assert [(e.key, e.file_version) for e in aws.ledger().entries()] == [(key, 1), (key, 2)]
        assert len(third.run_requests) == 1 and third.run_requests[0].run_key != req.run_key


def test_a_message_is_deleted_only_after_its_file_is_recorded(aws):
    key, body = aws.dms_file(cdc_file_name(T0), [{"Op": "I", "order_id": 1, "total": 1.0}], cdc=True)
    aws.put(key, body)
    sensor = build_sqs_sensor(aws.registry)
    assert aws.ledger().entries() == []  # the ledger's schema exists
    conn = psycopg2.connect(aws.dsn)
    conn.autocommit = True
    # The ledger's database refuses new rows (as a full disk or a failover would): a real error
    # from PostgreSQL on the INSERT of the recording transaction.
    conn.cursor().execute(
        "CREATE FUNCTION refuse_rows() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'ledger refuses new rows'; END $$;"
        "CREATE TRIGGER refuse BEFORE INSERT ON landed_files FOR EACH ROW EXECUTE FUNCTION refuse_rows()")
    with DagsterInstance.ephemeral() as instance:
        with pytest.raises(Exception, match="recording 1 landed files.*ledger refuses new rows"):
            tick(sensor, instance)
        conn.cursor().execute("DROP TRIGGER refuse ON landed_files")
        # Received (the error is the recording's), not deleted: back after the visibility timeout.
        assert aws.ledger().entries() == [] and aws.queued() == 2
        time.sleep(VISIBILITY + 0.2)
        result = tick(sensor, instance)  # redelivered, recorded, deleted
        assert [(e.key, e.file_version) for e in aws.ledger().entries()] == [(key, 1)]
        assert aws.queued() == 0 and len(result.run_requests) == 1
    conn.close()


def test_a_redelivered_message_recorded_before_a_crash_makes_no_second_version(aws):
    key, body = aws.dms_file(cdc_file_name(T0), [{"Op": "I", "order_id": 1, "total": 1.0}], cdc=True)
    aws.put(key, body)
    lake = LakeResource()
    # A consumer receives the messages and records their file, then dies before deleting them.
    batch = receive_batch(lake.arrivals_queue, lake.landing, aws.registry, max_messages=10, wait_seconds=1)
    assert batch is not None and batch.report.received == 2
    record_batch(batch, lake.ledger)
    assert batch.report.recorded == {ORDERS: 1}
    time.sleep(VISIBILITY + 0.2)
    assert aws.queued() == 2  # both came back
    with DagsterInstance.ephemeral() as instance:
        result = tick(build_sqs_sensor(aws.registry), instance)
    [entry] = aws.ledger().entries()  # recorded again: an identical re-delivery, no new row or version
    assert (entry.key, entry.file_version, entry.status) == (key, 1, LANDED)
    assert aws.queued() == 0 and len(result.run_requests) == 1


def test_url_encoded_keys_test_events_and_unroutable_keys(tmp_path, monkeypatch, moto_endpoint, pg_server):
    aws = _aws_lake(tmp_path, monkeypatch, moto_endpoint, pg_server, prefix="dms landing/é/")
    key, body = aws.dms_file(load_file_name(1), [{"order_id": 1, "total": 9.5}], cdc=False)
    aws.put(key, body)
    odd = "shop/app/orders/notes 2026 ü+1.txt"  # not a DMS name: unroutable, under its decoded key
    aws.put(odd, b"x")
    elsewhere = "crm/dbo/customers/LOAD00000001.parquet"  # a source with no registry file
    aws.put(elsewhere, b"y")
    aws.s3.put_object(Bucket=aws.bucket, Key="dms landing/é/", Body=b"")  # a folder marker: not a file
    lake = LakeResource()
    report = record_notifications(lake.arrivals_queue, lake.landing, lake.ledger, aws.registry)
    assert (report.received, report.test_events, report.deleted, report.poison) == (5, 1, 5, [])
    assert report.recorded == {ORDERS: 1}
    assert [k for k, _ in report.ignored] == ["dms landing/é/"]
    entries = {e.key: e for e in lake.ledger.entries()}
    assert set(entries) == {key, odd, elsewhere}
    assert entries[key].status == LANDED
    assert entries[odd].status == FAILED and entries[odd].table_id is None and "file extension must be one of" in entries[odd].reason
    assert entries[elsewhere].status == FAILED and "no registry table for source 'crm'" in entries[elsewhere].reason
    assert aws.queued() == 0


def test_a_poison_message_goes_to_the_dead_letter_queue(aws, capsys):
    bad_id = aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody="not json {")["MessageId"]
    aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]}))
    key, body = aws.dms_file(load_file_name(1), [{"order_id": 1, "total": 9.5}], cdc=False)
    aws.put(key, body)
    sensor = build_sqs_sensor(aws.registry)
    with DagsterInstance.ephemeral() as instance:
        first = tick(sensor, instance)  # the good messages are recorded; the poison ones stay
        assert [e.key for e in aws.ledger().entries()] == [key] and len(first.run_requests) == 1
        assert aws.queued() == 2 and aws.queued(aws.dlq_url) == 0
        logged = capsys.readouterr().err  # the sensor's log: each poison message named by its id
        assert f"poison message {bad_id}" in logged and "body is not JSON" in logged
        assert "record 0: missing field 's3'" in logged
        cursor = first.cursor
        for _ in range(2):  # maxReceiveCount = 2: the receive after the second one moves them
            time.sleep(VISIBILITY + 0.2)
            cursor = tick(sensor, instance, cursor).cursor
    assert aws.queued() == 0 and aws.queued(aws.dlq_url) == 2
    assert [e.key for e in aws.ledger().entries()] == [key]


def test_more_messages_than_the_cap_take_several_ticks(aws):
    keys = []
    for i in range(24):
        key, body = aws.dms_file(cdc_file_name(T0 + dt.timedelta(seconds=i)), [{"Op": "I", "order_id": i, "total": 1.0}], cdc=True)
        aws.put(key, body)
        keys.append(key)
    lake = LakeResource()
    assert record_notifications(lake.arrivals_queue, lake.landing, lake.ledger, aws.registry, max_seconds=0).received == 0
    sensor = build_sqs_sensor(aws.registry, max_messages=10)
    recorded, cursor = [], None
    with DagsterInstance.ephemeral() as instance:
        for _ in range(4):
            result = tick(sensor, instance, cursor)
            cursor = result.cursor
            recorded.append(len(aws.ledger().entries()))
    assert recorded == [9, 19, 24, 24]  # 25 messages (the test event first), 10 a tick
    assert sorted(e.key for e in aws.ledger().entries()) == sorted(keys) and aws.queued() == 0


def test_the_listing_resumes_after_each_folders_cursor(aws):
    """The reconciliation listing: after a full listing, each table folder is listed after its
    newest CDC name; LOAD files (they sort after CDC names) are listed every pass, so a reload's new
    version is seen; a CDC name sorting before the cursor is found by the next full listing."""
    lake = LakeResource()
    registry = aws.registry
    names = [cdc_file_name(T0 + dt.timedelta(minutes=m)) for m in (0, 1)]
    for m, name in enumerate(names):
        aws.put(*aws.dms_file(name, [{"Op": "I", "order_id": m, "total": 1.0}], cdc=True))
    load_key, load = aws.dms_file(load_file_name(1), [{"order_id": 1, "total": 9.5}], cdc=False)
    aws.put(load_key, load)

    def arrivals(cursor, **kw):
        return record_arrivals(lake.landing, lake.ledger, registry, cursor=cursor, lag_seconds=0, full_every=3, **kw)

    first = arrivals(ListingCursor())
    assert (first.full_listing, first.listed, first.recorded) == (True, 3, {ORDERS: 3})
    assert first.cursor is not None and first.cursor.after == {"shop/app/orders/": f"shop/app/orders/{names[1]}.parquet"}

    second = arrivals(first.cursor)  # after the cursor: only the LOAD file, already known
    assert (second.full_listing, second.listed, second.recorded) == (False, 1, {})

    newer = cdc_file_name(T0 + dt.timedelta(minutes=2))
    aws.put(*aws.dms_file(newer, [{"Op": "U", "order_id": 1, "total": 2.0}], cdc=True))
    aws.put(load_key, aws.dms_file(load_file_name(1), [{"order_id": 1, "total": 7.0}], cdc=False)[1])  # a reload
    late = cdc_file_name(T0 - dt.timedelta(minutes=1))  # lands now, sorts before the cursor
    aws.put(*aws.dms_file(late, [{"Op": "U", "order_id": 1, "total": 3.0}], cdc=True))
    third = arrivals(second.cursor)
    assert (third.full_listing, third.listed, third.recorded) == (False, 2, {ORDERS: 2})  # the newer CDC file, LOAD v2
    assert [e.file_version for e in lake.ledger.entries() if e.key == load_key] == [1, 2]
    assert third.cursor is not None and third.cursor.passes == 2

    fourth = arrivals(third.cursor)  # the third incremental pass: still blind to the late name
    assert (fourth.full_listing, fourth.recorded) == (False, {})
    fifth = arrivals(fourth.cursor)  # every full_every passes: the whole landing zone again
    assert (fifth.full_listing, fifth.listed, fifth.recorded) == (True, 5, {ORDERS: 1})
    assert f"shop/app/orders/{late}.parquet" in {e.key for e in lake.ledger.entries()}
    assert fifth.cursor is not None and fifth.cursor.passes == 0


def test_the_landing_sensor_keeps_its_listing_cursor_and_leaves_merge_requests_to_the_sqs_sensor(aws):
    aws.put(*aws.dms_file(cdc_file_name(T0), [{"Op": "I", "order_id": 1, "total": 1.0}], cdc=True))
    landing = build_landing_sensor(aws.registry, reconcile_only=True, cursor_lag_seconds=0)
    with DagsterInstance.ephemeral() as instance:
        result = tick(landing, instance)
        assert not result.run_requests  # recorded (the notifications are not read here), merge not requested
        assert [e.key for e in aws.ledger().entries()] == [f"shop/app/orders/{cdc_file_name(T0)}.parquet"]
        listing = json.loads(result.cursor)["listing"]
        assert listing["after"] == {"shop/app/orders/": f"shop/app/orders/{cdc_file_name(T0)}.parquet"}
        assert listing["full_listed"] and listing["passes"] == 0
        assert json.loads(tick(landing, instance, result.cursor).cursor)["listing"]["passes"] == 1
        # The SQS sensor requests the merge of what the listing recorded (its notification is
        # an identical re-delivery).
        [req] = tick(build_sqs_sensor(aws.registry), instance).run_requests
        assert req.asset_selection == [ORDERS_KEY]


def test_the_aws_code_location_runs_the_sqs_sensor_with_the_listing_behind_it(aws):
    defs = build_definitions(aws.registry, with_dbt=False)
    sensors = {s.name: s for s in defs.sensors}
    assert set(sensors) == {"sqs_sensor", "landing_sensor"}
    assert sensors["sqs_sensor"].default_status.value == "RUNNING"
    assert sensors["landing_sensor"].minimum_interval_seconds == 300


def test_from_put_object_to_a_merged_glue_table(aws):
    """End to end in aws mode: put_object, the notification through SQS, the sensor's run request,
    the materialization it asks for, the Iceberg table in Glue on S3."""
    from dagster import materialize

    aws.put(*aws.dms_file(load_file_name(1), [{"order_id": i, "total": float(i)} for i in (1, 2, 3)], cdc=False))
    aws.put(*aws.dms_file(cdc_file_name(T0), [{"Op": "U", "order_id": 2, "total": 20.0}, {"Op": "D", "order_id": 3, "total": 0.0}],
                          cdc=True))
    defs = build_definitions(aws.registry, with_dbt=False)
    sensor = next(s for s in defs.sensors if s.name == "sqs_sensor")
    with DagsterInstance.ephemeral() as instance:
        [req] = tick(sensor, instance).run_requests
        result = materialize(list(defs.assets), resources=dict(defs.resources), instance=instance, selection=req.asset_selection)
    assert result.success
    lake = LakeResource()
    table = lake.catalog.load_table(ORDERS)
    assert table.metadata_location.startswith(f"s3://{aws.bucket}/warehouse/")
    assert sorted((r["order_id"], r["total"]) for r in table.scan(selected_fields=("order_id", "total")).to_arrow().to_pylist()) == [
        (1, 1.0), (2, 20.0)]
    assert {e.status for e in lake.ledger.entries(ORDERS)} == {"committed"}


def test_the_queue_setting_reaches_child_processes(tmp_path):
    from lake_assets.core.settings import LakeSettings

    base = {"LAKE_ENV": "aws", "LAKE_WAREHOUSE_URI": "s3://w", "LAKE_LANDING_BUCKET": "b", "LAKE_LEDGER_DSN": "host=db",
            "LAKE_HOME": str(tmp_path)}
    assert LakeSettings.from_env(base).arrivals_queue_url is None
    url = "https://sqs.eu-west-1.amazonaws.com/123456789012/lake-arrivals"
    settings = LakeSettings.from_env({**base, "LAKE_ARRIVALS_QUEUE_URL": url})
    assert settings.arrivals_queue_url == url
    assert LakeSettings.from_env({**settings.to_env(), "LAKE_LEDGER_DSN": "host=db"}).arrivals_queue_url == url
    assert LakeSettings.local(tmp_path).arrivals_queue_url is None
