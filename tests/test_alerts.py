"""Slack alerts against a local HTTP endpoint on 127.0.0.1 that records what Slack's Web API would
receive (slack_sdk's WebClient pointed at it by LAKE_SLACK_API_URL): failed runs, and tables whose
files failed or whose quarantine rate was breached. The token reaches the endpoint and no log."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    MetadataValue,
    Output,
    SkipReason,
    asset,
    build_run_status_sensor_context,
    build_sensor_context,
    job,
    materialize,
    op,
)

from lake_assets.alerts import build_alert_sensors
from lake_assets.checks import LEDGER_RECONCILED, QUARANTINE_RATE, UNIQUE_KEYS, quarantine_rate
from lake_assets.core.registry import load_registry
from lake_assets.core.settings import LakeSettings
from lake_assets.core.slack import SlackError, post_message
from lake_assets.definitions import build_definitions

TOKEN = "xoxb-test-0000-not-a-real-token"


class SlackRecorder:
    """chat.postMessage as Slack answers it; `ok` False plays a refused post."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.ok = True
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorder.posts.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                                       "body": json.loads(body or b"{}")})
                answer = {"ok": True, "ts": "1700000000.000100"} if recorder.ok else {"ok": False, "error": "channel_not_found"}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/"


@pytest.fixture
def slack():
    recorder = SlackRecorder()
    recorder.thread.start()
    try:
        yield recorder
    finally:
        recorder.server.shutdown()
        recorder.server.server_close()


@pytest.fixture
def settings(tmp_path, slack) -> LakeSettings:
    return LakeSettings.from_env({"LAKE_HOME": str(tmp_path / "lake"), "LAKE_SLACK_TOKEN": TOKEN, "LAKE_SLACK_API_URL": slack.url,
                                  "LAKE_SLACK_CHANNEL": "#lake-alerts", "LAKE_DAGSTER_URL": "http://dagster.example/"})


def _sensors(settings: LakeSettings) -> dict:
    return {s.name: s for s in build_alert_sensors(settings)}


def test_settings_never_show_the_token(settings):
    assert TOKEN not in repr(settings) and TOKEN not in json.dumps(settings.to_env())


def test_run_failure_is_posted_with_its_error(settings, slack, caplog):
    caplog.set_level(logging.DEBUG)

    @op
    def merge_orders():
        raise RuntimeError("ledger unreachable at 10.0.0.5")

    @job
    def ingest_shop():
        merge_orders()

    with DagsterInstance.ephemeral() as instance:
        result = ingest_shop.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        (failure,) = [e for e in result.all_events if e.event_type == DagsterEventType.RUN_FAILURE]
        context = build_run_status_sensor_context(sensor_name="slack_on_run_failure", dagster_instance=instance,
                                                  dagster_run=result.dagster_run, dagster_event=failure).for_run_failure()
        _sensors(settings)["slack_on_run_failure"](context)

    (post,) = slack.posts
    assert post["path"] == "/api/chat.postMessage"
    assert post["authorization"] == f"Bearer {TOKEN}"
    assert post["body"]["channel"] == "#lake-alerts"
    text = post["body"]["text"]
    assert "`ingest_shop` failed" in text and "ledger unreachable at 10.0.0.5" in text and "merge_orders" in text
    assert f"http://dagster.example/runs/{result.run_id}" in text
    assert TOKEN not in caplog.text  # slack_sdk logs request headers at DEBUG: our client must not


