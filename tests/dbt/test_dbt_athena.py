"""The athena target compiles offline (`dbt parse`, `dbt compile --no-populate-cache`), every
compiled model and test parses with sqlglot's Athena dialect and calls only functions Athena knows,
and the models carry the Iceberg and Lake Formation configuration dbt-athena applies."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sqlglot
from sqlglot import exp

from lake_assets.core import governance
from lake_assets.core.mask_key import MASK_KEY_TABLE
from lake_assets.core.naming import consumer_model_name
from lake_assets.dbt_assets import DBT_PROJECT_DIR

from dbt_lake_fixture import run_dbt

ATHENA_ENV = {
    "LAKE_ENV": "aws",
    "AWS_REGION": "eu-west-1",
    "LAKE_ATHENA_WORKGROUP": "lakehouse",
    "LAKE_ATHENA_S3_STAGING_DIR": "s3://example-athena-results/lakehouse/",
    "LAKE_ATHENA_S3_DATA_DIR": "s3://example-lake/dbt/",
    "LAKE_AWS_ACCOUNT_ID": "123456789012",
}
# Functions sqlglot does not model but Athena (Trino) has; anything else unknown is a dialect leak
# (e.g. DuckDB's epoch or regexp_matches reaching the Athena SQL).
KNOWN_TRINO_FUNCTIONS = {"to_milliseconds", "to_unixtime", "to_utf8", "to_hex", "sha256", "hmac_sha256", "date_diff", "date_add"}


@pytest.fixture(scope="module")
def athena_compiled(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("athena_target")
    home = tmp_path_factory.mktemp("unused_lake")
    for args in (["parse", "--target", "athena"], ["compile", "--target", "athena", "--no-populate-cache"]):
        result = run_dbt(args, lake_home=home, target_path=target, extra_env=ATHENA_ENV)
        assert result.returncode == 0, f"dbt {' '.join(args)}:\n{result.stdout[-5000:]}{result.stderr[-2000:]}"
    return target


def compiled_sql(target: Path) -> dict[str, str]:
    files = {str(p.relative_to(target)): p.read_text() for p in (target / "compiled").rglob("*.sql")}
    assert files
    return files


def test_every_compiled_statement_parses_as_athena_sql(athena_compiled):
    files = compiled_sql(athena_compiled)
    models = [f for f in files if "/models/aggregated/" in f or "/models/consumer/" in f]
    assert len([f for f in models if f.endswith(".sql") and "/_" not in f]) >= 9
    for name, sql in files.items():
        statements = sqlglot.parse(sql, read="athena", error_level=sqlglot.ErrorLevel.RAISE)
        unknown = {f.name.lower() for s in statements if s for f in s.find_all(exp.Anonymous)} - KNOWN_TRINO_FUNCTIONS
        assert not unknown, f"{name}: functions Athena does not have: {unknown}"


def test_duckdb_sql_would_be_caught():
    """The check above can fail: DuckDB's forms of the dispatched expressions are rejected."""
    with pytest.raises(sqlglot.errors.ParseError):
        sqlglot.parse("select a // b from t", read="athena", error_level=sqlglot.ErrorLevel.RAISE)
    (statement,) = sqlglot.parse("select epoch(ts), regexp_matches(s, 'x') from t", read="athena")
    assert {f.name.lower() for f in statement.find_all(exp.Anonymous)} - KNOWN_TRINO_FUNCTIONS


def test_the_hash_mask_is_keyed_by_the_key_table_not_a_key_in_the_sql(athena_compiled):
    """Athena hashes with HMAC-SHA256 keyed by the row of the key table; no unkeyed sha256 and no
    key literal reaches the compiled SQL (which dbt keeps in target/ and Athena in its history)."""
    files = compiled_sql(athena_compiled)
    consumer = {n: s for n, s in files.items() if "/models/consumer/" in n and "/_" not in n}
    hashed = {n: s for n, s in consumer.items() if "hmac_sha256(" in s}
    assert any("data_science__customers" in n for n in hashed) and any("marketing__customers" in n for n in hashed)
    for name, sql in hashed.items():
        (statement,) = sqlglot.parse(sql, read="athena")
        for call in statement.find_all(exp.Anonymous):
            if call.name.lower() == "hmac_sha256":
                key = call.expressions[1]
                assert isinstance(key, exp.Subquery), f"{name}: the HMAC key must be read from the key table: {key.sql()}"
                assert key.find(exp.Table).sql() == MASK_KEY_TABLE, name
        assert not re.search(r"(?<!hmac_)sha256\(", sql), f"{name}: an unkeyed sha256"
        assert not re.search(r"X'[0-9a-fA-F]{16,}'|from_hex\(", sql), f"{name}: a binary literal (a key?) in the SQL"


def test_models_are_iceberg_tables_with_lake_formation_config(athena_compiled):
    manifest = json.loads((athena_compiled / "manifest.json").read_text())
    assert manifest["metadata"]["adapter_type"] == "athena"
    models = {n["name"]: n for n in manifest["nodes"].values() if n["resource_type"] == "model"}
    policy = governance.load_validated_policy()
    expected_consumer_models = {
        consumer_model_name(c, d) for c, consumer in policy.consumers.items() for d in consumer.datasets
    }
    assert expected_consumer_models <= set(models)
    for name, node in models.items():
        assert node["config"]["materialized"] == "table" and node["config"]["table_type"] == "iceberg", name
        assert node["database"] == "awsdatacatalog"
    for cname, consumer in policy.consumers.items():
        for dname, dataset in consumer.datasets.items():
            node = models[consumer_model_name(cname, dname)]
            assert (node["schema"], node["alias"]) == (f"consumer_{cname}", dname)
            tags = node["config"]["lf_tags_config"]
            assert tags["enabled"] and tags["tags"]["lake_consumer"] == cname
            (cell_filter,) = node["config"]["lf_grants"]["data_cell_filters"]["filters"].values()
            assert cell_filter["row_filter"] == (governance.row_filter_sql(dataset, output_names=True) or "TRUE")
            assert cell_filter["principals"] and all(
                re.fullmatch(r"arn:aws:iam::123456789012:role/[\w+=,.@-]+", p) for p in cell_filter["principals"]
            )
    (source_node,) = [s for s in manifest["sources"].values() if s["name"] == "bookings"]
    assert (source_node["database"], source_node["schema"]) == ("awsdatacatalog", "travel")


def test_profiles_hold_no_credentials():
    text = (DBT_PROJECT_DIR / "profiles.yml").read_text().lower()
    for key in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "password"):
        assert key not in text
