"""A PostgreSQL catalog's password reaches the Spark job through its environment only: never the job
spec (a file kept when a job fails), never spark-submit's command line (any user of the machine
reads /proc/<pid>/cmdline), never the job's log; and the merge still commits through the
password-protected catalog, with pyiceberg on the job's driver and Iceberg's JDBC catalog in Spark."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
from pathlib import Path
from urllib.parse import quote, quote_plus

import psycopg2
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from demo.dms_writer import cdc_file_name, load_file_name, table_dir, write_dms_file
from lake_assets.core.cdc.runner import merge_pending
from lake_assets.core.landing import LocalLandingZone
from lake_assets.core.ledger import sqlite_ledger
from lake_assets.core.spark.conf import CATALOG_PASSWORD_ENV, CatalogSettings, local_spark_conf, spark_submit_command
from lake_assets.core.spark.engine import SparkEngine, SparkJobError
from resources.spark import EmrServerless, LocalSpark, emr_serverless_launcher, plain_launcher
from tests.postgres_server import fresh_database, postgres_server
from tests.spark.conftest import make_table, record_landed, table_rows, unique_source

COLS = [("id", "long"), ("v", "long")]


class ProcessWatcher:
    """Records, while a job runs, the command line and environment of every process whose command
    line mentions `marker` (spark-submit's shell, its JVM, the Python driver), and every file under
    `folder` as it is at each look (the spec and the log before a successful job's cleanup)."""

    def __init__(self, marker: str, folder: Path):
        self.marker, self.folder = marker.encode(), folder
        self.commands: dict[int, bytes] = {}
        self.environments: dict[int, bytes] = {}
        self.files: dict[Path, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> ProcessWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    cmdline = (proc / "cmdline").read_bytes()
                    if self.marker in cmdline:
                        self.commands[int(proc.name)] = cmdline
                        self.environments[int(proc.name)] = (proc / "environ").read_bytes()
                except OSError:
                    continue  # the process ended between listing and reading
            for path in self.folder.rglob("*") if self.folder.exists() else ():
                try:
                    if path.is_file():
                        self.files[path] = path.read_bytes()
                except OSError:
                    continue


def _deliver(landing: Path, table) -> None:
    folder = table_dir(landing, table.source, table.schema, table.source_table)
    write_dms_file(folder / load_file_name(1), [{"id": i, "v": i} for i in range(1, 5)], COLS, cdc=False)
    changes = [{"id": 2, "v": 0, "Op": "D"}, {"id": 3, "v": 30, "Op": "U"}, {"id": 5, "v": 50, "Op": "I"}, {"id": None, "v": 1, "Op": "I"}]
    write_dms_file(folder / cdc_file_name(dt.datetime(2026, 11, 21, 10)), changes, COLS, cdc=True)


def _leaks(forms: list[bytes], where: dict) -> list[str]:
    """Where any form of the password (raw, URL-escaped) appears; the message shows none of it."""
    return [f"{name} holds the password (form {i})" for name, data in where.items() for i, form in enumerate(forms) if form in data]


@pytest.mark.spark
def test_a_postgres_catalog_password_reaches_the_job_only_through_its_environment(tmp_path, monkeypatch, capfd):
    password = secrets.token_urlsafe(18) + "@:/%"  # characters a URI must escape
    forms = [f.encode() for f in (password, quote_plus(password), quote(password, safe=""))]
    with postgres_server(password=password) as server:
        dsn = fresh_database(server)
        params = dict(item.split("=", 1) for item in dsn.split())
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(dsn.replace(f"password={password}", "password=wrong")).close()
        bare_uri = f"postgresql+psycopg2://lake@127.0.0.1:{params['port']}/{params['dbname']}"
        catalog = SqlCatalog("lake", uri=bare_uri.replace("lake@", f"lake:{quote_plus(password)}@"),
                             warehouse=f"file://{tmp_path}/warehouse")

        table = make_table(unique_source("pgsecret"), columns=COLS)
        landing = tmp_path / "landing"
        _deliver(landing, table)
        ledger = sqlite_ledger(tmp_path / "ledger.db")
        record_landed(LocalLandingZone(landing), ledger, [table])
        jobs = tmp_path / "jobs"
        engine = SparkEngine(plain_launcher(LocalSpark(workdir=jobs, master="local[1]", driver_memory="1g"), echo=True),
                             landing=str(landing), scratch=str(tmp_path / "scratch"))

        def merge():
            return merge_pending(table, catalog=catalog, ledger=ledger, landing=LocalLandingZone(landing), engine=engine)

        # A job that dies after its sidecar writes (so pyiceberg on its driver did log in) keeps its
        # run directory, spec and log included: the files an operator reads, and leaves lying around.
        monkeypatch.setenv("LAKE_FAILPOINT", "spark:before_commit")
        with ProcessWatcher(str(jobs), jobs) as failed_run:
            with pytest.raises(SparkJobError, match="without reporting a result"):
                merge()
        kept = {p: p.read_bytes() for p in jobs.rglob("*") if p.is_file()}
        assert {p.name for p in kept} >= {"spec.json", "job.log"}
        [spec_file] = [p for p in kept if p.name == "spec.json"]
        assert json.loads(kept[spec_file])["catalog"]["uri"] == bare_uri
        assert _leaks(forms, kept) == []
        drivers = [pid for pid, cmd in failed_run.commands.items() if b"merge_job.py" in cmd]
        assert len(failed_run.commands) >= 2 and drivers, "the watcher must have seen spark-submit and the job"
        assert _leaks(forms, failed_run.commands) == []
        # The one way in: the job's environment (readable only by its own user, unlike cmdline).
        assert all(f"{CATALOG_PASSWORD_ENV}={password}".encode() in failed_run.environments[pid] for pid in drivers)

        # The retry commits through Spark's JDBC catalog on the same password-protected database.
        monkeypatch.delenv("LAKE_FAILPOINT")
        capfd.readouterr()
        with ProcessWatcher(str(jobs), jobs) as run:
            [result] = merge().results
        log = capfd.readouterr()
        assert "[lake merge job]" in log.err and "committed snapshot" in log.err
        assert (result.inserted, result.deleted, result.quarantined, result.already_committed) == (4, 0, 1, False)
        assert [(r["id"], r["v"]) for r in table_rows(catalog, table.identifier, ["id"])] == [(1, 1), (3, 30), (4, 4), (5, 50)]
        assert ledger.status_counts(table.identifier)["committed"] == 2
        assert any(p.name == "spec.json" for p in run.files) and run.commands
        assert _leaks(forms, run.commands) == []
        assert _leaks(forms, run.files) == []
        assert _leaks(forms, {"job output": (log.out + log.err).encode()}) == []


@pytest.mark.parametrize("uri", [
    "postgresql+psycopg2://lake:s3cr%40t%3A@db.internal:5432/catalog",
    "postgresql+psycopg2://lake@db.internal:5432/catalog?password=s3cr%40t%3A&sslmode=require",
])
def test_catalog_settings_keep_the_password_out_of_the_spec_and_the_command_line(uri):
    settings = CatalogSettings(type="sql", warehouse="file:///lake/warehouse", uri=uri)
    assert settings.password == "s3cr@t:"
    spec = json.dumps(settings.to_json_dict())
    command = " ".join(spark_submit_command("merge_job.py", local_spark_conf(CatalogSettings.from_json_dict(json.loads(spec))), []))
    for text in (spec, command, repr(settings)):
        assert "s3cr" not in text
    assert "lake@db.internal:5432/catalog" in spec and "jdbc.user=lake" in command
    assert settings.secret_env() == {CATALOG_PASSWORD_ENV: "s3cr@t:"}

    # In the job: the spec's settings plus its environment give back the catalog's login.
    job = CatalogSettings.from_json_dict(json.loads(spec)).with_secret_env({CATALOG_PASSWORD_ENV: "s3cr@t:"})
    assert job.secret_spark_conf() == {"spark.sql.catalog.lake.jdbc.password": "s3cr@t:"}
    assert job.uri_with_password().startswith("postgresql+psycopg2://lake:s3cr%40t%3A@db.internal:5432/catalog")
    assert CatalogSettings.from_json_dict(json.loads(spec)).with_secret_env({}).secret_spark_conf() == {}


def test_emr_serverless_refuses_a_catalog_password_rather_than_put_it_in_the_job_run():
    emr = EmrServerless(application_id="app", execution_role_arn="arn:aws:iam::1:role/r", script_uri="s3://b/job.py",
                        environment_uri="s3://b/env.tar.gz", jobs_uri="s3://b/jobs")
    launch = emr_serverless_launcher(None, emr, emr_client=object(), logs_client=object())  # never reached
    spec = {"table": {"source": "shop", "name": "orders"}, "batch_id": "b1", "catalog": {}}
    with pytest.raises(SparkJobError, match=rf"shop\.orders: EMR Serverless .*password \({CATALOG_PASSWORD_ENV}\) cannot be handed"):
        launch(spec, {CATALOG_PASSWORD_ENV: "x"})