def test_failed_files_and_quarantine_rate_are_posted_once(settings, slack):
    """The real quarantine_rate check of a registry table, a failing ledger_reconciled, and a check
    that is not alerted on; the sensor posts the two, once, and nothing before its first tick."""
    table = load_registry().tables[0]
    key = AssetKey(table.asset_key_path)
    breached = quarantine_rate(table, key, (100, 40))
    assert not breached.passed
    specs = [AssetCheckSpec(n, asset=key) for n in (QUARANTINE_RATE, LEDGER_RECONCILED, UNIQUE_KEYS)]

    def table_asset(results):
        @asset(key=key, check_specs=specs)
        def merged():
            yield Output(None)
            yield from results
        return merged

    bad_ledger = AssetCheckResult(asset_key=key, check_name=LEDGER_RECONCILED, passed=False, severity=AssetCheckSeverity.ERROR,
                                  description="2 file(s) failed and stay retryable",
                                  metadata={"failed_files": 2, "files": MetadataValue.md("| `dms/a.csv` | failed | truncated gzip |")})
    dupes = AssetCheckResult(asset_key=key, check_name=UNIQUE_KEYS, passed=False)
    sensor = _sensors(settings)["slack_on_table_alerts"]
    with DagsterInstance.ephemeral() as instance:
        # an old failure, from before the sensor's first tick: not posted
        materialize([table_asset([breached, bad_ledger, dupes])], instance=instance, raise_on_error=False)
        ctx = build_sensor_context(instance=instance)
        assert isinstance(sensor(ctx), SkipReason) and not slack.posts

        materialize([table_asset([breached, bad_ledger, dupes])], instance=instance, raise_on_error=False)
        ctx = build_sensor_context(instance=instance, cursor=ctx.cursor)
        sensor(ctx)
        texts = [p["body"]["text"] for p in slack.posts]
        assert len(texts) == 2
        (rate,) = [t for t in texts if QUARANTINE_RATE in t]
        assert f"`{'/'.join(key.path)}`: quarantine rate breached" in rate and "rate 0.4" in rate and "max_rate" in rate
        (files,) = [t for t in texts if LEDGER_RECONCILED in t]
        assert "failed_files 2" in files and "dms/a.csv" in files and "truncated gzip" in files

        # the cursor moved on: the next tick posts nothing again; a passing check is not an alert
        ok = quarantine_rate(table, key, (100, 0))
        materialize([table_asset([ok, AssetCheckResult(asset_key=key, check_name=LEDGER_RECONCILED, passed=True),
                                  AssetCheckResult(asset_key=key, check_name=UNIQUE_KEYS, passed=True)])],
                    instance=instance)
        assert isinstance(sensor(build_sensor_context(instance=instance, cursor=ctx.cursor)), SkipReason)
        assert len(slack.posts) == 2


def test_a_refused_post_raises_without_the_token(settings, slack):
    slack.ok = False
    with pytest.raises(SlackError, match="channel_not_found") as info:
        post_message(settings, "hello")
    assert TOKEN not in str(info.value)


def test_token_from_secrets_manager(tmp_path, slack, monkeypatch, moto_endpoint):
    """LAKE_SLACK_TOKEN_SECRET_ID: the token is read from Secrets Manager (moto's server stands in)."""
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    name = f"lake/slack-token-{uuid.uuid4().hex[:6]}"  # moto's server is the session's: a name of this test's own
    boto3.client("secretsmanager", endpoint_url=moto_endpoint, region_name="us-east-1").create_secret(Name=name, SecretString=TOKEN)
    settings = LakeSettings.from_env({
        "LAKE_ENV": "aws", "LAKE_HOME": str(tmp_path), "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": moto_endpoint,
        "LAKE_WAREHOUSE_URI": "s3://w/warehouse", "LAKE_LANDING_BUCKET": "landing", "LAKE_LEDGER_DSN": "host=127.0.0.1",
        "LAKE_SLACK_TOKEN_SECRET_ID": name, "LAKE_SLACK_API_URL": slack.url})
    post_message(settings, "from the secret")
    assert [p["authorization"] for p in slack.posts] == [f"Bearer {TOKEN}"]


def test_alert_sensors_only_with_a_token(tmp_path, settings):
    registry = load_registry()
    without = build_definitions(registry, with_dbt=False, settings=LakeSettings.local(tmp_path))
    names = {s.name for s in without.sensors or []}
    assert not names & {"slack_on_run_failure", "slack_on_table_alerts"}
    with_token = build_definitions(registry, with_dbt=False, settings=settings)
    assert {"slack_on_run_failure", "slack_on_table_alerts"} <= {s.name for s in with_token.sensors or []}
