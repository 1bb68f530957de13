"""The governance policy: validated once with errors that name the place, consumer models generated
from it (none hand-written), and the generated models in the repository up to date."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from lake_assets.core import governance
from lake_assets.dbt_assets import DBT_PROJECT_DIR


def test_repository_consumer_models_match_the_policy():
    to_write, to_delete = governance.generated_files_diff(DBT_PROJECT_DIR)
    assert not to_write and not to_delete, "run: python -m lake_assets.core.governance generate"


def test_demo_policy_has_two_consumers_and_every_mask():
    policy = governance.load_validated_policy()
    assert {"marketing", "finance"} <= set(policy.consumers)
    masks = {r.mask for c in policy.consumers.values() for d in c.datasets.values() for r in d.columns.values()}
    assert {"hash", "redact", "partial", "null", "year_only"} <= masks
    marketing = policy.consumers["marketing"].datasets["customers"]
    assert "phone" not in marketing.columns and marketing.columns["email"].mask == "hash"
    assert governance.row_filter_sql(marketing) == "marketing_opt_in = true"
    assert governance.row_filter_sql(policy.consumers["finance"].datasets["payments"]) == "region = 'EMEA'"


@pytest.fixture
def project_copy(tmp_path) -> Path:
    """The dbt project's sources of truth (models, policy) in a scratch directory."""
    dest = tmp_path / "dbt_project"
    shutil.copytree(DBT_PROJECT_DIR, dest, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    return dest


def edit_policy(project: Path, change) -> Path:
    path = project / "governance" / "policy.yml"
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_adding_a_consumer_is_policy_only(project_copy):
    def add_partner(doc):
        doc["consumers"]["hotel_partners"] = {
            "owner": "partners@example.com",
            "principals": ["arn:aws:iam::{aws_account_id}:role/lake-consumer-hotel-partners"],
            "datasets": {
                "daily_revenue": {
                    "from": "daily_hotel_bookings",
                    "columns": {"activity_date": "allow", "hotel_id": "allow", "net_revenue": "allow", "region": "allow"},
                    "row_filter": [{"column": "region", "op": "in", "value": ["UK", "US"]}],
                }
            },
        }

    edit_policy(project_copy, add_partner)
    changed = governance.generate(project_copy)
    sql_path = project_copy / "models/consumer/hotel_partners/hotel_partners__daily_revenue.sql"
    assert {p.as_posix() for p in changed} == {
        "models/consumer/hotel_partners/_hotel_partners__models.yml",
        "models/consumer/hotel_partners/hotel_partners__daily_revenue.sql",
    }
    sql = sql_path.read_text()
    assert 'schema="consumer_hotel_partners"' in sql and 'alias="daily_revenue"' in sql
    assert "from {{ ref('daily_hotel_bookings') }}" in sql and "where region in ('UK', 'US')" in sql
    assert governance.generate(project_copy) == []  # idempotent

    edit_policy(project_copy, lambda doc: doc["consumers"].pop("hotel_partners"))
    governance.generate(project_copy)
    assert not sql_path.parent.exists()


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: d["consumers"]["marketing"]["datasets"]["customers"]["columns"].update(phone="allow"),
         "consumer 'marketing': dataset 'customers': column 'phone': customer_lifetime_value.phone is PII"),
        (lambda d: d["consumers"]["marketing"]["datasets"]["customers"]["columns"].update(email={"mask": "scramble"}),
         "consumer 'marketing': dataset 'customers': column 'email': field mask"),
        (lambda d: d["consumers"]["finance"]["datasets"]["payments"]["columns"].update(cvv="allow"),
         "consumer 'finance': dataset 'payments': column 'cvv': not a column of aggregated model 'payment_transactions'"),
        (lambda d: d["consumers"]["finance"]["datasets"]["payments"]["columns"].update(region={"mask": "hash"}),
         "consumer 'finance': dataset 'payments': field row_filter: column 'region' must be an allowed, unmasked column"),
        (lambda d: d["consumers"]["marketing"]["datasets"]["customers"]["columns"].update(first_name={"mask": "none"}),
         "column 'first_name': field (entry): mask: none (exposing a PII column unmasked) needs a reason"),
        (lambda d: d["consumers"]["finance"]["datasets"]["payments"].update({"from": "payments"}),
         "consumer 'finance': dataset 'payments': field from: 'payments' is not an aggregated model"),
        (lambda d: d["consumers"].update({"Ops-Team": d["consumers"]["finance"]}),
         "consumer 'Ops-Team': consumer name 'Ops-Team' is not a valid lake identifier"),
        (lambda d: d["consumers"]["finance"]["datasets"]["payments"]["row_filter"].append({"column": "region", "op": "in"}),
         "consumer 'finance': dataset 'payments': field row_filter.1: op in needs a non-empty list value"),
    ],
    ids=["pii-unmasked", "unknown-mask", "unknown-column", "filter-on-masked", "none-without-reason",
         "from-not-aggregated", "bad-consumer-name", "filter-without-value"],
)
def test_invalid_policy_is_rejected_naming_the_place(project_copy, change, message):
    path = edit_policy(project_copy, change)
    with pytest.raises(governance.PolicyError) as err:
        governance.generate(project_copy)
    assert str(path) in str(err.value)
    assert message in str(err.value)
