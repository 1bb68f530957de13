"""Where the Spark merge job runs: launchers for `SparkEngine`, and the resource assets build it from.

Three launchers run the same script (`lake_assets/spark/merge_job.py`):
- `pipes_subprocess_launcher`: local `spark-submit` through Dagster Pipes (`PipesSubprocessClient`);
  job logs and the result come back as Pipes messages. Built per materialization (needs the context).
- `plain_launcher`: the same `spark-submit` without Dagster (tests, bench, scripts).
- `emr_serverless_launcher`: EMR Serverless through `PipesEMRServerlessClient`, Glue catalog, S3
  landing and scratch, Pipes messages read back from CloudWatch; a failed job run fails the
  materialization with the job run's own reason.
Local Spark binds to 127.0.0.1 and uses an Iceberg JDBC catalog over the same SQLite file as pyiceberg
(or the same PostgreSQL database). A catalog password reaches the job in its environment only: the
spec file (kept when a job fails) and the spark-submit command line carry none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource, PipesSubprocessClient
from dagster._core.errors import DagsterPipesExecutionError  # what PipesSubprocessClient raises on a non-zero exit
from dagster_aws.pipes import PipesCloudWatchMessageReader, PipesEMRServerlessClient

from lake_assets.core.settings import LakeSettings, current_settings
from lake_assets.core.spark.conf import (
    EMR_ICEBERG_JAR,
    LOG4J2_PROPERTIES,
    CatalogSettings,
    local_env,
    local_spark_conf,
    merge_job_script,
    spark_submit_command,
)
from lake_assets.core.spark.emr_package import ENVIRONMENT_DIR, JOB_PYTHON, publish_job_script
from lake_assets.core.spark.engine import Launcher, SparkEngine, SparkJobError, SparkJobInterrupted
from lake_assets.core.spark.merge_job import read_document, write_document


def _run_name(spec: dict) -> str:
    t = spec["table"]
    return f"{t['source']}.{t['name']}/{spec['batch_id']}-{uuid.uuid4().hex[:8]}"


def _table_of(spec: dict) -> str:
    return f"{spec['table']['source']}.{spec['table']['name']}"


def _job_document(messages: Sequence[Any]) -> dict | None:
    """The job's result document among the Pipes custom messages (the last one wins)."""
    for m in reversed(messages):
        if isinstance(m, dict) and "ok" in m and ("result" in m or "error" in m):
            return m
    return None


# --- local Spark -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalSpark:
    """How local spark-submit runs: master, driver memory and a work directory for specs and results."""

    workdir: Path
    master: str = "local[*]"
    driver_memory: str = "2g"
    python: str = sys.executable  # the driver runs this interpreter (it must import lake_assets)

    def prepare(self, spec: dict) -> tuple[Path, list[str], dict[str, str]]:
        run_dir = Path(self.workdir) / _run_name(spec)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_document(str(run_dir / "spec.json"), spec)
        log4j = run_dir / "log4j2.properties"
        log4j.write_text(LOG4J2_PROPERTIES)
        conf = local_spark_conf(CatalogSettings.from_json_dict(spec["catalog"]), master=self.master, driver_memory=self.driver_memory)
        args = ["--spec", str(run_dir / "spec.json"), "--result", str(run_dir / "result.json")]
        cmd = spark_submit_command(str(merge_job_script()), conf, args, log4j_file=log4j)
        return run_dir, cmd, local_env(self.python)

    @staticmethod
    def result(run_dir: Path) -> dict | None:
        path = run_dir / "result.json"
        return read_document(str(path)) if path.is_file() else None


def plain_launcher(local: LocalSpark, *, env: dict[str, str] | None = None, echo: bool = False, timeout: float | None = None) -> Launcher:
    """spark-submit as a plain subprocess; output goes to `job.log` in the run directory."""

    def launch(spec: dict, secret_env: Mapping[str, str]) -> dict:
        run_dir, cmd, job_env = local.prepare(spec)
        launched_at = time.time()
        with open(run_dir / "job.log", "wb") as out:
            proc = subprocess.run(cmd, env={**os.environ, **job_env, **(env or {}), **secret_env}, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout)
        log = (run_dir / "job.log").read_text(errors="replace")
        if echo:
            sys.stderr.write(log)
        doc = local.result(run_dir)
        if doc is None:
            tail = "\n".join(log.strip().splitlines()[-15:])
            raise SparkJobInterrupted(
                f"table {_table_of(spec)}: spark-submit exited with {proc.returncode} "
                f"without reporting a result (batch {spec['batch_id']}); last output:\n{tail}"
            )
        doc.setdefault("timings", {}).update(launched_at=launched_at, exited_at=time.time())
        if doc.get("ok"):
            shutil.rmtree(run_dir, ignore_errors=True)
        return doc

    return launch


