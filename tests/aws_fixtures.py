"""The AWS stand-ins every aws-mode test shares, started once per session: moto's server on
127.0.0.1, a real PostgreSQL server, an offline Terraform and the infra/ stack applied against moto.

Session scope because each costs seconds (the apply a minute and more): test_infra.py,
test_sqs_sensor.py and test_aws_end_to_end.py use the same servers and the same applied stack.
moto's state lives as long as its server, so a test names what it creates uniquely, and one that
changes the applied stack (a bucket policy lifted to land files over HTTP) puts it back.

tests/conftest.py imports the fixtures; heavy imports (moto, boto3) happen when a fixture runs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.postgres_server import postgres_server

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
PLUGIN_DIR = Path(os.environ.get("LAKE_TF_PLUGIN_DIR", "/opt/tf-plugins"))
TERRAFORM = shutil.which("terraform")
# moto has no CreateApplication for this release label, nor ListPermissions on LF tags (infra/README.md).
MOTO_VARS = ["-var", "enable_emr_serverless=false", "-var", "enable_lf_tag_grants=false"]
MOTO_SERVICES = ("s3", "sqs", "kms", "glue", "iam", "sts", "secretsmanager", "athena", "emrserverless",
                 "lakeformation", "cloudwatchlogs")
MOTO_ACCOUNT_ID = "123456789012"  # the account moto answers sts:GetCallerIdentity with
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                    "AWS_DEFAULT_REGION": "us-east-1"}

needs_terraform = pytest.mark.skipif(TERRAFORM is None, reason="no terraform binary on PATH (the machines have 1.11 at /usr/local/bin)")


def tf(workdir: Path, *args: str, env: dict[str, str], timeout: float = 480) -> subprocess.CompletedProcess:
    """One terraform command; its output in the failure message."""
    assert TERRAFORM is not None
    proc = subprocess.run([TERRAFORM, *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"terraform {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def tf_workdir(tmp_path: Path, env: dict[str, str]) -> Path:
    """A copy of infra/ (never the operator's state or overrides), initialized from the offline mirror.
    Sets TF_DATA_DIR in `env` to a directory of the copy's own."""
    work = tmp_path / "infra"
    shutil.copytree(INFRA, work, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*", "*_override.tf"))
    env["TF_DATA_DIR"] = str(tmp_path / "tfdata")
    tf(work, "init", "-backend=false", "-input=false", f"-plugin-dir={PLUGIN_DIR}", env=env)
    return work


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's server on 127.0.0.1 (a free port): the AWS endpoints of every aws-mode test."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1; tests take a database each (postgres_server.fresh_database)."""
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def tf_env(tmp_path_factory) -> dict[str, str]:
    """An offline Terraform: the provider from the local mirror, no CLI config, no network."""
    if TERRAFORM is None:
        pytest.skip("no terraform binary on PATH")
    if not (PLUGIN_DIR / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
        pytest.skip(f"no offline hashicorp/aws provider mirror at {PLUGIN_DIR} (LAKE_TF_PLUGIN_DIR)")
    root = tmp_path_factory.mktemp("terraform")
    (root / "cli.tfrc").write_text("")
    return {**os.environ, "TF_CLI_CONFIG_FILE": str(root / "cli.tfrc"), "TF_IN_AUTOMATION": "1",
            "CHECKPOINT_DISABLE": "1", "TF_INPUT": "0"}


def aws_clients(endpoint: str, *services: str) -> dict[str, Any]:
    import boto3

    return {s: boto3.client(s, endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                            aws_secret_access_key="testing") for s in services}


@pytest.fixture(scope="session")
def applied(tf_env, moto_endpoint, tmp_path_factory) -> dict[str, Any]:
    """The stack applied against moto, as an operator would (init, apply): its work directory,
    environment, variables, name prefix, outputs (`out`) and boto3 clients by service name."""
    tmp = tmp_path_factory.mktemp("applied")
    env = {**tf_env, **MOTO_CREDENTIALS}
    env.pop("AWS_PROFILE", None)
    env.pop("AWS_ENDPOINT_URL", None)
    work = tf_workdir(tmp, env)
    endpoints = "\n".join(f'    {s} = "{moto_endpoint}"' for s in MOTO_SERVICES)
    # An override file merges into the stack's provider block: production config has no emulator knobs.
    (work / "moto_override.tf").write_text(f"""provider "aws" {{
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  s3_use_path_style           = true
  endpoints {{
{endpoints}
  }}
}}
""")
    prefix = f"t{uuid.uuid4().hex[:6]}"
    tf_vars = [*MOTO_VARS, "-var", f"name_prefix={prefix}"]
    tf(work, "apply", "-auto-approve", "-no-color", *tf_vars, env=env, timeout=540)
    outputs = {k: v["value"] for k, v in json.loads(tf(work, "output", "-json", env=env).stdout).items()}
    clients = aws_clients(moto_endpoint, "s3", "sqs", "glue", "kms", "secretsmanager", "lakeformation", "iam", "athena")
    return {"work": work, "env": env, "vars": tf_vars, "prefix": prefix, "out": outputs, "endpoint": moto_endpoint, **clients}


@pytest.fixture(scope="session")
def filters_plan(applied) -> dict[str, Any]:
    """`terraform show -json` of the plan with the data cells filters and LF-tag grants on (moto has
    no API for them: infra/README.md), on top of the applied state."""
    work, env = applied["work"], applied["env"]
    tf(work, "plan", "-no-color", "-refresh=false", "-out=filters.tfplan", *applied["vars"], "-var", "manage_data_cells_filters=true",
       "-var", "enable_lf_tag_grants=true", env=env)
    return json.loads(tf(work, "show", "-json", "filters.tfplan", env=env).stdout)


@contextlib.contextmanager
def plain_http_allowed(s3, *buckets: str) -> Iterator[None]:
    """The stack's buckets refuse plain HTTP (a TLS-only bucket policy, which moto evaluates); moto
    serves HTTP. The policies are lifted for the block and put back after it."""
    saved = {b: s3.get_bucket_policy(Bucket=b)["Policy"] for b in buckets}
    for b in buckets:
        s3.delete_bucket_policy(Bucket=b)
    try:
        yield
    finally:
        for b, policy in saved.items():
            s3.put_bucket_policy(Bucket=b, Policy=policy)
