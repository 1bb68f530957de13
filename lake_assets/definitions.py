"""The code location: every registry table as a source-aligned asset, the landing sensor, refresh
schedules and the dbt layers, with resources picked once from LAKE_ENV."""

from __future__ import annotations

from dagster import Definitions, multiprocess_executor

from lake_assets.assets import source_aligned_assets
from lake_assets.core.registry import load_registry
from lake_assets.schedules import build_refresh_schedules
from lake_assets.sensors import build_landing_sensor
from resources.lake import LakeResource, MergeEngineResource


def build_definitions(registry=None, *, with_dbt: bool = True) -> Definitions:
    registry = registry or load_registry()
    core = Definitions(
        assets=source_aligned_assets(registry),
        sensors=[build_landing_sensor(registry)],
        schedules=build_refresh_schedules(registry),
        resources={"lake": LakeResource(), "merge_engine": MergeEngineResource()},
        # Two cores here: two merges at a time; one table's failure does not stop the others.
        executor=multiprocess_executor.configured({"max_concurrent": 2}),
    )
    if not with_dbt:
        return core
    from lake_assets.dbt_assets import dbt_definitions

    return Definitions.merge(core, dbt_definitions())


defs = build_definitions()

__all__ = ["defs", "build_definitions"]