def pipes_subprocess_launcher(context, local: LocalSpark, *, env: dict[str, str] | None = None) -> Launcher:
    """spark-submit through Dagster Pipes: the job's logs land in the run's event log, its result
    comes back as a Pipes custom message (the result file is read when the job failed)."""

    def launch(spec: dict, secret_env: Mapping[str, str]) -> dict:
        run_dir, cmd, job_env = local.prepare(spec)
        client = PipesSubprocessClient(env={**job_env, **(env or {}), **secret_env})
        launched_at = time.time()
        failure: Exception | None = None
        try:
            invocation = client.run(
                context=context, command=cmd, extras={"table": _table_of(spec), "batch_id": spec["batch_id"]}
            )
            doc = _job_document(invocation.get_custom_messages())
        except DagsterPipesExecutionError as e:
            failure, doc = e, None
        doc = doc or local.result(run_dir)
        if doc is None:
            raise SparkJobInterrupted(
                f"table {_table_of(spec)}: the Spark job of batch {spec['batch_id']} "
                f"reported no result ({failure or 'no Pipes message and no result file'}); see the run's logs"
            )
        doc.setdefault("timings", {}).update(launched_at=launched_at, exited_at=time.time())
        if doc.get("ok"):
            shutil.rmtree(run_dir, ignore_errors=True)
        return doc

    return launch


# --- EMR Serverless ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmrServerless:
    """An EMR Serverless Spark application and what the merge job needs on S3.

    script_uri: the job script; environment_uri: the job's Python environment archive, with this
    package installed, unpacked on the driver and executors as ./environment. Both are built and
    uploaded by `python -m lake_assets.core.spark.emr_package publish`.
    jobs_uri: an S3 prefix for job specs, results and scratch Parquet.
    """

    application_id: str
    execution_role_arn: str
    script_uri: str
    environment_uri: str
    jobs_uri: str
    region: str | None = None
    log_group: str = "/aws/emr-serverless/lake"
    log_stream_prefix: str = "lake"
    iceberg_jar: str = EMR_ICEBERG_JAR
    spark_conf: dict[str, str] = field(default_factory=dict)  # executor sizes and the like
    execution_timeout_minutes: int = 120
    poll_interval: float = 10.0

    @property
    def scratch(self) -> str:
        return self.jobs_uri.rstrip("/") + "/scratch"

    def job_spark_conf(self, catalog: CatalogSettings) -> dict[str, str]:
        python = JOB_PYTHON  # the archive's launcher (emr_package decides its layout)
        conf = {
            "spark.archives": f"{self.environment_uri}#{ENVIRONMENT_DIR}",
            "spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON": python,
            "spark.emr-serverless.driverEnv.PYSPARK_PYTHON": python,
            "spark.executorEnv.PYSPARK_PYTHON": python,
            "spark.jars": self.iceberg_jar,
            **catalog.spark_conf(),
            **self.spark_conf,
        }
        if self.region:
            conf["spark.emr-serverless.driverEnv.AWS_REGION"] = self.region
        return conf

    def start_job_run_params(self, spec: dict, catalog: CatalogSettings, spec_uri: str, result_uri: str) -> dict:
        conf = self.job_spark_conf(catalog)
        bad = {k: v for k, v in conf.items() if any(c.isspace() for c in f"{k}{v}")}
        if bad:
            raise ValueError(f"Spark conf for EMR Serverless cannot hold whitespace: {sorted(bad)}")
        t = spec["table"]
        return {
            "applicationId": self.application_id,
            "executionRoleArn": self.execution_role_arn,
            "name": f"lake-merge {t['source']}.{t['name']} {spec['batch_id']}"[:256],
            "jobDriver": {
                "sparkSubmit": {
                    "entryPoint": self.script_uri,
                    "entryPointArguments": ["--spec", spec_uri, "--result", result_uri],
                    "sparkSubmitParameters": " ".join(f"--conf {k}={v}" for k, v in conf.items()),
                }
            },
            "configurationOverrides": {
                "monitoringConfiguration": {
                    # Pipes reads the job's messages from the driver's stdout in CloudWatch.
                    "cloudWatchLoggingConfiguration": {
                        "enabled": True,
                        "logGroupName": self.log_group,
                        "logStreamNamePrefix": self.log_stream_prefix,
                        "logTypes": {"SPARK_DRIVER": ["STDOUT", "STDERR"]},
                    }
                }
            },
            "executionTimeoutMinutes": self.execution_timeout_minutes,
            "tags": {"lake-table": f"{t['source']}.{t['name']}", "lake-batch-id": spec["batch_id"]},
        }


