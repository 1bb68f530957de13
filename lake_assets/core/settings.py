"""The lake's settings: read from the environment once, validated once, handed to everything else.

`LAKE_ENV` (local | aws) picks the deployment; every other setting is configuration with a default
that fits it. Nothing else in the code reads the environment for the lake's settings: resources,
sensors, schedules, the dbt target, the dbt plugin and the Spark launcher all take a
`LakeSettings` (the current process's is `current_settings()`). Secrets (the ledger DSN, the Slack token) are kept
as `SecretStr`, so printing the settings never shows them; the mask key is only named here (a file
in LAKE_HOME, a Secrets Manager secret on AWS) and read by lake_assets.core.mask_key.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

REPO_ROOT = Path(__file__).resolve().parents[2]
CATALOG_NAME = "lake"  # the Iceberg catalog's name everywhere (Spark's JDBC catalog keys rows by it)
DBT_TARGETS = {"local": "local", "aws": "athena"}


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the environment variable."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AwsSettings(_Frozen):
    region: str
    warehouse_uri: str  # s3:// warehouse of the Glue catalog
    landing_bucket: str
    landing_prefix: str = ""
    ledger_dsn: SecretStr  # PostgreSQL; may carry a password, never printed
    endpoint_url: str | None = None  # an AWS API emulator (tests); None on AWS
    # The SQS queue the landing bucket's ObjectCreated notifications go to. Set: the SQS sensor
    # records arrivals and the S3 listing only reconciles; unset: the listing is the only path.
    arrivals_queue_url: str | None = None
    mask_key_secret_id: str = "lake/mask-key"  # Secrets Manager: the `hash` mask's HMAC key (32 bytes)

    @property
    def landing_uri(self) -> str:
        prefix = self.landing_prefix.strip("/")
        return f"s3://{self.landing_bucket}/{prefix}" if prefix else f"s3://{self.landing_bucket}"


class SparkSettings(_Frozen):
    master: str = "local[*]"
    driver_memory: str = "2g"
    emr_application_id: str | None = None
    emr_execution_role_arn: str | None = None
    emr_script_uri: str | None = None
    emr_environment_uri: str | None = None
    emr_jobs_uri: str | None = None
    emr_log_group: str = "/aws/emr-serverless/lake"


class SlackSettings(_Frozen):
    """Where the alert sensors post (lake_assets/alerts.py); present only when a token is configured."""

    token: SecretStr | None = None  # LAKE_SLACK_TOKEN (an ECS task secret, say); never printed
    token_secret_id: str | None = None  # else a Secrets Manager secret holding it (LAKE_SLACK_TOKEN_SECRET_ID)
    channel: str = "#lake-alerts"
    # Slack's Web API; another base URL reaches Slack through a proxy (tests: a local recorder).
    api_url: str = "https://slack.com/api/"
    webserver_url: str | None = None  # the Dagster UI, for links to failed runs


class LakeSettings(_Frozen):
    env: Literal["local", "aws"] = "local"
    home: Path  # local lake: landing, warehouse, catalog.db, ledger.db, Dagster home, caches
    sources_dirs: tuple[Path, ...] = ()  # the user's registry directories (LAKE_SOURCES_DIR)
    # The built-in registry directory (the demo's `travel` source): used when no LAKE_SOURCES_DIR is
    # given, and beside them only when asked (LAKE_BUILTIN_SOURCES=true), so a user's lake holds only
    # the user's sources.
    builtin_sources: bool = True
    dagster_home_dir: Path | None = None  # DAGSTER_HOME when set; else <home>/dagster
    settle_seconds: float = Field(default=5.0, ge=0)  # a local file is read once unchanged this long
    lock_wait_seconds: float = Field(default=120.0, ge=0)  # wait for another merge of the same table
    aws: AwsSettings | None = None
    spark: SparkSettings = SparkSettings()
    slack: SlackSettings | None = None  # None: no token configured, no alert sensors

    # --- where things are -----------------------------------------------------------------------

    @property
    def landing_dir(self) -> Path:
        return self.home / "landing"

    @property
    def warehouse_dir(self) -> Path:
        return self.home / "warehouse"

    @property
    def catalog_db(self) -> Path:
        return self.home / "catalog.db"

    @property
    def ledger_db(self) -> Path:
        return self.home / "ledger.db"

    @property
    def dagster_home(self) -> Path:
        """The lake's Dagster instance (run history, sensor cursors): what `make ui`, the ingest
        command and the demo all use, so their runs show in the same UI."""
        return self.dagster_home_dir or self.home / "dagster"

    @property
    def mask_key_file(self) -> Path:
        """The local `hash` mask key (generated once, mode 0600): in the lake, never the repository."""
        return self.home / "secrets" / "mask_key"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def dbt_target(self) -> str:
        return DBT_TARGETS[self.env]

    @property
    def arrivals_queue_url(self) -> str | None:
        return self.aws.arrivals_queue_url if self.aws is not None else None

    @property
    def automation_running(self) -> bool:
        """Whether sensors and schedules run by default: locally yes (the laptop is the deployment);
        on AWS an operator turns them on once the stack is in place."""
        return self.env == "local"

    def with_home(self, home: Path) -> LakeSettings:
        return self.model_copy(update={"home": Path(home).resolve()})

    # --- to and from the environment ------------------------------------------------------------

    @classmethod
    def local(cls, home: Path, **overrides: Any) -> LakeSettings:
        """Settings of a local lake at `home` (tests, the demo)."""
        return cls(env="local", home=Path(home).resolve(), **overrides)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LakeSettings:
        e = os.environ if environ is None else environ
        env = e.get("LAKE_ENV", "local") or "local"
        if env not in DBT_TARGETS:
            raise SettingsError(f"LAKE_ENV={env!r}: use 'local' or 'aws'")

        def number(name: str, default: float) -> float:
            raw = e.get(name)
            if raw in (None, ""):
                return default
            try:
                return float(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r}: expected a number of seconds") from None

        def flag(name: str, default: bool) -> bool:
            raw = (e.get(name) or "").strip().lower()
            if not raw:
                return default
            if raw in ("1", "true", "yes", "on"):
                return True
            if raw in ("0", "false", "no", "off"):
                return False
            raise SettingsError(f"{name}={e.get(name)!r}: expected true or false")

        def need(name: str) -> str:
            v = e.get(name)
            if not v:
                raise SettingsError(f"LAKE_ENV=aws needs {name}")
            return v

        aws = None
        if env == "aws":
            aws = AwsSettings(
                region=e.get("AWS_REGION") or e.get("AWS_DEFAULT_REGION") or "us-east-1",
                warehouse_uri=need("LAKE_WAREHOUSE_URI"),
                landing_bucket=need("LAKE_LANDING_BUCKET"),
                landing_prefix=e.get("LAKE_LANDING_PREFIX", ""),
                ledger_dsn=SecretStr(need("LAKE_LEDGER_DSN")),
                endpoint_url=e.get("AWS_ENDPOINT_URL") or None,
                arrivals_queue_url=e.get("LAKE_ARRIVALS_QUEUE_URL") or None,
                mask_key_secret_id=e.get("LAKE_MASK_KEY_SECRET_ID") or "lake/mask-key",
            )
        spark = SparkSettings(
            master=e.get("LAKE_SPARK_MASTER") or "local[*]",
            driver_memory=e.get("LAKE_SPARK_DRIVER_MEMORY") or "2g",
            emr_application_id=e.get("LAKE_EMR_APPLICATION_ID") or None,
            emr_execution_role_arn=e.get("LAKE_EMR_EXECUTION_ROLE_ARN") or None,
            emr_script_uri=e.get("LAKE_EMR_SCRIPT_URI") or None,
            emr_environment_uri=e.get("LAKE_EMR_ENVIRONMENT_URI") or None,
            emr_jobs_uri=e.get("LAKE_EMR_JOBS_URI") or None,
            emr_log_group=e.get("LAKE_EMR_LOG_GROUP") or "/aws/emr-serverless/lake",
        )
        slack = None
        if e.get("LAKE_SLACK_TOKEN") or e.get("LAKE_SLACK_TOKEN_SECRET_ID"):
            slack = SlackSettings(
                token=SecretStr(e["LAKE_SLACK_TOKEN"]) if e.get("LAKE_SLACK_TOKEN") else None,
                token_secret_id=e.get("LAKE_SLACK_TOKEN_SECRET_ID") or None,
                channel=e.get("LAKE_SLACK_CHANNEL") or "#lake-alerts",
                api_url=e.get("LAKE_SLACK_API_URL") or "https://slack.com/api/",
                webserver_url=(e.get("LAKE_DAGSTER_URL") or "").rstrip("/") or None,
            )
        # Relative directories are taken from where the user launched, like LAKE_HOME.
        sources = tuple(resolve_home(p, e) for p in (e.get("LAKE_SOURCES_DIR") or "").split(os.pathsep) if p)
        try:
            return cls(
                env=env,
                home=resolve_home(e.get("LAKE_HOME"), e),
                sources_dirs=sources,
                builtin_sources=flag("LAKE_BUILTIN_SOURCES", not sources),
                dagster_home_dir=resolve_home(e["DAGSTER_HOME"], e) if e.get("DAGSTER_HOME") else None,
                # S3 objects are complete when listed; a local file may still be being written.
                settle_seconds=number("LAKE_SETTLE_SECONDS", 5.0 if env == "local" else 0.0),
                lock_wait_seconds=number("LAKE_LOCK_WAIT_SECONDS", 120.0),
                aws=aws,
                spark=spark,
                slack=slack,
            )
        except ValidationError as err:
            raise SettingsError(f"invalid lake settings: {err}") from None

    def to_env(self) -> dict[str, str]:
        """The variables that give a child process (dbt, spark-submit) these same settings."""
        out = {
            "LAKE_ENV": self.env,
            "LAKE_HOME": str(self.home),
            "LAKE_SETTLE_SECONDS": repr(self.settle_seconds),
            "LAKE_LOCK_WAIT_SECONDS": repr(self.lock_wait_seconds),
            "LAKE_SPARK_MASTER": self.spark.master,
            "LAKE_SPARK_DRIVER_MEMORY": self.spark.driver_memory,
        }
        if self.sources_dirs:
            out["LAKE_SOURCES_DIR"] = os.pathsep.join(str(p) for p in self.sources_dirs)
        out["LAKE_BUILTIN_SOURCES"] = str(self.builtin_sources).lower()
        out["DAGSTER_HOME"] = str(self.dagster_home)
        if self.aws is not None:
            out |= {"AWS_REGION": self.aws.region, "LAKE_WAREHOUSE_URI": self.aws.warehouse_uri,
                    "LAKE_LANDING_BUCKET": self.aws.landing_bucket, "LAKE_LANDING_PREFIX": self.aws.landing_prefix,
                    "LAKE_MASK_KEY_SECRET_ID": self.aws.mask_key_secret_id}
            if self.aws.endpoint_url:
                out["AWS_ENDPOINT_URL"] = self.aws.endpoint_url
            if self.aws.arrivals_queue_url:
                out["LAKE_ARRIVALS_QUEUE_URL"] = self.aws.arrivals_queue_url
        # The Slack token stays in this process: no child (dbt, spark-submit) posts alerts.
        return out


def resolve_home(value: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """LAKE_HOME (or another directory setting): default `<repo>/.lake`. A relative value is taken
    relative to the directory the user launched from ($PWD), not to a child's working directory
    (dbt runs in the dbt project, the Dagster UI in its instance directory)."""
    e = os.environ if environ is None else environ
    if not value:
        return (REPO_ROOT / ".lake").resolve()
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(e.get("PWD") or os.getcwd()) / path
    return path.resolve()


@functools.cache
def current_settings() -> LakeSettings:
    """This process's settings, read from the environment the first time they are asked for."""
    return LakeSettings.from_env()
