"""The governance policy: validated once with errors that name the place, consumer models generated
from it (none hand-written), the generated models in the repository up to date, and the registry's
PII columns never exposed unmasked without a reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from lake_assets.core import dbt_codegen, governance
from lake_assets.core.registry import BUILTIN_SOURCES_DIR, load_registry
from lake_assets.dbt_assets import DBT_PROJECT_DIR

TRAVEL_YAML = BUILTIN_SOURCES_DIR / "travel.yaml"


def test_repository_generated_files_are_current():
    assert not dbt_codegen.plan(DBT_PROJECT_DIR).stale, "run: python -m lake_assets.core.dbt_codegen generate"


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
                    "row_filter": [{"column": "region", "op": "in", "value": ["AMER", "APAC"]}],
                }
            },
        }

    edit_policy(project_copy, add_partner)
    changed = dbt_codegen.generate(project_copy)
    sql_path = project_copy / "models/consumer/hotel_partners/hotel_partners__daily_revenue.sql"
    assert {p.as_posix() for p in changed} == {
        "models/consumer/hotel_partners/_hotel_partners__models.yml",
        "models/consumer/hotel_partners/hotel_partners__daily_revenue.sql",
    }
    sql = sql_path.read_text()
    assert 'schema="consumer_hotel_partners"' in sql and 'alias="daily_revenue"' in sql
    assert "from {{ ref('daily_hotel_bookings') }}" in sql and "where region in ('AMER', 'APAC')" in sql
    assert dbt_codegen.generate(project_copy) == []  # idempotent

    edit_policy(project_copy, lambda doc: doc["consumers"].pop("hotel_partners"))
    dbt_codegen.generate(project_copy)
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
        dbt_codegen.generate(project_copy)
    assert str(path) in str(err.value)
    assert message in str(err.value)


# ---------------------------------------------------------------------------------------------
# PII as the registry declares it


def strip_aggregated_pii_marks(project: Path) -> None:
    """Drop every `meta: {pii: true}` of the aggregated properties: only the registry says what is PII."""
    path = project / "models" / "aggregated" / "_aggregated__models.yml"
    doc = yaml.safe_load(path.read_text())
    for model in doc["models"]:
        for column in model["columns"]:
            column.pop("config", None)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_registry_pii_reaches_the_aggregated_models_that_read_it():
    registry = load_registry()
    models = governance.aggregated_models()
    found = {name: governance.pii_columns(name, models, registry) for name in models}
    assert {m: set(cols) for m, cols in found.items() if cols} == {
        "customer_lifetime_value": set(registry.get("travel", "customers").pii),
        "payment_transactions": {"card_number"},
    }
    origin = found["customer_lifetime_value"]["email"]
    assert origin.column == "travel.customers.email" and Path(origin.declared_in) == TRAVEL_YAML


def test_current_policy_passes_with_the_registry_alone(project_copy):
    strip_aggregated_pii_marks(project_copy)
    governance.load_validated_policy(project_copy)
    governance.load_validated_policy()


@pytest.mark.parametrize(
    "consumer,dataset,column",
    [("marketing", "customers", "phone"), ("data_science", "customers", "email"), ("finance", "payments", "card_number")],
)
def test_a_policy_exposing_a_registry_pii_column_unmasked_fails_naming_it(project_copy, consumer, dataset, column):
    strip_aggregated_pii_marks(project_copy)
    path = edit_policy(project_copy, lambda d: d["consumers"][consumer]["datasets"][dataset]["columns"].update({column: "allow"}))
    with pytest.raises(governance.PolicyError) as err:
        governance.load_validated_policy(project_copy)
    table = "payments" if column == "card_number" else "customers"
    (line,) = str(err.value).splitlines()
    assert line.startswith(f"{path}: consumer {consumer!r}: dataset {dataset!r}: column {column!r}: ")
    assert f"(travel.{table}.{column}, PII in {TRAVEL_YAML})" in line

    # The command refuses it too (exit 2, the message on stderr), and writes nothing.
    before = {p: p.read_text() for p in (project_copy / "models").rglob("*") if p.is_file()}
    assert dbt_codegen.main(["generate", "--project-dir", str(project_copy)]) == 2
    assert {p: p.read_text() for p in (project_copy / "models").rglob("*") if p.is_file()} == before


def test_a_reason_lets_a_registry_pii_column_through_unmasked(project_copy):
    strip_aggregated_pii_marks(project_copy)
    edit_policy(project_copy, lambda d: d["consumers"]["marketing"]["datasets"]["customers"]["columns"].update(
        phone={"mask": "none", "reason": "call-back campaign the customer asked for"}))
    dbt_codegen.generate(project_copy)
    properties = yaml.safe_load((project_copy / "models/consumer/marketing/_marketing__models.yml").read_text())
    (phone,) = [c for c in properties["models"][0]["columns"] if c["name"] == "phone"]
    assert phone["description"].endswith("PII exposed unmasked: call-back campaign the customer asked for")


def test_pii_follows_ref_into_a_downstream_aggregated_model(project_copy):
    """customer_contacts reads the registry's customers only through customer_lifetime_value."""
    strip_aggregated_pii_marks(project_copy)
    aggregated = project_copy / "models" / "aggregated"
    (aggregated / "customer_contacts.sql").write_text(
        "select customer_id, email, country from {{ ref( 'customer_lifetime_value' ) }}\n")
    (aggregated / "_customer_contacts.yml").write_text(yaml.safe_dump({"version": 2, "models": [
        {"name": "customer_contacts", "columns": [{"name": "customer_id"}, {"name": "email"}, {"name": "country"}]}]}))
    path = edit_policy(project_copy, lambda d: d["consumers"]["marketing"]["datasets"].update(
        contacts={"from": "customer_contacts", "columns": {"customer_id": "allow", "email": "allow", "country": "allow"}}))
    with pytest.raises(governance.PolicyError) as err:
        governance.load_validated_policy(project_copy)
    assert str(err.value) == (
        f"{path}: consumer 'marketing': dataset 'contacts': column 'email': customer_contacts.email is PII "
        f"(travel.customers.email, PII in {TRAVEL_YAML}): give it a mask, or `mask: none` with a reason"
    )


def test_a_column_the_registry_makes_pii_needs_a_mask(project_copy, tmp_path):
    """Declaring a column PII in the registry is enough: marketing exposes `country` as it is."""
    sources = tmp_path / "sources"
    sources.mkdir()
    text = TRAVEL_YAML.read_text()
    assert "    pii: [first_name, last_name, email, phone, date_of_birth]\n" in text
    (sources / "travel.yaml").write_text(text.replace(
        "    pii: [first_name, last_name, email, phone, date_of_birth]\n",
        "    pii: [first_name, last_name, email, phone, date_of_birth, country]\n"))
    registry = load_registry([sources])
    with pytest.raises(governance.PolicyError) as err:
        governance.load_validated_policy(project_copy, registry=registry)
    problems = str(err.value).splitlines()
    assert {p.split(": column ")[0].split(": ", 1)[1] for p in problems} == {
        "consumer 'marketing': dataset 'customers'", "consumer 'data_science': dataset 'customers'"}
    assert all(f"(travel.customers.country, PII in {sources / 'travel.yaml'})" in p for p in problems)