class LakeEMRServerlessClient(PipesEMRServerlessClient):
    """PipesEMRServerlessClient whose failure carries the job run's own reason (stateDetails).

    The stock client raises a bare "EMR Serverless job failed" and only logs the details; a failed
    materialization should say why. Dashboard links are not fetched (the job run id is logged).
    """

    def _wait_for_completion(self, context, start_response):
        app, run_id = start_response["applicationId"], start_response["jobRunId"]
        while True:
            response = self.client.get_job_run(applicationId=app, jobRunId=run_id)
            run = response["jobRun"]
            state = run["state"]
            if state == "SUCCESS":
                context.log.info(f"[pipes] EMR Serverless job run {run_id} succeeded")
                return response
            if state in ("FAILED", "CANCELLED", "CANCELLING"):
                reason = run.get("stateDetails") or "no reason given by EMR Serverless"
                raise SparkJobInterrupted(f"EMR Serverless job run {run_id} ({run.get('name', '')}) of application {app} ended {state}: {reason}")
            time.sleep(self.poll_interval)


def emr_serverless_launcher(context, emr: EmrServerless, *, emr_client=None, logs_client=None) -> Launcher:
    """Submit the job to EMR Serverless through Dagster Pipes; the spec and result travel via S3."""
    import boto3

    emr_client = emr_client or boto3.client("emr-serverless", region_name=emr.region or None)  # None: boto3's default
    logs_client = logs_client or boto3.client("logs", region_name=emr.region or None)

    def launch(spec: dict, secret_env: Mapping[str, str]) -> dict:
        if secret_env:
            # A job run's environment on EMR Serverless is part of its sparkSubmitParameters, which
            # GetJobRun returns to anyone allowed to list job runs: not a place for a password.
            raise SparkJobError(
                f"table {_table_of(spec)}: EMR Serverless jobs use the Glue catalog and the execution role; "
                f"a catalog with a password ({', '.join(sorted(secret_env))}) cannot be handed to a job run"
            )
        catalog = CatalogSettings.from_json_dict(spec["catalog"])
        base = f"{emr.jobs_uri.rstrip('/')}/runs/{_run_name(spec)}"
        spec_uri, result_uri = f"{base}/spec.json", f"{base}/result.json"
        write_document(spec_uri, spec)
        # A fresh client per job run: the CloudWatch reader keeps per-run log streams.
        client = LakeEMRServerlessClient(
            client=emr_client,
            message_reader=PipesCloudWatchMessageReader(client=logs_client),
            poll_interval=emr.poll_interval,
        )
        params = emr.start_job_run_params(spec, catalog, spec_uri, result_uri)
        launched_at = time.time()
        try:
            invocation = client.run(context=context, start_job_run_params=params)
        except SparkJobError as failed:
            doc = _s3_document(result_uri)
            if doc is not None and not doc.get("ok"):
                return doc  # the job's own error (schema drift, commit conflict) maps to the core's
            raise SparkJobInterrupted(f"table {_table_of(spec)}: batch {spec['batch_id']}: {failed}") from None
        doc = _job_document(invocation.get_custom_messages()) or _s3_document(result_uri)
        if doc is None:
            raise SparkJobInterrupted(
                f"table {_table_of(spec)}: EMR Serverless job for batch {spec['batch_id']} succeeded but reported "
                f"no result (no Pipes message in CloudWatch group {emr.log_group}, nothing at {result_uri})"
            )
        doc.setdefault("timings", {}).update(launched_at=launched_at, exited_at=time.time())
        return doc

    return launch


def _s3_document(uri: str) -> dict | None:
    try:
        return read_document(uri)
    except Exception:  # noqa: BLE001 - not written (the job died first); botocore's NoSuchKey has no stable import
        return None


