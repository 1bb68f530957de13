"""`python -m lake_assets.ingest` as an operator runs it: its summary names failed files, failed
checks and broken registry files, and its exit status is non-zero whenever any exists; two of them
started together on one lake leave it exact; --reload and --rebuild work from the command line."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus

from demo.dms_writer import cdc_file_name, load_file_name, write_dms_file
from lake_assets.core.deployment import REPO_ROOT, CatalogBusyError, LakeSqlCatalog, local_catalog
from lake_assets.core.ledger import COMMITTED, sqlite_ledger
from lake_assets.core.settings import LakeSettings, SettingsError

SHOP = """
source: shop
tables:
  - name: orders
    schema: app
    primary_key: [id]
    sequence_by: seq
    columns:
      - {name: seq, type: string}
      - {name: id, type: long}
      - {name: amount, type: long}
"""
COLUMNS = [("seq", "string"), ("id", "long"), ("amount", "long")]
T0 = dt.datetime(2026, 11, 21, 10, 0)


def lake(tmp_path: Path, sources: dict[str, str] | None = None) -> tuple[Path, Path]:
    home, sdir = tmp_path / "lake", tmp_path / "sources"
    sdir.mkdir()
    for name, text in (sources or {"shop": SHOP}).items():
        (sdir / f"{name}.yaml").write_text(textwrap.dedent(text))
    return home, sdir


def land(home: Path, name: str, rows: list[dict], *, load: bool = False) -> Path:
    return write_dms_file(home / "landing" / "shop" / "app" / "orders" / name, rows, COLUMNS, cdc=not load)


def ingest(home: Path, sdir: Path, *args: str, timeout: float = 300, cwd: Path = REPO_ROOT,
           **env_extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "LAKE_FAILPOINT")}
    env |= {"LAKE_HOME": str(home), "LAKE_SOURCES_DIR": str(sdir), "LAKE_ENV": "local", "PYTHONWARNINGS": "ignore",
            "LAKE_SETTLE_SECONDS": "0", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            **env_extra}
    return subprocess.run([sys.executable, "-m", "lake_assets.ingest", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def rows(home: Path) -> list[tuple]:
    return sorted((r["id"], r["amount"]) for r in local_catalog(home).load_table("shop.orders").scan().to_arrow().to_pylist())


def test_a_clean_ingest_exits_zero(tmp_path):
    home, sdir = lake(tmp_path)
    land(home, load_file_name(1), [{"id": 1, "amount": 10, "seq": None}], load=True)
    out = ingest(home, sdir)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert "FAILED" not in out.stdout and rows(home) == [(1, 10)]


def test_its_runs_are_the_lakes_from_any_directory(tmp_path, monkeypatch):
    """Started outside the checkout, with no DAGSTER_HOME: the runs are `ingest_shop` runs of code
    location `lake` in $LAKE_HOME/dagster, the instance `make ui` shows (and re-executes them from)."""
    home, sdir = lake(tmp_path)
    land(home, load_file_name(1), [{"id": 1, "amount": 10, "seq": None}], load=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = ingest(home, sdir, cwd=elsewhere)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert rows(home) == [(1, 10)]
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    with DagsterInstance.get() as instance:
        [run] = instance.get_runs()
    assert run.job_name == "ingest_shop" and run.status == DagsterRunStatus.SUCCESS
    assert run.remote_job_origin.location_name == "lake"  # what the UI's Re-execute looks the job up by
    assert run.asset_selection == {AssetKey(["source_aligned", "shop", "orders"])}


def test_every_row_quarantined_is_a_failed_check_and_a_non_zero_exit(tmp_path):
    """A 35-digit DMS sequence declared long quarantines every change: the command must say so."""
    home, sdir = lake(tmp_path, {"shop": SHOP.replace("{name: seq, type: string}", "{name: seq, type: long}")})
    land(home, cdc_file_name(T0), [{"Op": "I", "id": i, "amount": i, "seq": "2026112110000000000000000000000000" + str(i)}
                                   for i in range(1, 4)])
    out = ingest(home, sdir)
    assert out.returncode == 1, out.stdout
    assert "FAILED CHECK source_aligned/shop/orders quarantine_rate" in out.stdout
    assert "quarantined 3" in out.stdout


def test_a_failed_file_is_printed_and_exits_non_zero(tmp_path):
    home, sdir = lake(tmp_path)
    land(home, cdc_file_name(T0), [{"Op": "I", "id": 1, "amount": 10, "seq": "1"}])
    bad = home / "landing" / "shop" / "app" / "orders" / (cdc_file_name(T0 + dt.timedelta(minutes=1)) + ".parquet")
    bad.write_bytes(b"PAR1 not really")
    out = ingest(home, sdir)
    assert out.returncode == 1
    assert "FAILED FILE" in out.stdout and bad.name in out.stdout and "shop.orders" in out.stdout
    assert rows(home) == [(1, 10)]


def test_a_broken_registry_file_fails_its_source_only_and_the_command(tmp_path):
    home, sdir = lake(tmp_path, {"shop": SHOP, "crm": "source: crm\ntables:\n  - name: Bad Name\n    schema: x\n    primary_key: [id]\n"})
    land(home, load_file_name(1), [{"id": 1, "amount": 10, "seq": None}], load=True)
    out = ingest(home, sdir)
    assert rows(home) == [(1, 10)]  # the other source merged
    assert out.returncode == 1
    assert "INVALID REGISTRY" in out.stdout and "crm.yaml" in out.stdout and "Bad Name" in out.stdout


def test_reload_and_rebuild_from_the_command_line(tmp_path):
    home, sdir = lake(tmp_path)
    land(home, load_file_name(1), [{"id": 1, "amount": 10, "seq": None}, {"id": 2, "amount": 20, "seq": None}], load=True)
    assert ingest(home, sdir).returncode == 0
    assert ingest(home, sdir, "--reload", "shop.orders").returncode == 0  # waits for the next load
    land(home, load_file_name(5), [{"id": 3, "amount": 30, "seq": None}], load=True)
    out = ingest(home, sdir)
    assert out.returncode == 0 and "RELOADED" in out.stdout and rows(home) == [(3, 30)]
    out = ingest(home, sdir, "--rebuild", "shop.orders")
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    # Rebuilt from every landed file: LOAD00000001, then LOAD00000005 ... as one batch: they form one load.
    assert rows(home) == [(1, 10), (2, 20), (3, 30)]
    assert ingest(home, sdir, "--reload", "shop.nope").returncode != 0


def test_two_ingests_started_together_leave_the_lake_exact(tmp_path):
    home, sdir = lake(tmp_path)
    land(home, load_file_name(1), [{"id": i, "amount": i, "seq": None} for i in range(1, 2001)], load=True)
    for m in range(5):
        land(home, cdc_file_name(T0 + dt.timedelta(minutes=m)),
             [{"Op": "U", "id": i, "amount": i + m + 1, "seq": str(m + 1)} for i in range(1, 2001, 7)]
             + [{"Op": "I", "id": 5000 + m, "amount": -1, "seq": None}])  # a bad row: quarantined once
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "LAKE_FAILPOINT")}
    env |= {"LAKE_HOME": str(home), "LAKE_SOURCES_DIR": str(sdir), "LAKE_ENV": "local", "PYTHONWARNINGS": "ignore",
            "LAKE_SETTLE_SECONDS": "0"}
    procs = [subprocess.Popen([sys.executable, "-m", "lake_assets.ingest"], cwd=REPO_ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    # Both end cleanly: one merges, the other waits for the table's lock and finds nothing left.
    assert codes == [0, 0], [err[-3000:] for _, err in outs]
    assert all("Traceback" not in err for _, err in outs), [err[-2000:] for _, err in outs]
    want = {i: i for i in range(1, 2001)}
    for m in range(5):
        want.update({i: i + m + 1 for i in range(1, 2001, 7)})
    assert rows(home) == sorted(want.items())
    q = local_catalog(home).load_table("shop.orders__quarantine").scan().to_arrow()
    assert sorted(q.column("row").to_pylist()) == [287] * 5  # each bad row once, not once per process
    ledger = sqlite_ledger(home / "ledger.db")
    assert {e.status for e in ledger.entries("shop.orders")} <= {COMMITTED, "quarantined"}


def test_a_locked_catalog_is_waited_for_then_named(tmp_path):
    catalog = LakeSqlCatalog(tmp_path, busy_seconds=0.6)
    catalog.create_namespace("shop")
    holder = sqlite3.connect(tmp_path / "catalog.db", timeout=0, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(CatalogBusyError) as err:
            catalog.list_namespaces()
        assert time.monotonic() - started >= 0.5
        assert str(tmp_path / "catalog.db") in str(err.value)
    finally:
        holder.rollback()
    # Released within the wait: the call goes through.
    holder.execute("BEGIN EXCLUSIVE")
    threading.Timer(0.3, holder.rollback).start()
    assert ("shop",) in LakeSqlCatalog(tmp_path, busy_seconds=5).list_namespaces()
    holder.close()


def test_settings_name_the_variable_that_is_wrong(tmp_path):
    with pytest.raises(SettingsError, match="LAKE_ENV='prod'"):
        LakeSettings.from_env({"LAKE_ENV": "prod"})
    with pytest.raises(SettingsError, match="LAKE_ENV=aws needs LAKE_WAREHOUSE_URI"):
        LakeSettings.from_env({"LAKE_ENV": "aws"})
    with pytest.raises(SettingsError, match="LAKE_SETTLE_SECONDS='soon'"):
        LakeSettings.from_env({"LAKE_SETTLE_SECONDS": "soon"})
    aws = LakeSettings.from_env({"LAKE_ENV": "aws", "LAKE_WAREHOUSE_URI": "s3://w", "LAKE_LANDING_BUCKET": "b",
                                 "LAKE_LEDGER_DSN": "host=db user=lake password=hunter2", "LAKE_HOME": str(tmp_path)})
    assert aws.dbt_target == "athena" and aws.settle_seconds == 0 and not aws.automation_running
    assert "hunter2" not in repr(aws) and "hunter2" not in str(aws.to_env())
    local = LakeSettings.from_env({"LAKE_HOME": "rel", "PWD": str(tmp_path)})
    assert local.home == (tmp_path / "rel").resolve() and local.settle_seconds == 5
