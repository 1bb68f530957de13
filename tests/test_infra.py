"""The Terraform stack in infra/: formatted and valid offline, applied against moto's server on
127.0.0.1 (endpoint overrides in a copy of the stack; moto stands in for the AWS APIs only), and its
Lake Formation grants and filters equal to what the governance policy says.

What moto cannot emulate is switched off by the stack's own variables (infra/README.md lists it);
the data cells filters and LF-tag grants are still checked in the saved plan against the policy."""

from __future__ import annotations

import json
import subprocess
import time
from urllib.parse import unquote_plus

import pytest
from botocore.exceptions import ClientError

from lake_assets.core import governance, infra_codegen
from lake_assets.core.registry import load_registry
from tests.aws_fixtures import INFRA, TERRAFORM, needs_terraform, plain_http_allowed, tf, tf_workdir


def _policy():
    return governance.load_validated_policy(registry=load_registry())


@needs_terraform
def test_terraform_is_formatted(tf_env):
    proc = subprocess.run([TERRAFORM, "fmt", "-check", "-recursive", "-diff"], cwd=INFRA, env=tf_env, capture_output=True, text=True)
    assert proc.returncode == 0, f"run `terraform fmt -recursive infra`:\n{proc.stdout}"


@needs_terraform
def test_terraform_validates_offline(tf_env, tmp_path):
    env = dict(tf_env)
    work = tf_workdir(tmp_path, env)
    assert "The configuration is valid" in tf(work, "validate", "-no-color", env=env).stdout


def test_generated_terraform_is_current():
    """infra/generated/lake.tf.json is what the registry and the policy say now (CI fails otherwise)."""
    assert infra_codegen.main(["check"]) == 0, f"run: {infra_codegen.COMMAND} generate"


def test_generated_filters_are_the_policy():
    """Each consumer table's filter: exactly the dataset's output columns, in order, and its row filter
    over them; the same filter name, expression and principals as the dbt model applies."""
    policy = _policy()
    model = infra_codegen.lake_model(load_registry(), policy)
    assert set(model["consumers"]) == set(policy.consumers)
    for cname, consumer in policy.consumers.items():
        generated = model["consumers"][cname]
        assert generated["database"] == f"consumer_{cname}"
        assert generated["principals"] == list(consumer.principals)
        assert len(generated["filters"]) == len(consumer.datasets)
        for dname, dataset in consumer.datasets.items():
            f = generated["filters"][f"{cname}_{dname}_rows"]
            assert f["table"] == dname
            assert f["column_names"] == [rule.as_ or col for col, rule in dataset.columns.items()]
            expected_rows = " and ".join(governance.condition_sql(c, dataset.columns[c.column].as_ or c.column)
                                         for c in dataset.row_filter) or "TRUE"
            assert f["row_filter"] == expected_rows
            dbt = governance.lake_formation_config(cname, consumer, dname, dataset)["lf_grants"]["data_cell_filters"]["filters"]
            assert list(dbt) == [f"{cname}_{dname}_rows"] and dbt[f"{cname}_{dname}_rows"]["row_filter"] == f["row_filter"]
    # the policy's row filters are really there (a policy edit that drops them fails here)
    assert model["consumers"]["finance"]["filters"]["finance_payments_rows"]["row_filter"] == "region = 'EMEA'"
    assert model["consumers"]["data_science"]["filters"]["data_science_customers_rows"]["row_filter"] == "country not in ('US')"


def test_no_consumer_is_granted_a_pii_column_the_policy_masks():
    """A PII column the policy masks under another name is absent from the consumer's filter; one
    masked under its own name is tagged with its mask, never `clear`; raw PII is in no filter."""
    registry = load_registry()
    policy = _policy()
    models = governance.aggregated_models()
    model = infra_codegen.lake_model(registry, policy)
    checked = 0
    for cname, consumer in policy.consumers.items():
        for dname, dataset in consumer.datasets.items():
            columns = model["consumers"][cname]["filters"][f"{cname}_{dname}_rows"]["column_names"]
            tags = governance.lake_formation_config(cname, consumer, dname, dataset)["lf_tags_config"]["tags_columns"]["lake_masking"]
            pii = governance.pii_columns(dataset.from_, models, registry)
            parent_pii_not_listed = set(pii) - set(dataset.columns)
            assert not parent_pii_not_listed & set(columns), f"{cname}.{dname}: unlisted PII {parent_pii_not_listed & set(columns)}"
            for col, rule in dataset.columns.items():
                if col not in pii or rule.mask == "none":
                    continue
                checked += 1
                assert rule.masked, f"{cname}.{dname}.{col}"
                if rule.as_ and rule.as_ != col:
                    assert col not in columns, f"{cname}.{dname}: raw PII column {col} granted"
                assert (rule.as_ or col) in tags[rule.mask] and (rule.as_ or col) not in tags.get("clear", [])
    assert checked >= 8  # the policy masks e-mail, names, phone, birth dates and card numbers


