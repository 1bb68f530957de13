"""The EMR Serverless job environment (lake_assets/core/spark/emr_package.py): built for real with
pip from the package index (binary wheels for EMR's Linux platform), imported by a clean
interpreter that sees nothing but the archive and the standard library, and published with the job
script to S3 on moto's server, where the job run's request points.

On an x86_64 Linux host with Python 3.11 (these machines: glibc 2.36 >= Amazon Linux 2023's 2.34)
the EMR x86_64 archive is also this host's, so the import test runs the artifact EMR would run."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tarfile
from pathlib import Path

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

from lake_assets.core.spark import emr_package
from lake_assets.core.spark.conf import CatalogSettings, merge_job_script
from lake_assets.core.spark.emr_package import ENVIRONMENT_DIR, JOB_PYTHON, SITE_PACKAGES, Target
from resources.spark import EmrServerless

HOST_IS_EMR_X86 = sys.platform == "linux" and platform.machine() == "x86_64" and sys.version_info[:2] == (3, 11)
# The interpreter behind this venv: no site-packages of ours unless a path is given.
BASE_PYTHON = str(Path(sys._base_executable).resolve()) if hasattr(sys, "_base_executable") else sys.executable


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    target = Target("x86_64") if HOST_IS_EMR_X86 else Target("host")
    return emr_package.build(tmp_path_factory.mktemp("dist"), target, interpreter=BASE_PYTHON)


@pytest.fixture(scope="module")
def environment(archive, tmp_path_factory) -> Path:
    """The archive unpacked as EMR unpacks `spark.archives=<uri>#environment`."""
    root = tmp_path_factory.mktemp("job") / ENVIRONMENT_DIR
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="tar")
    return root


def test_the_archive_holds_the_pinned_job_packages_as_linux_wheels(environment):
    manifest = json.loads((environment / "lake-environment.json").read_text())
    pins = emr_package.job_requirements()
    assert manifest["requirements"] == pins
    site = environment / SITE_PACKAGES
    installed = {}
    for info in site.glob("*.dist-info"):
        name, version = info.name.removesuffix(".dist-info").rsplit("-", 1)
        installed[name.lower().replace("_", "-")] = version
        tags = [line.split(": ", 1)[1] for line in (info / "WHEEL").read_text().splitlines() if line.startswith("Tag: ")]
        assert tags and all(t.endswith("-any") or "linux" in t for t in tags), f"{info.name}: {tags}"
        if HOST_IS_EMR_X86:
            assert all(t.endswith("-any") or "manylinux" in t and t.endswith("_x86_64") for t in tags), f"{info.name}: {tags}"
    for pin in pins:
        name, version = pin.split("==")
        assert installed[name.split("[")[0]] == version, pin
    assert installed["lakehouse"] == "0.1.0" and (site / "lake_assets" / "core" / "spark" / "merge_job.py").is_file()
    assert not {"pyspark", "dagster", "sqlalchemy"} & set(installed)  # EMR's Spark has pyspark; the job needs no Dagster
    assert (environment / "bin" / "python").stat().st_mode & 0o111


@pytest.mark.skipif(not HOST_IS_EMR_X86, reason="the archive is this host's only on x86_64 Linux with Python 3.11")
def test_a_clean_interpreter_imports_the_job_from_the_archive_alone(environment):
    """-I -S: no user or system site-packages, no PYTHONPATH; only the archive's site-packages."""
    site = environment / SITE_PACKAGES
    probe = f"""
import sys, sysconfig
sys.path.insert(0, {str(site)!r})
import lake_assets.core.spark.merge_job, pyiceberg.catalog.glue, pyiceberg_core, dagster_pipes, duckdb, boto3
stdlib = sysconfig.get_paths()["stdlib"]
outside = sorted({{m.__file__ for m in list(sys.modules.values())
                  if getattr(m, "__file__", None) and not m.__file__.startswith(({str(site)!r}, stdlib))}})
print(lake_assets.core.spark.merge_job.__file__)
print(outside)
"""
    out = subprocess.run([BASE_PYTHON, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    job_file, outside = out.stdout.splitlines()
    assert job_file.startswith(str(site)) and outside == "[]"


@pytest.mark.skipif(not HOST_IS_EMR_X86, reason="the archive is this host's only on x86_64 Linux with Python 3.11")
def test_the_launcher_runs_the_published_script(environment, tmp_path):
    """What EMR runs: PYSPARK_DRIVER_PYTHON=./environment/bin/python on the job script, from the job's directory."""
    (tmp_path / ENVIRONMENT_DIR).symlink_to(environment)
    out = subprocess.run([JOB_PYTHON, str(merge_job_script()), "--help"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "--spec" in out.stdout
    missing = subprocess.run([JOB_PYTHON, str(merge_job_script())], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                             env={"PATH": "/usr/bin:/bin"})
    assert missing.returncode == 2 and "--spec" in missing.stderr  # argparse, after every import of the module worked


def test_arm64_resolves_to_aarch64_wheels_for_every_package():
    wheels = emr_package.resolve(Target("arm64"))
    names = {w.split("-")[0].lower().replace("_", "-") for w in wheels}
    assert {"pyiceberg", "pyiceberg-core", "pyarrow", "duckdb", "pydantic-core", "dagster-pipes"} <= names
    binary = [w for w in wheels if not w.endswith("-none-any.whl")]
    assert binary and all("aarch64" in w for w in binary), binary


def test_an_unknown_arch_is_refused():
    with pytest.raises(emr_package.PackageError, match="--arch must be one of x86_64, arm64, host"):
        Target("ppc64le")


@pytest.fixture
def s3(monkeypatch):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3")
    client.create_bucket(Bucket="lake-code")
    yield client
    requests.post(f"{endpoint}/moto-api/reset", timeout=10)
    server.stop()


def test_publish_puts_what_the_job_run_points_at(archive, s3, monkeypatch, capsys):
    env_uri, script_uri = "s3://lake-code/emr/lake-job-env.tar.gz", "s3://lake-code/emr/merge_job.py"
    monkeypatch.setenv("LAKE_EMR_ENVIRONMENT_URI", env_uri)
    monkeypatch.setenv("LAKE_EMR_SCRIPT_URI", script_uri)
    assert emr_package.main(["publish", "--archive", str(archive)]) == 0
    assert f"to {env_uri}" in capsys.readouterr().out
    head = s3.head_object(Bucket="lake-code", Key="emr/lake-job-env.tar.gz")
    assert head["ContentLength"] == archive.stat().st_size
    assert s3.get_object(Bucket="lake-code", Key="emr/merge_job.py")["Body"].read() == merge_job_script().read_bytes()
    # The submitted conf unpacks that archive as ./environment and runs its launcher.
    emr = EmrServerless(application_id="app", execution_role_arn="arn:aws:iam::1:role/r", script_uri=script_uri,
                        environment_uri=env_uri, jobs_uri="s3://lake-jobs/merge")
    conf = emr.job_spark_conf(CatalogSettings.glue("s3://w/iceberg", region="us-east-1"))
    assert conf["spark.archives"] == f"{env_uri}#{ENVIRONMENT_DIR}"
    assert {conf[k] for k in ("spark.emr-serverless.driverEnv.PYSPARK_PYTHON", "spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON",
                              "spark.executorEnv.PYSPARK_PYTHON")} == {JOB_PYTHON}


def test_publish_without_uris_says_which_settings(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("LAKE_EMR_ENVIRONMENT_URI", raising=False)
    monkeypatch.delenv("LAKE_EMR_SCRIPT_URI", raising=False)
    assert emr_package.main(["publish", "--archive", str(tmp_path / "x.tar.gz")]) == 1
    assert "LAKE_EMR_ENVIRONMENT_URI" in capsys.readouterr().err
