"""Dagster resources for the lake: catalog, landing zone, ledger and merge engine.

Each wraps one core interface and is chosen once from LAKE_ENV, so assets and sensors never branch
on the environment.
"""

from __future__ import annotations

from functools import cached_property

from dagster import ConfigurableResource
from pyiceberg.catalog import Catalog

from lake_assets.core.deployment import LakeEnvironment, environment_from_env
from lake_assets.core.landing import LandingZone
from lake_assets.core.ledger import FileLedger


class LakeResource(ConfigurableResource):
    """The deployment the code runs in: Iceberg catalog, landing zone and file ledger."""

    @cached_property
    def _env(self) -> LakeEnvironment:
        return environment_from_env()

    @property
    def catalog(self) -> Catalog:
        return self._env.catalog

    @property
    def landing(self) -> LandingZone:
        return self._env.landing

    @property
    def ledger(self) -> FileLedger:
        return self._env.ledger


class MergeEngineResource(ConfigurableResource):
    """Picks the engine a table declares: in-process, or Spark (local spark-submit or EMR Serverless,
    configured by resources.spark.SparkMergeResource from the environment)."""

    def engine_for(self, table, context):
        if table.engine == "inprocess":
            from lake_assets.core.cdc.inprocess import InProcessEngine

            return InProcessEngine()
        from resources.spark import spark_engine_for

        return spark_engine_for(context)
