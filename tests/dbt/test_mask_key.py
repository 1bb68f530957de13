"""The `hash` mask's key and HMAC: DuckDB's macro (as the dbt plugin defines it) computes exactly
Python's `hmac.new(key, msg, sha256)`, the local key is generated once and kept private, the AWS
key comes from Secrets Manager (moto's server), and Athena's key table is written once per key."""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
import uuid
from pathlib import Path

import duckdb
import pytest
import yaml

from lake_assets.core import mask_key as mk
from lake_assets.core.deployment import local_catalog
from lake_assets.core.settings import LakeSettings
from lake_assets.dbt_assets import DBT_PROJECT_DIR

sys.path.insert(0, str(DBT_PROJECT_DIR / "plugins"))
from lake_iceberg import register_hash_mask  # dbt_project/plugins, where dbt-duckdb loads it from

TEXTS = ["", "a", "anna.schmidt@example.de", "Zoë Müller", "O'Brien", "日本語のテキスト", "😀 emoji", "tab\tand\nnewline",
         "nul\x00inside", "x" * 1000, "'; drop table x; --", None]
INTEGERS = [0, 1, -5, 199_999, 2**62, None]


def python_hmac(key: bytes, value) -> str | None:
    return None if value is None else hmac.new(key, str(value).encode("utf-8"), hashlib.sha256).hexdigest()


@pytest.fixture
def masked_conn():
    key = os.urandom(32)
    conn = duckdb.connect()
    register_hash_mask(conn, key)
    yield key, conn
    conn.close()


def test_duckdb_hmac_equals_python_hmac_on_text_unicode_and_nulls(masked_conn):
    key, conn = masked_conn
    cursor = conn.cursor()  # dbt's threads use cursors of the plugin's connection
    rows = cursor.execute(f"SELECT v, {mk.HMAC_MACRO}(v) FROM (SELECT unnest(?::VARCHAR[]) AS v)", [TEXTS]).fetchall()
    assert len(rows) == len(TEXTS)
    for value, digest in rows:
        assert digest == python_hmac(key, value), repr(value)
    assert mk.hash_mask(key, "Zoë") == python_hmac(key, "Zoë")


def test_duckdb_hmac_of_integers_hashes_their_text(masked_conn):
    """Integer ids are hashed as their decimal text (the macro casts to varchar on both engines)."""
    key, conn = masked_conn
    rows = conn.execute(f"SELECT v, {mk.HMAC_MACRO}(cast(v AS VARCHAR)) FROM (SELECT unnest(?::BIGINT[]) AS v)", [INTEGERS]).fetchall()
    assert [d for _, d in rows] == [python_hmac(key, v) for v, _ in rows]
    assert rows[0][1] != python_hmac(os.urandom(32), 0), "another key must hash differently"


def test_the_macro_is_not_persisted_with_the_database(tmp_path):
    """Registered on a file database, the macro (which holds the key's pads) stays in memory."""
    db = tmp_path / "dbt.duckdb"
    conn = duckdb.connect(str(db))
    register_hash_mask(conn, os.urandom(32))
    conn.close()
    reopened = duckdb.connect(str(db))
    names = {r[0] for r in reopened.execute("SELECT function_name FROM duckdb_functions() WHERE function_type = 'macro'").fetchall()}
    reopened.close()
    assert "hmac_sha256_hex" not in names


def test_the_local_key_is_generated_once_private_and_in_the_lake(tmp_path):
    settings = LakeSettings.local(tmp_path / "lake")
    key = mk.local_mask_key(settings.mask_key_file)
    assert settings.mask_key_file == tmp_path / "lake" / "secrets" / "mask_key"
    assert len(key) == 32 and settings.mask_key_file.read_bytes() == key
    assert settings.mask_key_file.stat().st_mode & 0o777 == 0o600
    assert mk.local_mask_key(settings.mask_key_file) == key and mk.mask_key(settings) == key
    assert mk.local_mask_key(LakeSettings.local(tmp_path / "other").mask_key_file) != key


