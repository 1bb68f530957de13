"""Spark configuration for the merge job: the Iceberg catalog `lake` as Spark and pyiceberg both see it,
the jars local Spark needs, and the `spark-submit` command line.

Locally the catalog is Iceberg's JdbcCatalog over the same SQLite file pyiceberg's SqlCatalog uses
(the catalog name must be `lake` in both, it is part of every row of the catalog tables); on AWS it is
Glue. pyiceberg runs on the job's driver for table creation, sidecar tables and bookkeeping, Spark
does the table-side merge, and both write the one catalog.

A catalog password (a PostgreSQL SQL catalog) never goes into the job spec, which is a file kept
when a job fails, nor onto the spark-submit command line, which every user of the machine can read
in /proc: the launcher hands it to the job in the environment variable `CATALOG_PASSWORD_ENV`, and
the job puts it into the pyiceberg URI and the JDBC catalog's properties itself.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

CATALOG_NAME = "lake"
ICEBERG_RUNTIME_JAR = "iceberg-spark-runtime-3.5_2.12-1.10.2.jar"  # from snowpark-connect-deps-iceberg==1.0.2
SQLITE_JDBC_JAR = Path("/usr/share/java/sqlite-jdbc.jar")  # Debian libxerial-sqlite-jdbc-java
POSTGRES_JDBC_JAR = Path("/usr/share/java/postgresql.jar")  # Debian libpostgresql-jdbc-java
INSTALL_HINT = "run scripts/install_system_deps.sh (make setup does)"
# EMR 6.15+/7.x ship Iceberg; this is where EMR Serverless puts the runtime jar.
EMR_ICEBERG_JAR = "/usr/share/aws/iceberg/lib/iceberg-spark3-runtime.jar"

LOCAL_IP = "127.0.0.1"
# How a catalog password reaches the job: the launcher sets it in the job's environment only.
CATALOG_PASSWORD_ENV = "LAKE_CATALOG_PASSWORD"

# Spark's default log4j setup prints every INFO line to stderr; the job's own messages are what matter.
LOG4J2_PROPERTIES = """\
rootLogger.level = warn
rootLogger.appenderRef.console.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n
"""


class SparkSetupError(RuntimeError):
    """Something local Spark needs is missing (a jar, Java); the message says how to install it."""


@dataclass(frozen=True)
class CatalogSettings:
    """Where the Iceberg catalog `lake` lives: `sql` (SQLite/PostgreSQL via SQLAlchemy) or `glue`."""

    type: str
    warehouse: str
    uri: str | None = None  # SQLAlchemy URI for type sql, e.g. sqlite:////abs/path/catalog.db; never a password
    properties: dict[str, str] = field(default_factory=dict)  # extra pyiceberg properties (glue.region, s3.*)
    # The SQL catalog's password: kept out of the JSON form and the repr (see the module's docstring).
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.uri:
            uri, password = _split_password(self.uri)
            if password is not None:
                object.__setattr__(self, "uri", uri)
                object.__setattr__(self, "password", self.password or password)

    @classmethod
    def local(cls, lake_home: str | os.PathLike) -> CatalogSettings:
        home = Path(lake_home).resolve()
        return cls(type="sql", uri=f"sqlite:///{home}/catalog.db", warehouse=f"file://{home}/warehouse")

    @classmethod
    def glue(cls, warehouse: str, *, region: str | None = None, **properties: str) -> CatalogSettings:
        props = dict(properties)
        if region:
            props.setdefault("glue.region", region)
            props.setdefault("s3.region", region)
        return cls(type="glue", warehouse=warehouse, properties=props)

    def to_json_dict(self) -> dict:
        """The settings as the job spec carries them: no password."""
        return {"type": self.type, "warehouse": self.warehouse, "uri": self.uri, "properties": dict(self.properties)}

    def secret_env(self) -> dict[str, str]:
        """The variables a launcher sets in the job's environment (and nowhere else)."""
        return {CATALOG_PASSWORD_ENV: self.password} if self.password else {}

    def with_secret_env(self, environ: Mapping[str, str]) -> CatalogSettings:
        """These settings with the password the launcher put in the job's environment (if any)."""
        password = environ.get(CATALOG_PASSWORD_ENV)
        return replace(self, password=password) if password and self.type == "sql" else self

    def uri_with_password(self) -> str | None:
        """The URI pyiceberg logs in with, in the job only (never written or logged)."""
        if not self.uri or not self.password:
            return self.uri
        from sqlalchemy.engine import make_url

        return make_url(self.uri).set(password=self.password).render_as_string(hide_password=False)

    @classmethod
    def from_json_dict(cls, d: dict) -> CatalogSettings:
        return cls(type=d["type"], warehouse=d["warehouse"], uri=d.get("uri"), properties=dict(d.get("properties") or {}))

    def load(self):
        """The pyiceberg catalog (creates the SQL catalog tables if they are missing)."""
        from pyiceberg.catalog import load_catalog

        props = {"type": self.type, "warehouse": self.warehouse, **self.properties}
        uri = self.uri_with_password()
        if uri:
            props["uri"] = uri
        return load_catalog(CATALOG_NAME, **props)

    def secret_spark_conf(self) -> dict[str, str]:
        """The JDBC catalog's password property: set by the job on its own session, never on a command line."""
        return {f"spark.sql.catalog.{CATALOG_NAME}.jdbc.password": self.password} if self.type == "sql" and self.password else {}

    def spark_conf(self) -> dict[str, str]:
        """`spark.sql.catalog.lake.*` and the Iceberg SQL extensions (MERGE INTO); no password
        (`secret_spark_conf` has it)."""
        prefix = f"spark.sql.catalog.{CATALOG_NAME}"
        conf = {
            "spark.sql.extensions": "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
            prefix: "org.apache.iceberg.spark.SparkCatalog",
            # pyiceberg commits between Spark statements (schema, sidecars); Spark must not plan on a
            # cached, older table version.
            f"{prefix}.cache-enabled": "false",
            f"{prefix}.warehouse": self.warehouse,
            "spark.sql.session.timeZone": "UTC",
        }
        if self.type == "sql":
            conf.update(_jdbc_catalog_conf(prefix, self.uri))
        elif self.type == "glue":
            conf[f"{prefix}.catalog-impl"] = "org.apache.iceberg.aws.glue.GlueCatalog"
            conf[f"{prefix}.io-impl"] = "org.apache.iceberg.aws.s3.S3FileIO"
            region = self.properties.get("glue.region")
            if region:
                conf[f"{prefix}.client.region"] = region
        else:
            raise ValueError(f"catalog type {self.type!r} is not supported by the Spark engine (use sql or glue)")
        return conf


