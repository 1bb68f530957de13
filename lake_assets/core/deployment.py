"""The one switch between deployments: LAKE_ENV picks local or aws, everything else is configuration."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pyiceberg.catalog import Catalog

from lake_assets.core.landing import LandingZone, LocalLandingZone, S3LandingZone
from lake_assets.core.ledger import FileLedger, postgres_ledger, sqlite_ledger

REPO_ROOT = Path(__file__).resolve().parents[2]
CATALOG_NAME = "lake"


def lake_home() -> Path:
    return Path(os.environ.get("LAKE_HOME") or REPO_ROOT / ".lake").resolve()


def lake_env() -> str:
    env = os.environ.get("LAKE_ENV", "local")
    if env not in ("local", "aws"):
        raise ValueError(f"LAKE_ENV={env!r}: use 'local' or 'aws'")
    return env


@dataclass
class LakeEnvironment:
    name: str
    catalog: Catalog
    ledger: FileLedger
    landing: LandingZone


def local_catalog(home: Path) -> Catalog:
    from pyiceberg.catalog.sql import SqlCatalog

    (home / "warehouse").mkdir(parents=True, exist_ok=True)
    return SqlCatalog(CATALOG_NAME, uri=f"sqlite:///{home}/catalog.db", warehouse=f"file://{home}/warehouse")


def local_environment(home: Path | None = None) -> LakeEnvironment:
    home = home or lake_home()
    (home / "landing").mkdir(parents=True, exist_ok=True)
    return LakeEnvironment("local", local_catalog(home), sqlite_ledger(home / "ledger.db"), LocalLandingZone(home / "landing"))


def aws_environment() -> LakeEnvironment:
    """Glue catalog, S3 landing and warehouse, PostgreSQL ledger; credentials come from the AWS chain."""
    import boto3
    from pyiceberg.catalog.glue import GlueCatalog

    def need(name: str) -> str:
        v = os.environ.get(name)
        if not v:
            raise ValueError(f"LAKE_ENV=aws needs {name}")
        return v

    region = os.environ.get("AWS_REGION", "us-east-1")
    props = {"glue.region": region, "warehouse": need("LAKE_WAREHOUSE_URI")}
    if os.environ.get("AWS_ENDPOINT_URL"):
        props |= {"glue.endpoint": os.environ["AWS_ENDPOINT_URL"], "s3.endpoint": os.environ["AWS_ENDPOINT_URL"]}
    catalog = GlueCatalog(CATALOG_NAME, **props)
    s3 = boto3.client("s3", region_name=region)
    landing = S3LandingZone(need("LAKE_LANDING_BUCKET"), os.environ.get("LAKE_LANDING_PREFIX", ""), s3)
    return LakeEnvironment("aws", catalog, postgres_ledger(need("LAKE_LEDGER_DSN")), landing)


def environment_from_env() -> LakeEnvironment:
    return local_environment() if lake_env() == "local" else aws_environment()
