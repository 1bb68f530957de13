"""SQL sources (`format: sql`) against a real PostgreSQL: extracts by watermark land files that the
normal merge takes; after each extract and merge the lake table equals the source table (deletes
once a full extract has run); a crash between extract and commit neither skips nor repeats a change."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest

from lake_assets.core.cdc.extracts import DELTA, FULL
from lake_assets.core.cdc.inprocess import InProcessEngine
from lake_assets.core.cdc.runner import MergeOptions, merge_pending
from lake_assets.core.ledger import COMMITTED
from lake_assets.core.registry import load_registry
from lake_assets.core.settings import current_settings
from lake_assets.core.sql_source import ExtractError, extract_table
from tests.lakehelpers import make_lake
from tests.postgres_server import fresh_database, postgres_server

CRM_YAML = Path(__file__).parent / "data" / "sql" / "crm.yaml"  # README's example
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def pg_server():
    with postgres_server() as dsn:
        yield dsn


class Crm:
    """The source database and a lake whose registry is crm.yaml."""

    def __init__(self, home: Path, dsn: str):
        self.dsn = dsn
        self.db = psycopg2.connect(dsn)
        self.db.autocommit = True
        self.sql("CREATE TABLE public.customers (customer_id bigint PRIMARY KEY, name text, balance numeric(12,2), "
                 "updated_at timestamptz NOT NULL)")
        self.sql("CREATE SCHEMA billing")
        self.sql("CREATE TABLE billing.invoice (invoice_id bigint PRIMARY KEY, customer_id bigint, amount numeric(12,2))")
        # No lag, so a row is extractable as soon as it is written; test_lag... tests crm.yaml's lag.
        text = CRM_YAML.read_text()
        assert "lag: 1m" in text
        self.lake = make_lake(home, {"crm": text.replace("lag: 1m", "lag: 0s")})
        assert not self.lake.registry.errors
        self.customers = self.lake.registry.get("crm", "customers")
        self.invoices = self.lake.registry.get("crm", "invoices")

    def sql(self, text: str, params=()) -> None:
        self.db.cursor().execute(text, params)

    def source(self, table: str, key: str) -> list[dict]:
        cur = self.db.cursor()
        cur.execute(f"SELECT * FROM {table} ORDER BY {key}")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def lake_rows(self, table, key: str) -> list[dict]:
        names = [c.name for c in table.columns] if table.columns else None
        rows = self.lake.rows(table.identifier, names)
        if names is None:
            rows = [{k: v for k, v in r.items() if not k.startswith("_lake")} for r in rows]
        return sorted(rows, key=lambda r: r[key])

    def extract(self, table, **kw):
        return extract_table(table, ledger=self.lake.env.ledger, landing=self.lake.env.landing, **kw)

    def merge(self, table, **kw):
        env = self.lake.env
        run = merge_pending(table, catalog=env.catalog, ledger=env.ledger, landing=env.landing, engine=InProcessEngine(), **kw)
        assert not run.busy and not run.failed_files, run
        return run

    def customer(self, cid: int, name: str, balance: str, at: dt.datetime | None = None) -> None:
        """Insert or update a customer, stamped with the database clock as an application does (or `at`)."""
        self.sql("INSERT INTO public.customers VALUES (%s, %s, %s, COALESCE(%s, clock_timestamp())) ON CONFLICT (customer_id) "
                 "DO UPDATE SET name = EXCLUDED.name, balance = EXCLUDED.balance, updated_at = EXCLUDED.updated_at",
                 (cid, name, balance, at))


@pytest.fixture
def crm(tmp_path, pg_server, monkeypatch):
    dsn = fresh_database(pg_server)
    monkeypatch.setenv("CRM_DB_DSN", dsn)
    monkeypatch.setenv("LAKE_HOME", str(tmp_path))  # the Dagster resources' lake is this one
    current_settings.cache_clear()
    c = Crm(tmp_path, dsn)
    yield c
    c.db.close()


def _totals(run) -> tuple[int, int, int]:
    return (sum(r.inserted for r in run.results), sum(r.updated for r in run.results), sum(r.deleted for r in run.results))


def test_the_readme_example_is_this_tested_file():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert CRM_YAML.read_text().strip() in readme
    registry = load_registry([CRM_YAML.parent], cache=False)
    assert not registry.errors
    assert {t.identifier: (t.format, t.load) for t in registry.tables} == {
        "crm.customers": ("sql", "upsert"), "crm.invoices": ("sql", "upsert")}


def test_inserts_updates_and_deletes_between_extracts(crm):
    c = crm
    for i in range(1, 5):
        c.customer(i, f"c{i}", f"{i}.50")
    first = c.extract(c.customers)
    assert (first.info.kind, first.info.number, first.info.rows, first.info.low) == (FULL, 1, 4, None)
    assert first.key == "crm/public/customers/00000001-full.parquet"
    assert _totals(c.merge(c.customers)) == (4, 0, 0)
    assert c.lake_rows(c.customers, "customer_id") == c.source("public.customers", "customer_id")
    assert c.lake_rows(c.customers, "customer_id")[0]["balance"] == Decimal("1.50")

    # Between extracts: an insert, an update, a delete.
    c.customer(5, "c5", "5.00")
    c.customer(2, "c2 renamed", "20.00")
    [deleted] = [r for r in c.source("public.customers", "customer_id") if r["customer_id"] == 3]
    c.sql("DELETE FROM public.customers WHERE customer_id = 3")
    delta = c.extract(c.customers)
    assert (delta.info.kind, delta.info.number, delta.info.low) == (DELTA, 2, first.info.high)
    assert delta.info.rows == 2  # only the rows whose watermark moved
    assert _totals(c.merge(c.customers)) == (1, 1, 0)
    # A delete leaves no row to find by watermark: the lake keeps it until the next full extract.
    assert c.lake_rows(c.customers, "customer_id") == sorted(c.source("public.customers", "customer_id") + [deleted],
                                                             key=lambda r: r["customer_id"])

    # Nothing changed: an empty delta, nothing merged.
    empty = c.extract(c.customers)
    assert (empty.info.kind, empty.info.rows, empty.info.low) == (DELTA, 0, delta.info.high)
    assert _totals(c.merge(c.customers)) == (0, 0, 0)

    # A full extract a day later catches the delete, and a row a long transaction stamped with an
    # updated_at below the deltas' range (they missed it); unchanged rows are not rewritten.
    c.customer(6, "late", "6.00", at=T0)
    missed = c.extract(c.customers)
    assert (missed.info.kind, missed.info.rows) == (DELTA, 0)
    full = c.extract(c.customers, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    assert (full.info.kind, full.info.number, full.info.rows) == (FULL, 5, 5)
    assert _totals(c.merge(c.customers)) == (1, 0, 1)
    assert c.lake_rows(c.customers, "customer_id") == c.source("public.customers", "customer_id")

    # And deltas go on from the full extract's watermark.
    c.sql("UPDATE public.customers SET balance = 0, updated_at = clock_timestamp() WHERE customer_id = 1")
    after = c.extract(c.customers)
    assert (after.info.kind, after.info.low, after.info.rows) == (DELTA, full.info.high, 1)
    assert _totals(c.merge(c.customers)) == (0, 1, 0)
    assert c.lake_rows(c.customers, "customer_id") == c.source("public.customers", "customer_id")


def test_a_delta_leaves_the_last_lag_of_rows_for_the_next_extract(crm, tmp_path):
    """crm.yaml as written (lag: 1m): a row stamped within the last minute waits; an older one is read."""
    c = crm
    lagged = make_lake(tmp_path / "lagged", {"crm": CRM_YAML.read_text()}).registry.get("crm", "customers")
    assert lagged.extract is not None and lagged.extract.lag == "1m"
    c.customer(1, "old", "1.00", at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    full = extract_table(lagged, ledger=c.lake.env.ledger, landing=c.lake.env.landing)
    assert full.info.rows == 1
    # 2 is stamped at the full extract's bound (a minute before it ran): the delta's range starts there.
    c.customer(2, "at the bound", "2.00", at=dt.datetime.fromisoformat(full.info.high))
    c.customer(3, "just now", "3.00")
    delta = extract_table(lagged, ledger=c.lake.env.ledger, landing=c.lake.env.landing)
    assert delta.info.rows == 1  # 2; 3 is younger than the lag: the first extract a minute later reads it
    high = dt.datetime.fromisoformat(delta.info.high)
    assert dt.timedelta(seconds=55) < dt.datetime.now(dt.UTC) - high < dt.timedelta(seconds=120)
    assert delta.info.low == full.info.high
    c.merge(lagged)
    assert [r["name"] for r in c.lake_rows(lagged, "customer_id")] == ["old", "at the bound"]


def test_extracts_merged_together_apply_in_extract_order(crm):
    """Several extracts pending in one batch (a merge that did not run): an older delta before a full
    extract is superseded by it, a delta after it applies on top."""
    c = crm
    c.customer(1, "a", "1.00")
    c.customer(2, "b", "2.00")
    c.extract(c.customers)
    c.merge(c.customers)
    c.customer(1, "a2", "1.00")
    c.extract(c.customers)  # delta: a2
    c.sql("DELETE FROM public.customers WHERE customer_id = 2")
    c.customer(1, "a3", "1.00")
    c.extract(c.customers, full=True)  # full: a3, and 2 is gone
    c.customer(1, "a4", "1.00")
    c.customer(3, "c", "3.00")
    c.extract(c.customers)  # delta: a4, c
    run = c.merge(c.customers)
    assert len(run.results) == 1 and len(run.results[0].files) == 3
    assert _totals(run) == (1, 1, 1)
    assert c.lake_rows(c.customers, "customer_id") == c.source("public.customers", "customer_id")


def test_integer_watermark_and_a_full_extract_every_n(crm):
    c = crm
    for i in range(1, 4):
        c.sql("INSERT INTO billing.invoice VALUES (%s, %s, %s)", (i, 10 + i, f"{i}.00"))
    kinds = []
    for step in range(5):
        done = c.extract(c.invoices)
        kinds.append(done.info.kind)
        c.merge(c.invoices)
        lake = c.lake_rows(c.invoices, "invoice_id")
        source = c.source("billing.invoice", "invoice_id")
        if done.info.kind == FULL:
            assert lake == [r | {"amount": str(r["amount"])} for r in source]  # numeric undeclared: lands as its text
        c.sql("INSERT INTO billing.invoice VALUES (%s, 1, 1)", (10 + step,))
        if step == 1:
            c.sql("DELETE FROM billing.invoice WHERE invoice_id = 1")
    assert kinds == [FULL, DELTA, DELTA, FULL, DELTA]  # full_every: 3
    assert [r["invoice_id"] for r in c.lake_rows(c.invoices, "invoice_id")] == [2, 3, 10, 11, 12, 13]


class Crash(Exception):
    pass


def _crash_at(point: str):
    def failpoint(name: str) -> None:
        if name == point:
            raise Crash(name)
    return failpoint


def test_a_crash_after_the_write_reuses_the_written_file(crm):
    c = crm
    c.customer(1, "a", "1.00")
    c.extract(c.customers)
    c.merge(c.customers)
    c.customer(2, "b", "2.00")
    with pytest.raises(Crash):
        c.extract(c.customers, failpoint=_crash_at("after_extract_write"))
    landed = sorted(p.name for p in (c.lake.landing / "crm" / "public" / "customers").iterdir())
    assert landed == ["00000001-full.parquet", "00000002-delta.parquet"]
    assert len(c.lake.env.ledger.entries("crm.customers")) == 1  # written, not recorded: the watermark has not moved
    c.customer(3, "c", "3.00")  # changes after the crash go to the next extract, not lost
    again = c.extract(c.customers)
    assert again.reused and again.key.endswith("00000002-delta.parquet") and again.info.rows == 1
    assert _totals(c.merge(c.customers)) == (1, 0, 0)
    nxt = c.extract(c.customers)
    assert (nxt.reused, nxt.info.number, nxt.info.rows, nxt.info.low) == (False, 3, 1, again.info.high)
    assert _totals(c.merge(c.customers)) == (1, 0, 0)
    assert c.lake_rows(c.customers, "customer_id") == c.source("public.customers", "customer_id")


def test_a_crash_between_extract_and_commit_neither_skips_nor_repeats(crm):
    c = crm
    c.customer(1, "a", "1.00")
    c.extract(c.customers)
    c.merge(c.customers)
    c.customer(2, "b", "2.00")
    c.customer(1, "a2", "1.50")
    with pytest.raises(Crash):  # recorded, then the process dies before any merge
        c.extract(c.customers, failpoint=_crash_at("after_extract_record"))
    c.customer(3, "c", "3.00")
    c.customer(2, "b2", "2.50")
    rerun = c.extract(c.customers)  # starts where the recorded extract ended
    assert (rerun.reused, rerun.info.number, rerun.info.rows) == (False, 3, 2)
    run = c.merge(c.customers)
    assert sorted(f.rsplit("/", 1)[1] for r in run.results for f in r.files) == ["00000002-delta.parquet", "00000003-delta.parquet"]
    assert _totals(run) == (2, 1, 0)  # 2 and 3 inserted (2's newer version wins), 1 updated: each change once
    assert c.lake_rows(c.customers, "customer_id") == c.source("public.customers", "customer_id")
    statuses = {e.key.rsplit("/", 1)[1]: e.status for e in c.lake.env.ledger.entries("crm.customers")}
    assert set(statuses.values()) == {COMMITTED} and len(statuses) == 3


@pytest.mark.parametrize("point", ["before_commit", "after_commit"])
def test_a_failure_inside_the_merge_keeps_the_extract_and_the_table_exact(crm, point):
    """The merge of an extract fails just before or just after its Iceberg commit: the extract stays
    recorded (the watermark does not go back), and the table ends exact, each change applied once."""
    c = crm
    c.customer(1, "a", "1.00")
    c.extract(c.customers)
    c.merge(c.customers)
    c.customer(1, "a2", "1.00")
    c.customer(2, "b", "2.00")
    c.extract(c.customers)
    env = c.lake.env
    run = merge_pending(c.customers, catalog=env.catalog, ledger=env.ledger, landing=env.landing, engine=InProcessEngine(),
                        failpoint=_crash_at(point))
    if point == "before_commit":
        assert list(run.failed_files) == ["crm/public/customers/00000002-delta.parquet"]
        assert [r["name"] for r in c.lake_rows(c.customers, "customer_id")] == ["a"]  # nothing committed
        c.customer(3, "c", "3.00")
        c.extract(c.customers)  # the next extract starts after the failed one: nothing read twice
        run = c.merge(c.customers, options=MergeOptions(retry_failed=True))
        assert _totals(run) == (2, 1, 0)
    else:  # committed, then the failure: the ledger is reconciled with the commit, nothing merged twice
        assert _totals(run) == (1, 1, 0) and not run.failed_files
        assert _totals(c.merge(c.customers)) == (0, 0, 0)
    assert c.lake_rows(c.customers, "customer_id") == c.source("public.customers", "customer_id")
    assert {e.status for e in env.ledger.entries("crm.customers")} == {COMMITTED}


def test_a_missing_or_bad_dsn_names_the_table_and_field(crm, monkeypatch):
    monkeypatch.delenv("CRM_DB_DSN")
    with pytest.raises(ExtractError, match=r"crm\.customers: field connection\.dsn_env: environment variable CRM_DB_DSN is not set"):
        crm.extract(crm.customers)
    monkeypatch.setenv("CRM_DB_DSN", "host=127.0.0.1 port=1 user=lake password=sekrit-pw dbname=crm")
    with pytest.raises(ExtractError) as err:
        crm.extract(crm.customers)
    assert "crm.customers: cannot connect to source crm's database (field connection.dsn_env: CRM_DB_DSN)" in str(err.value)
    assert "sekrit-pw" not in str(err.value)
    assert crm.lake.env.ledger.entries("crm.customers") == []  # nothing landed, nothing recorded


def test_a_missing_watermark_column_names_the_table_and_field(crm):
    crm.sql("ALTER TABLE public.customers RENAME COLUMN updated_at TO changed_at")
    with pytest.raises(ExtractError, match=r"crm\.customers: field extract\.watermark: column 'updated_at' is not in "
                                           r'"public"\."customers" \(its columns: customer_id, name, balance, changed_at'):
        crm.extract(crm.customers)
    crm.sql("ALTER TABLE public.customers RENAME COLUMN changed_at TO updated_at")
    crm.sql("ALTER TABLE public.customers ALTER COLUMN updated_at TYPE text")
    with pytest.raises(ExtractError, match=r"field extract\.watermark: column 'updated_at' .* is text; a watermark is an "
                                           "increasing integer, date or timestamp column"):
        crm.extract(crm.customers)
    crm.sql("DROP TABLE billing.invoice")
    with pytest.raises(ExtractError, match=r'crm\.invoices: field extract\.table: cannot read "billing"\."invoice": .*does not exist'):
        crm.extract(crm.invoices)


BAD = """
source: crm
{connection}
defaults: {{format: sql, refresh: "0 * * * *"}}
tables:
  - name: customers
    schema: public
    primary_key: [customer_id]
{table}
"""


@pytest.mark.parametrize(("connection", "table", "message"), [
    ("connection: {dsn_env: CRM_DB_DSN}", "", "table 'customers': field extract: a format sql table needs extract"),
    ("", "    extract: {watermark: updated_at}", "table 'customers': field connection: a format sql table's source needs connection"),
    ("connection: {dsn_env: 'postgresql://u:p@h/db'}", "    extract: {watermark: updated_at}", "field connection.dsn_env: dsn_env must name an environment variable"),
    ("connection: {dsn_env: CRM_DB_DSN}", "    extract: {watermark: updated_at, full_every: 2w}", "field extract.full_every"),
    ("connection: {dsn_env: CRM_DB_DSN}", "    extract: {watermark: updated_at}\n    refresh: on_arrival", "field refresh: a sql table is extracted on its cadence"),
    ("connection: {dsn_env: CRM_DB_DSN}", "    extract: {watermark: updated_at}\n    mode: history", "field mode: a sql table"),
    ("connection: {dsn_env: CRM_DB_DSN}", "    extract: {watermark: updated_at}\n    columns: [{name: customer_id, type: long}]",
     "field extract.watermark: column 'updated_at' is not in columns"),
    ("connection: {dsn_env: CRM_DB_DSN}", "    format: parquet\n    extract: {watermark: updated_at}", "field extract: only a format sql table"),
])
def test_registry_errors_name_the_table_and_field(tmp_path, connection, table, message):
    (tmp_path / "crm.yaml").write_text(BAD.format(connection=connection, table=table))
    [error] = load_registry([tmp_path], cache=False).errors
    assert message in error.message and str(tmp_path / "crm.yaml") in error.message


def test_the_extract_job_extracts_then_merges_with_counts_in_metadata(crm, monkeypatch):
    from dagster import AssetKey, materialize

    from lake_assets.definitions import build_definitions

    crm.customer(1, "a", "1.00")
    crm.customer(2, "b", "2.00")
    defs = build_definitions(crm.lake.registry, with_dbt=False)
    job = defs.resolve_job_def("extract_crm")  # what the schedule runs: both tables' extracts, then merges
    assert {s.name: s.cron_schedule for s in defs.schedules if s.name.startswith("extract_")} == {
        "extract_crm_15": "*/15 * * * *"}
    assert not [s for s in defs.schedules if s.name.startswith("refresh_crm")]  # the extract schedule merges too
    selection = [AssetKey(["landing", "crm", "customers"]), AssetKey(["source_aligned", "crm", "customers"])]
    result = job.execute_in_process(asset_selection=selection)
    assert result.success
    mats = {e.materialization.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert (mats["landing/crm/customers"]["kind"].value, mats["landing/crm/customers"]["rows"].value) == (FULL, 2)
    assert mats["source_aligned/crm/customers"]["inserted"].value == 2
    crm.sql("DELETE FROM public.customers WHERE customer_id = 1")
    crm.customer(3, "c", "3.00")
    again = materialize(list(defs.assets), resources=dict(defs.resources), selection=selection,
                        tags={"lake/full_extract": "crm.customers"})
    mats = {e.materialization.asset_key.to_user_string(): e.materialization.metadata for e in again.get_asset_materialization_events()}
    assert mats["landing/crm/customers"]["kind"].value == FULL
    assert (mats["source_aligned/crm/customers"]["inserted"].value, mats["source_aligned/crm/customers"]["deleted"].value) == (1, 1)
    assert crm.lake_rows(crm.customers, "customer_id") == crm.source("public.customers", "customer_id")


def test_extracts_land_in_s3_as_a_listing_sees_them(crm, monkeypatch, moto_endpoint):
    """On AWS the landing zone is S3 (moto's server here, the session's): the extract lands its file
    there, recorded with the ETag a listing reports, and a crash after the write reuses the object."""
    import uuid

    import boto3

    from lake_assets.core.landing import S3LandingZone

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    bucket = f"landing-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    landing = S3LandingZone(bucket, "raw", s3)
    ledger = crm.lake.env.ledger
    crm.customer(1, "a", "1.00")
    first = extract_table(crm.customers, ledger=ledger, landing=landing)
    [listed] = list(landing.list(crm.customers.landing_prefix))
    [entry] = ledger.entries("crm.customers")
    assert (listed.key, entry.key, entry.checksum) == (first.key, first.key, listed.version)
    crm.customer(2, "b", "2.00")
    with pytest.raises(Crash):
        extract_table(crm.customers, ledger=ledger, landing=landing, failpoint=_crash_at("after_extract_write"))
    again = extract_table(crm.customers, ledger=ledger, landing=landing)
    assert again.reused and again.info.rows == 1
    assert sorted(e.key for e in ledger.entries("crm.customers")) == [o.key for o in landing.list(crm.customers.landing_prefix)]
    run = merge_pending(crm.customers, catalog=crm.lake.env.catalog, ledger=ledger, landing=landing, engine=InProcessEngine())
    assert _totals(run) == (2, 0, 0)
    assert crm.lake_rows(crm.customers, "customer_id") == crm.source("public.customers", "customer_id")