_SECRET_MARKERS = ("secret", "access-key", "session-token", "password", "token")


def catalog_settings_of(catalog) -> CatalogSettings:
    """The settings of an open pyiceberg catalog, so the job writes exactly the catalog the runner reads.

    Credentials are never copied into a job spec: the job uses its own (the EMR execution role), or
    the catalog password the launcher passes in its environment (`secret_env`).
    """
    if catalog.name != CATALOG_NAME:
        raise ValueError(
            f"catalog {catalog.name!r}: the Spark engine needs the catalog named {CATALOG_NAME!r} "
            "(Iceberg's JDBC catalog keys every table by catalog name; Spark resolves lake.<source>.<table>)"
        )
    props = dict(catalog.properties)
    kind = props.get("type") or type(catalog).__name__.removesuffix("Catalog").lower()
    if kind not in ("sql", "glue"):
        raise ValueError(f"catalog type {kind!r} is not supported by the Spark engine (use sql or glue)")
    if not props.get("warehouse"):
        raise ValueError(f"catalog {catalog.name!r} has no warehouse location; the Spark engine needs one")
    extra = {
        k: v
        for k, v in props.items()
        if k.startswith(("glue.", "s3.", "client.")) and not any(m in k for m in _SECRET_MARKERS)
    }
    return CatalogSettings(type=kind, warehouse=props["warehouse"], uri=props.get("uri"), properties=extra)


def _jdbc_catalog_conf(prefix: str, uri: str | None) -> dict[str, str]:
    if not uri:
        raise ValueError("a sql catalog needs its SQLAlchemy uri")
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    conf = {
        f"{prefix}.catalog-impl": "org.apache.iceberg.jdbc.JdbcCatalog",
        # pyiceberg's SqlCatalog creates the catalog tables. Iceberg's own check for them leaves a
        # result set open on a pooled SQLite connection, whose read lock then blocks every pyiceberg
        # commit ("database is locked") for as long as the Spark session lives.
        f"{prefix}.jdbc.init-catalog-tables": "false",
    }
    if url.get_backend_name() == "sqlite":
        db = url.database
        if not db or db == ":memory:":
            raise ValueError(f"catalog uri {uri}: Spark needs a SQLite file, not an in-memory database")
        conf[f"{prefix}.uri"] = f"jdbc:sqlite:{Path(db).resolve()}"
    elif url.get_backend_name() == "postgresql":
        port = f":{url.port}" if url.port else ""
        conf[f"{prefix}.uri"] = f"jdbc:postgresql://{url.host}{port}/{url.database}"
        if url.username:
            conf[f"{prefix}.jdbc.user"] = url.username
    else:
        raise ValueError(f"catalog uri {uri}: the Spark engine supports SQLite and PostgreSQL catalogs")
    return conf