# --- the resource --------------------------------------------------------------------------------


class SparkMergeResource(ConfigurableResource):
    """How `engine: spark` tables merge: `local` spark-submit, or `emr` (EMR Serverless + Glue)."""

    mode: str = "local"  # local | emr
    lake_home: str = ".lake"  # from_settings() uses the settings' LAKE_HOME
    landing: str | None = None  # landing root; default $LAKE_HOME/landing locally, required for emr
    master: str = "local[*]"
    driver_memory: str = "2g"
    # EMR Serverless (mode emr)
    region: str | None = None
    emr_application_id: str | None = None
    emr_execution_role_arn: str | None = None
    emr_script_uri: str | None = None
    emr_environment_uri: str | None = None
    emr_jobs_uri: str | None = None
    emr_log_group: str = "/aws/emr-serverless/lake"
    glue_warehouse: str | None = None  # s3:// warehouse of the Glue catalog

    @classmethod
    def from_settings(cls, settings: LakeSettings) -> SparkMergeResource:
        """The Spark engine of a deployment: local spark-submit, or EMR Serverless when LAKE_ENV=aws."""
        sp = settings.spark
        aws = settings.aws
        return cls(
            mode="emr" if settings.env == "aws" else "local",
            lake_home=str(settings.home),
            landing=aws.landing_uri if aws is not None else str(settings.landing_dir),
            master=sp.master,
            driver_memory=sp.driver_memory,
            region=aws.region if aws is not None else None,
            emr_application_id=sp.emr_application_id,
            emr_execution_role_arn=sp.emr_execution_role_arn,
            emr_script_uri=sp.emr_script_uri,
            emr_environment_uri=sp.emr_environment_uri,
            emr_jobs_uri=sp.emr_jobs_uri,
            emr_log_group=sp.emr_log_group,
            glue_warehouse=aws.warehouse_uri if aws is not None else None,
        )

    def emr(self) -> EmrServerless:
        needed = {
            "emr_application_id": self.emr_application_id,
            "emr_execution_role_arn": self.emr_execution_role_arn,
            "emr_script_uri": self.emr_script_uri,
            "emr_environment_uri": self.emr_environment_uri,
            "emr_jobs_uri": self.emr_jobs_uri,
            "glue_warehouse": self.glue_warehouse,
            "landing": self.landing,
        }
        missing = [k for k, v in needed.items() if not v]
        if missing:
            raise ValueError(f"SparkMergeResource(mode='emr') needs {', '.join(missing)}")
        given = {k: v for k, v in needed.items() if v}
        return EmrServerless(
            application_id=given["emr_application_id"],
            execution_role_arn=given["emr_execution_role_arn"],
            script_uri=given["emr_script_uri"],
            environment_uri=given["emr_environment_uri"],
            jobs_uri=given["emr_jobs_uri"],
            region=self.region,
            log_group=self.emr_log_group,
        )

    def engine_for(self, context) -> SparkEngine:
        home = Path(self.lake_home).resolve()
        if self.mode == "emr":
            emr = self.emr()
            assert self.landing and self.glue_warehouse  # emr() requires them
            return SparkEngine(
                emr_serverless_launcher(context, emr),
                landing=self.landing,
                scratch=emr.scratch,
                catalog_settings=CatalogSettings.glue(self.glue_warehouse, region=self.region),
            )
        if self.mode != "local":
            raise ValueError(f"SparkMergeResource.mode must be local or emr, not {self.mode!r}")
        local = LocalSpark(workdir=home / "tmp" / "spark-jobs", master=self.master, driver_memory=self.driver_memory)
        return SparkEngine(
            pipes_subprocess_launcher(context, local),
            landing=self.landing or str(home / "landing"),
            scratch=str(home / "tmp" / "spark-scratch"),
        )


def spark_engine_for(context, spark: SparkMergeResource | None = None) -> SparkEngine:
    """The Spark engine for one materialization (its launcher reports through this context).

    spark: the resource as configured in the definitions; by default the process's settings'.
    """
    return (spark or SparkMergeResource.from_settings(current_settings())).engine_for(context)


__all__ = [
    "EmrServerless",
    "LakeEMRServerlessClient",
    "LocalSpark",
    "SparkMergeResource",
    "emr_serverless_launcher",
    "pipes_subprocess_launcher",
    "plain_launcher",
    "publish_job_script",
    "spark_engine_for",
]