def test_a_key_file_others_can_read_or_of_the_wrong_size_is_refused_naming_it(tmp_path):
    path = tmp_path / "secrets" / "mask_key"
    mk.local_mask_key(path)
    path.chmod(0o644)
    with pytest.raises(mk.MaskKeyError, match=f"{path}: readable by other users"):
        mk.local_mask_key(path)
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(mk.MaskKeyError, match=f"{path}: 5 bytes, expected 32"):
        mk.local_mask_key(path)


@pytest.fixture
def secrets_manager(monkeypatch, moto_endpoint):
    """Secrets Manager on the session's moto server (tests/aws_fixtures.py); secret names are the test's own."""
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    return moto_endpoint, boto3.client("secretsmanager", region_name="eu-west-1", endpoint_url=moto_endpoint)


def test_the_aws_key_comes_from_the_secret_the_settings_name(secrets_manager):
    endpoint, client = secrets_manager
    key, name = os.urandom(32), f"lake/mask-key-{uuid.uuid4().hex[:6]}"
    client.create_secret(Name=name, SecretBinary=key)
    settings = LakeSettings.from_env({
        "LAKE_ENV": "aws", "AWS_REGION": "eu-west-1", "LAKE_WAREHOUSE_URI": "s3://w/", "LAKE_LANDING_BUCKET": "l",
        "LAKE_LEDGER_DSN": "postgresql://x/y", "AWS_ENDPOINT_URL": endpoint, "LAKE_MASK_KEY_SECRET_ID": name,
    })
    assert settings.to_env()["LAKE_MASK_KEY_SECRET_ID"] == name
    assert mk.mask_key(settings) == key

    client.create_secret(Name=f"{name}-hex", SecretString=key.hex())
    assert mk.secrets_manager_mask_key(f"{name}-hex", region="eu-west-1", endpoint_url=endpoint) == key
    client.create_secret(Name=f"{name}-short", SecretString="abcd")
    with pytest.raises(mk.MaskKeyError, match=f"{name}-short'.*2 bytes, expected 32"):
        mk.secrets_manager_mask_key(f"{name}-short", region="eu-west-1", endpoint_url=endpoint)
    with pytest.raises(mk.MaskKeyError, match=f"{name}-missing"):
        mk.secrets_manager_mask_key(f"{name}-missing", region="eu-west-1", endpoint_url=endpoint)


def test_athenas_key_table_is_written_once_per_key(tmp_path):
    catalog = local_catalog(tmp_path)
    first, second = os.urandom(32), os.urandom(32)
    assert mk.publish_mask_key_table(catalog, first) is True
    table = catalog.load_table(mk.MASK_KEY_TABLE)
    snapshots = len(table.metadata.snapshots)
    assert mk.publish_mask_key_table(catalog, first) is False
    assert len(catalog.load_table(mk.MASK_KEY_TABLE).metadata.snapshots) == snapshots
    assert mk.publish_mask_key_table(catalog, second) is True
    assert catalog.load_table(mk.MASK_KEY_TABLE).scan().to_arrow().column("key").to_pylist() == [second]


def test_the_dbt_project_reads_the_key_table_the_deploy_step_writes():
    project = yaml.safe_load((Path(DBT_PROJECT_DIR) / "dbt_project.yml").read_text())
    assert project["vars"]["lake_mask_key_table"] == mk.MASK_KEY_TABLE


def test_the_publish_command_writes_the_deployments_key_and_prints_no_key(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAKE_ENV", "local")
    monkeypatch.setenv("LAKE_HOME", str(tmp_path))
    assert mk.main(["publish"]) == 0
    key = LakeSettings.local(tmp_path).mask_key_file.read_bytes()
    rows = local_catalog(tmp_path).load_table(mk.MASK_KEY_TABLE).scan().to_arrow().column("key").to_pylist()
    assert rows == [key]
    assert mk.main(["publish"]) == 0
    out = capsys.readouterr()
    assert "written" in out.out and "already current" in out.out
    assert key.hex() not in out.out + out.err
    assert mk.main([]) == 2
