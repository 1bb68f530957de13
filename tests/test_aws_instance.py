"""The production Dagster instance (dagster.aws.yaml) on a real PostgreSQL server: written into
DAGSTER_HOME for LAKE_ENV=aws, opened from the environment, a run made and read back by a second
instance, as the daemon and the webserver share it."""

from __future__ import annotations

import uuid

import psycopg2
import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, asset, materialize
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from lake_assets.core.settings import LakeSettings
from lake_assets.instance import AWS_INSTANCE_CONFIG, prepare_dagster_home
from tests.postgres_server import fresh_database, postgres_server


@asset
def bookings_count() -> int:
    return 3


def _aws_settings(tmp_path, dsn: str) -> LakeSettings:
    return LakeSettings.from_env({
        "LAKE_ENV": "aws", "LAKE_HOME": str(tmp_path / "lake"), "DAGSTER_HOME": str(tmp_path / "dagster"),
        "LAKE_WAREHOUSE_URI": "s3://w/warehouse", "LAKE_LANDING_BUCKET": "landing", "LAKE_LEDGER_DSN": dsn,
    })


def test_production_instance_stores_runs_in_postgres(tmp_path, monkeypatch):
    password = uuid.uuid4().hex
    with postgres_server(password=password) as server_dsn:
        dsn = fresh_database(server_dsn)
        params = dict(part.split("=", 1) for part in dsn.split())
        home = prepare_dagster_home(_aws_settings(tmp_path, dsn))
        assert (home / "dagster.yaml").read_text() == AWS_INSTANCE_CONFIG.read_text()
        assert password not in (home / "dagster.yaml").read_text()
        for var, value in {"DAGSTER_PG_HOST": params["host"], "DAGSTER_PG_PORT": params["port"], "DAGSTER_PG_USER": params["user"],
                           "DAGSTER_PG_PASSWORD": password, "DAGSTER_PG_DB": params["dbname"]}.items():
            monkeypatch.setenv(var, value)

        with DagsterInstance.from_config(str(home)) as instance:
            assert isinstance(instance.run_storage, PostgresRunStorage)
            assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
            assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
            assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
            limits = instance.get_concurrency_config()
            assert limits.run_queue_config is not None and limits.run_queue_config.max_concurrent_runs == 10
            assert [t["value"] for t in limits.run_queue_config.tag_concurrency_limits] == ["dbt_layers"]
            run_id = materialize([bookings_count], instance=instance).run_id

        # Another process (the webserver, the daemon) opening the same configuration sees the run.
        with DagsterInstance.from_config(str(home)) as other:
            run = other.get_run_by_id(run_id)
            assert run is not None and run.status == DagsterRunStatus.SUCCESS
            materialization = other.get_latest_materialization_event(AssetKey("bookings_count"))
            assert materialization is not None and materialization.run_id == run_id

        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT run_id FROM runs")
                assert [r[0] for r in cur.fetchall()] == [run_id]
        finally:
            conn.close()


def test_wrong_password_is_refused(tmp_path, monkeypatch, caplog):
    """The password really is checked: the instance's storage does not open without it."""
    with postgres_server(password=uuid.uuid4().hex) as server_dsn:
        params = dict(part.split("=", 1) for part in server_dsn.split())
        home = prepare_dagster_home(_aws_settings(tmp_path, server_dsn))
        for var, value in {"DAGSTER_PG_HOST": params["host"], "DAGSTER_PG_PORT": params["port"], "DAGSTER_PG_USER": params["user"],
                           "DAGSTER_PG_PASSWORD": "not-the-password", "DAGSTER_PG_DB": "postgres"}.items():
            monkeypatch.setenv(var, value)
        # dagster-postgres retries the connection, logging each refusal, then gives up
        with pytest.raises(Exception, match="too many retries for DB connection"):
            with DagsterInstance.from_config(str(home)) as instance:
                instance.get_runs()
        assert "password authentication failed" in caplog.text
        assert "not-the-password" not in caplog.text
