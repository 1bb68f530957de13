"""The deployment the lake runs in, opened from its settings: Iceberg catalog, file ledger, landing zone.

local: pyiceberg SqlCatalog on SQLite `$LAKE_HOME/catalog.db`, SQLite ledger, a landing directory.
aws: Glue catalog, PostgreSQL ledger, an S3 landing prefix and, when configured, the SQS queue of
its ObjectCreated notifications; credentials come from the AWS chain.
"""

from __future__ import annotations

import fcntl
import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog

from lake_assets.core.landing import LandingZone, LocalLandingZone, S3LandingZone
from lake_assets.core.ledger import FileLedger, postgres_ledger, sqlite_ledger
from lake_assets.core.settings import CATALOG_NAME, REPO_ROOT, LakeSettings, current_settings

if TYPE_CHECKING:
    from lake_assets.core.notifications import ArrivalQueue

__all__ = ["CATALOG_NAME", "REPO_ROOT", "CatalogBusyError", "LakeEnvironment", "environment_from_env", "open_catalog",
           "local_catalog", "local_environment", "open_lake"]

T = TypeVar("T")

CATALOG_BUSY_SECONDS = 60.0  # how long a locked catalog.db is waited for before the error names it


@dataclass
class LakeEnvironment:
    name: str
    catalog: Catalog
    ledger: FileLedger
    landing: LandingZone
    arrivals: ArrivalQueue | None = None  # S3 event notifications of the landing zone; None: listing only


class CatalogBusyError(RuntimeError):
    """The local catalog database stayed locked by another process; names the file."""


def _locked(err: Exception) -> bool:
    text = str(err).lower()
    return "database is locked" in text or "database table is locked" in text or "busy" in text


def _retrying(method: Callable[..., T]) -> Callable[..., T]:
    """A catalog call retried with backoff while SQLite reports the database locked, then an error
    naming the file (a bare sqlite3.OperationalError says neither which file nor what to do)."""

    @functools.wraps(method)
    def call(self: LakeSqlCatalog, *args: Any, **kwargs: Any) -> T:
        deadline = time.monotonic() + self.busy_seconds
        delay = 0.05
        while True:
            try:
                return method(self, *args, **kwargs)
            except Exception as err:  # sqlalchemy.exc.OperationalError wrapping sqlite3's
                if not _locked(err):
                    raise
                if time.monotonic() >= deadline:
                    raise CatalogBusyError(
                        f"Iceberg catalog {self.db_path}: the database stayed locked by another process for "
                        f"{self.busy_seconds:.0f} s during {method.__name__}; is another merge or a stuck process holding it?"
                    ) from err
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 1.0)

    return call


class LakeSqlCatalog(SqlCatalog):
    """pyiceberg's SqlCatalog on the lake's SQLite file, waiting out other processes' locks."""

    def __init__(self, home: Path, busy_seconds: float = CATALOG_BUSY_SECONDS):
        self.db_path = Path(home) / "catalog.db"
        self.busy_seconds = busy_seconds
        (Path(home) / "warehouse").mkdir(parents=True, exist_ok=True)
        # Opening creates the catalog's tables when they do not exist yet; two processes doing that at
        # once on a new lake (two ingests started together) fail with "table iceberg_tables already
        # exists". Opening is serialized by a lock file beside the database (held for milliseconds).
        with open(self.db_path.with_name("catalog.db.open-lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                _retrying(SqlCatalog.__init__)(self, CATALOG_NAME, type="sql", uri=f"sqlite:///{self.db_path}",
                                               warehouse=f"file://{Path(home) / 'warehouse'}")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


for _name in ("load_table", "create_table", "commit_table", "create_namespace", "drop_table", "table_exists",
              "list_tables", "list_namespaces", "drop_namespace", "load_namespace_properties", "purge_table",
              "register_table", "rename_table", "update_namespace_properties", "namespace_exists"):
    if hasattr(SqlCatalog, _name):
        setattr(LakeSqlCatalog, _name, _retrying(getattr(SqlCatalog, _name)))


def local_catalog(home: Path) -> Catalog:
    """The catalog of the local lake at `home` (the one place its URI is spelled out)."""
    return LakeSqlCatalog(Path(home))


def open_catalog(settings: LakeSettings) -> Catalog:
    """The deployment's Iceberg catalog alone (the local SQLite one, or Glue), without the ledger."""
    if settings.aws is None:
        return local_catalog(settings.home)
    from pyiceberg.catalog.glue import GlueCatalog

    aws = settings.aws
    props = {"glue.region": aws.region, "warehouse": aws.warehouse_uri}
    if aws.endpoint_url:
        props |= {"glue.endpoint": aws.endpoint_url, "s3.endpoint": aws.endpoint_url}
    return GlueCatalog(CATALOG_NAME, client=None, **props)  # client: the catalog builds its own from props


def open_lake(settings: LakeSettings) -> LakeEnvironment:
    if settings.env == "local":
        settings.landing_dir.mkdir(parents=True, exist_ok=True)
        return LakeEnvironment("local", local_catalog(settings.home), sqlite_ledger(settings.ledger_db),
                               LocalLandingZone(settings.landing_dir))
    import boto3

    aws = settings.aws
    assert aws is not None
    catalog = open_catalog(settings)
    s3 = boto3.client("s3", region_name=aws.region)
    landing = S3LandingZone(aws.landing_bucket, aws.landing_prefix, s3)
    arrivals = None
    if aws.arrivals_queue_url:
        from lake_assets.core.notifications import SqsArrivalQueue

        arrivals = SqsArrivalQueue(aws.arrivals_queue_url, boto3.client("sqs", region_name=aws.region))
    return LakeEnvironment("aws", catalog, postgres_ledger(aws.ledger_dsn.get_secret_value()), landing, arrivals)


def local_environment(home: Path | None = None) -> LakeEnvironment:
    """A local lake at `home` (default: the settings' LAKE_HOME)."""
    return open_lake(LakeSettings.local(home if home is not None else current_settings().home))


def environment_from_env() -> LakeEnvironment:
    return open_lake(current_settings())