# --- applied against moto's server ----------------------------------------------------------


# `applied` (tests/aws_fixtures.py): the stack applied once per session, shared with test_aws_end_to_end.py.


@needs_terraform
def test_buckets_are_encrypted_versioned_and_closed(applied):
    s3, out = applied["s3"], applied["out"]
    env = out["code_location_environment"]
    key_arn = applied["kms"].describe_key(KeyId=f"alias/{applied['prefix']}")["KeyMetadata"]["Arn"]
    buckets = [env["LAKE_LANDING_BUCKET"], env["LAKE_WAREHOUSE_URI"].split("/")[2], env["LAKE_ATHENA_S3_STAGING_DIR"].split("/")[2]]
    assert len(set(buckets)) == 3
    for bucket in buckets:
        (rule,) = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn}, bucket
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled", bucket
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        assert block == {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True}
    (landing_rule,) = s3.get_bucket_lifecycle_configuration(Bucket=env["LAKE_LANDING_BUCKET"])["Rules"]
    assert landing_rule["Status"] == "Enabled"
    assert landing_rule["Expiration"] == {"Days": 30}
    assert landing_rule["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30


@needs_terraform
def test_landing_notifications_reach_the_queue_with_a_dead_letter_queue(applied):
    s3, sqs, env = applied["s3"], applied["sqs"], applied["out"]["code_location_environment"]
    queue_url, dlq_url = env["LAKE_ARRIVALS_QUEUE_URL"], applied["out"]["arrivals_dead_letter_queue_url"]
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq_arn and int(redrive["maxReceiveCount"]) == 5
    assert int(attrs["VisibilityTimeout"]) >= 120  # longer than a sensor tick
    policy = json.loads(attrs["Policy"])
    (stmt,) = policy["Statement"]
    assert stmt["Principal"] == {"Service": "s3.amazonaws.com"} and stmt["Action"] == "sqs:SendMessage"

    (config,) = s3.get_bucket_notification_configuration(Bucket=env["LAKE_LANDING_BUCKET"])["QueueConfigurations"]
    assert config["QueueArn"] == attrs["QueueArn"] and config["Events"] == ["s3:ObjectCreated:*"]
    # S3 spells the rule's name "Prefix" or "prefix" depending on who asks
    assert [(r["Name"].lower(), r["Value"]) for r in config["Filter"]["Key"]["FilterRules"]] == [("prefix", env["LAKE_LANDING_PREFIX"])]

    # The buckets refuse plain HTTP (moto evaluates bucket policies: its endpoint is http://).
    with pytest.raises(ClientError, match="Forbidden|AccessDenied"):
        s3.put_object(Bucket=env["LAKE_LANDING_BUCKET"], Key="dms/x.csv", Body=b"x")
    with plain_http_allowed(s3, env["LAKE_LANDING_BUCKET"]):  # to land files here over moto's HTTP
        # What the SQS sensor will see: an object under the prefix is notified, one outside is not.
        s3.put_object(Bucket=env["LAKE_LANDING_BUCKET"], Key="elsewhere/x.csv", Body=b"x")
        key = f"{env['LAKE_LANDING_PREFIX']}travel/public/customers/LOAD00000001.parquet"
        s3.put_object(Bucket=env["LAKE_LANDING_BUCKET"], Key=key, Body=b"x")
        keys, deadline = [], time.monotonic() + 20
        while time.monotonic() < deadline and key not in keys:
            for m in sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
                keys += [unquote_plus(r["s3"]["object"]["key"]) for r in json.loads(m["Body"]).get("Records", [])]  # keys arrive URL-encoded
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
        assert keys == [key]
        for k in ("elsewhere/x.csv", key):  # the stack is shared (tests/aws_fixtures.py): no stray landed file
            s3.delete_object(Bucket=env["LAKE_LANDING_BUCKET"], Key=k)


@needs_terraform
def test_glue_databases_are_the_registry_and_the_policy(applied):
    registry, policy = load_registry(), _policy()
    expected = {t.source for t in registry.tables} | {"aggregated", "lake_governance"} | {f"consumer_{c}" for c in policy.consumers}
    names = {d["Name"] for d in applied["glue"].get_databases()["DatabaseList"]}
    assert expected <= names
    assert set(applied["out"]["glue_databases"]) == expected
    travel = applied["glue"].get_database(Name="travel")["Database"]
    assert travel["LocationUri"] == f"{applied['out']['code_location_environment']['LAKE_WAREHOUSE_URI']}/travel.db"


@needs_terraform
def test_secrets_roles_and_workgroups_exist(applied):
    prefix, out = applied["prefix"], applied["out"]
    assert out["secret_ids"] == {"ledger_dsn": f"{prefix}/ledger-dsn", "mask_key": f"{prefix}/mask-key", "slack_token": f"{prefix}/slack-token"}
    for name in out["secret_ids"].values():
        secret = applied["secretsmanager"].describe_secret(SecretId=name)
        assert secret["KmsKeyId"].startswith("arn:aws:kms:")
    # the code location reads the mask key from the secret the stack created (lake_assets.core.mask_key)
    assert out["code_location_environment"]["LAKE_MASK_KEY_SECRET_ID"] == f"{prefix}/mask-key"
    roles = {r["RoleName"] for r in applied["iam"].list_roles()["Roles"]}
    assert {f"{prefix}-code-location", f"{prefix}-emr-runtime", "lake-consumer-marketing", "lake-consumer-finance",
            "lake-consumer-data-science"} <= roles
    consumer_policy = json.loads(json.dumps(applied["iam"].get_role_policy(RoleName="lake-consumer-finance", PolicyName="lake")["PolicyDocument"]))
    resources = json.dumps(consumer_policy)
    assert "-warehouse" not in resources, "a consumer must not reach the warehouse except through Lake Formation"
    wg = applied["athena"].get_work_group(WorkGroup=prefix)["WorkGroup"]["Configuration"]
    assert wg["EnforceWorkGroupConfiguration"] is True
    assert wg["ResultConfiguration"]["EncryptionConfiguration"]["EncryptionOption"] == "SSE_KMS"
    assert wg["ResultConfiguration"]["OutputLocation"] == out["code_location_environment"]["LAKE_ATHENA_S3_STAGING_DIR"]


@needs_terraform
def test_lake_formation_grants_applied(applied):
    lf, policy = applied["lakeformation"], _policy()
    tags = {t["TagKey"]: sorted(t["TagValues"]) for t in lf.list_lf_tags()["LFTags"]}
    assert tags["lake_consumer"] == sorted(policy.consumers)
    assert set(tags["lake_masking"]) == set(governance.MASKING_TAG_VALUES)
    grants = lf.list_permissions()["PrincipalResourcePermissions"]
    consumers = {p.replace("{aws_account_id}", "123456789012"): name for name, c in policy.consumers.items() for p in c.principals}
    seen = set()
    for g in grants:
        principal = g["Principal"]["DataLakePrincipalIdentifier"]
        if principal in consumers:
            seen.add(principal)
            assert list(g["Resource"]) == ["Database"], g
            assert g["Resource"]["Database"]["Name"] == f"consumer_{consumers[principal]}", g
            assert g["Permissions"] == ["DESCRIBE"]
    assert seen == set(consumers)


@needs_terraform
def test_planned_filters_are_the_policy(filters_plan):
    """With the data cells filters on (moto has no API for them), the saved plan holds exactly the
    policy's filters and grants each one only to its consumer's principals."""
    plan = filters_plan
    created = [r for r in plan["resource_changes"] if r["change"]["actions"] == ["create"]]
    filters = {r["index"]: r["change"]["after"]["table_data"][0] for r in created if r["type"] == "aws_lakeformation_data_cells_filter"}
    wanted = {f.name: f for f in governance.cell_filters(_policy())}
    assert set(filters) == set(wanted)
    for name, f in wanted.items():
        assert filters[name]["database_name"] == f.database and filters[name]["table_name"] == f.table
        assert sorted(filters[name]["column_names"]) == sorted(f.column_names)  # the provider keeps them as a set
        assert filters[name]["row_filter"] == [{"filter_expression": f.row_filter, "all_rows_wildcard": []}]
    grants = [r["change"]["after"] for r in created if r["type"] == "aws_lakeformation_permissions" and r["name"] == "consumer_filter"]
    assert sorted((g["data_cells_filter"][0]["name"], g["principal"]) for g in grants) == sorted(
        (f.name, p.replace("{aws_account_id}", "123456789012")) for f in wanted.values() for p in f.principals)
    assert all(g["permissions"] == ["SELECT"] for g in grants)
    assert any(r["type"] == "aws_lakeformation_permissions" and r["name"] == "code_location_lf_tags" for r in created)
