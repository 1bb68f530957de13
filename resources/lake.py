"""Dagster resources for the lake: the deployment (catalog, landing zone, ledger) it runs in.

The deployment is opened from the process's settings (`lake_assets.core.settings`, read once), so
assets and sensors never branch on the environment.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from dagster import ConfigurableResource

from lake_assets.core.settings import LakeSettings, current_settings

if TYPE_CHECKING:  # the deployment (pyiceberg, SQLAlchemy: 0.7 s) is imported when first opened, not to load definitions
    from pyiceberg.catalog import Catalog

    from lake_assets.core.deployment import LakeEnvironment
    from lake_assets.core.landing import LandingZone
    from lake_assets.core.ledger import FileLedger
    from lake_assets.core.notifications import ArrivalQueue


class LakeResource(ConfigurableResource):
    """The deployment the code runs in: Iceberg catalog, landing zone, file ledger and, where the
    landing zone sends event notifications, their queue."""

    @property
    def settings(self) -> LakeSettings:
        return current_settings()

    @cached_property
    def _env(self) -> LakeEnvironment:
        from lake_assets.core.deployment import open_lake

        return open_lake(self.settings)

    @property
    def catalog(self) -> Catalog:
        return self._env.catalog

    @property
    def landing(self) -> LandingZone:
        return self._env.landing

    @property
    def ledger(self) -> FileLedger:
        return self._env.ledger

    @property
    def arrivals_queue(self) -> ArrivalQueue | None:
        return self._env.arrivals