def _split_password(uri: str) -> tuple[str, str | None]:
    """A SQLAlchemy URI without its password (userinfo or `?password=`), and the password."""
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    password = url.password if url.password is not None else url.query.get("password")
    if password is None:
        return uri, None
    if isinstance(password, tuple):
        password = password[-1]
    bare = url._replace(password=None).difference_update_query(["password"])  # set(password=None) keeps it
    return bare.render_as_string(hide_password=False), str(password)


def iceberg_runtime_jar() -> Path:
    spec = importlib.util.find_spec("snowpark_connect_deps_iceberg")
    if spec is None or not spec.submodule_search_locations:
        raise SparkSetupError("snowpark-connect-deps-iceberg==1.0.2 is not installed (it carries the Iceberg Spark runtime jar)")
    jar = Path(list(spec.submodule_search_locations)[0]) / "jars" / ICEBERG_RUNTIME_JAR
    if not jar.is_file():
        raise SparkSetupError(f"{jar} is missing; install snowpark-connect-deps-iceberg==1.0.2 (1.0.3's jar is broken)")
    return jar


def jdbc_driver_jars(catalog: CatalogSettings) -> list[Path]:
    if catalog.type != "sql":
        return []
    jar = POSTGRES_JDBC_JAR if (catalog.uri or "").startswith("postgresql") else SQLITE_JDBC_JAR
    if not jar.is_file():
        raise SparkSetupError(f"{jar} is missing: {INSTALL_HINT}")
    return [jar]


def spark_home() -> Path:
    from pyspark.find_spark_home import _find_spark_home

    return Path(_find_spark_home())


def local_spark_conf(
    catalog: CatalogSettings, *, master: str = "local[*]", driver_memory: str = "2g", shuffle_partitions: int | None = None
) -> dict[str, str]:
    """Everything local Spark needs, bound to 127.0.0.1 and without the UI."""
    cores = os.cpu_count() or 2
    jdbc = jdbc_driver_jars(catalog)
    conf = {
        "spark.master": master,
        "spark.driver.host": LOCAL_IP,
        "spark.driver.bindAddress": LOCAL_IP,
        "spark.ui.enabled": "false",
        "spark.driver.memory": driver_memory,
        "spark.jars": str(iceberg_runtime_jar()),
        # A JDBC driver must be on the application class path for DriverManager to find it.
        "spark.driver.extraClassPath": os.pathsep.join(str(j) for j in jdbc),
        "spark.sql.shuffle.partitions": str(shuffle_partitions or max(2, 2 * cores)),
        # A local merge job lives for seconds to minutes: the C1 compiler alone warms up much faster
        # (measured: MERGE of 137k changes into 1.37M rows 55 s -> 30 s cold on 2 cores).
        "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
        # The MERGE source is one batch's winners: broadcast it rather than shuffle the table for the join.
        "spark.sql.autoBroadcastJoinThreshold": str(64 * 1024 * 1024),
        **catalog.spark_conf(),
    }
    if not jdbc:
        del conf["spark.driver.extraClassPath"]
    return conf


def local_env(python: str | None = None) -> dict[str, str]:
    """Environment for a local Spark process: loopback only, and the driver runs this Python."""
    python = python or sys.executable
    return {"SPARK_LOCAL_IP": LOCAL_IP, "PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python}


def spark_submit_command(script: str, conf: dict[str, str], args: list[str], *, log4j_file: Path | None = None) -> list[str]:
    conf = dict(conf)
    if log4j_file is not None:
        java = conf.get("spark.driver.extraJavaOptions", "")
        conf["spark.driver.extraJavaOptions"] = f"{java} -Dlog4j2.configurationFile=file:{log4j_file}".strip()
    cmd = [str(spark_home() / "bin" / "spark-submit"), "--master", conf.pop("spark.master", "local[*]")]
    for k, v in conf.items():
        cmd += ["--conf", f"{k}={v}"]
    return cmd + [script, *args]


def merge_job_script() -> Path:
    """The job script inside the installed package (what spark-submit runs, and what is uploaded to S3)."""
    return Path(__file__).with_name("merge_job.py")


def build_session(conf: dict[str, str], app_name: str = "lake-merge"):
    """A SparkSession in this process (tests, notebooks); the job itself gets its conf from spark-submit."""
    for k, v in local_env().items():
        os.environ.setdefault(k, v)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    for k, v in conf.items():
        builder = builder.config(k, v)
    return builder.getOrCreate()
