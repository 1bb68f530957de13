"""The code location: every registry table as a source-aligned asset, the landing sensor (and the SQS
sensor where the landing zone's notifications go to a queue), refresh schedules (and the extract
schedules of SQL sources: extract_assets.py), the Slack alert
sensors where a token is configured, and the dbt layers, with resources picked once from the
settings (LAKE_ENV and the rest).

Nothing is built at import: Dagster calls `defs` (a `@definitions` function) when it loads the code
location, and other processes (`python -m lake_assets.ingest`, tests) call `build_definitions`
with what they need, so none of them pays for the dbt layers or a second registry load."""

from __future__ import annotations

import functools
import gc
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import AssetKey, AssetSpec, Definitions, MetadataValue, definitions, in_process_executor

from lake_assets.alerts import build_alert_sensors
from lake_assets.assets import source_aligned_assets
from lake_assets.core.dbt_codegen import sources_read_by_models
from lake_assets.core.registry import Registry, load_registry
from lake_assets.core.settings import LakeSettings, current_settings
from lake_assets.extract_assets import build_extract_schedules, extract_assets, extract_jobs
from lake_assets.jobs import ingest_jobs
from lake_assets.landing_assets import build_unclaimed_asset, landing_assets
from lake_assets.maintenance import build_maintenance_schedules, maintenance_jobs
from lake_assets.schedules import build_refresh_schedules
from lake_assets.sensors import build_landing_sensor, build_sqs_sensor
from resources.lake import LakeResource

log = logging.getLogger(__name__)

REGISTRY_ERRORS_GROUP = "registry_errors"


def registry_error_key(path: str, taken: set[AssetKey]) -> AssetKey:
    """`registry/<file stem>`; a second broken file with the same stem (another directory) gets a suffix."""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", Path(path).stem)
    key, n = AssetKey(["registry", stem]), 2
    while key in taken:
        key, n = AssetKey(["registry", f"{stem}_{n}"]), n + 1
    return key


def registry_error_specs(registry: Registry) -> list[AssetSpec]:
    """One non-materializable asset per invalid registry file, in group `registry_errors`, so the
    asset catalog shows which file is broken and why next to the sources that did load."""
    specs: list[AssetSpec] = []
    taken: set[AssetKey] = set()
    for error in registry.errors:
        key = registry_error_key(error.path, taken)
        taken.add(key)
        specs.append(
            AssetSpec(
                key=key,
                group_name=REGISTRY_ERRORS_GROUP,
                description=(
                    f"Invalid registry file {error.path}: "
                    + (f"no table of source {error.source!r} from it is loaded" if error.source else "none of its tables are loaded")
                    + " until it is fixed; the other sources are not affected.\n\n"
                    + "\n".join(f"- {line}" for line in error.message.splitlines())
                ),
                metadata={
                    "registry_file": MetadataValue.path(error.path),
                    "source": MetadataValue.text(error.source or "(not readable from the file)"),
                    "error": MetadataValue.md("```\n" + error.message + "\n```"),
                },
                tags={"lake/registry_error": "true"},
            )
        )
    return specs


@contextmanager
def gc_paused(freeze: bool = False) -> Iterator[None]:
    """Pause the cyclic garbage collector while definitions are built.

    3,006 tables make some 250,000 long-lived objects and almost no garbage; collections triggered
    by the allocations only walk them again and again (0.8 s of a 2 s build). With `freeze`, what
    exists afterwards moves to the permanent generation (`gc.freeze`): later collections of the
    process that holds the definitions (code server, run worker, ingest command) skip it, and so
    does the collection at interpreter exit (0.7 s)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if enabled:
            gc.enable()


def build_definitions(registry: Registry | None = None, *, with_dbt: bool = True, settings: LakeSettings | None = None) -> Definitions:
    """Definitions of `registry` (default: load it), with the dbt layers unless `with_dbt=False`,
    for the deployment `settings` describe (default: this process's)."""
    with gc_paused():
        return _build_definitions(registry if registry is not None else load_registry(), with_dbt, settings or current_settings())


def lake_resources(registry: Registry, settings: LakeSettings) -> dict:
    """The resources of the deployment, picked once: the lake everywhere, the Spark engine where a
    table asks for it (local spark-submit, or EMR Serverless on AWS)."""
    resources: dict = {"lake": LakeResource()}
    if any(t.engine == "spark" for t in registry.tables):
        from resources.spark import SparkMergeResource

        resources["spark"] = SparkMergeResource.from_settings(settings)
    return resources


def _build_definitions(registry: Registry, with_dbt: bool, settings: LakeSettings) -> Definitions:
    for error in registry.errors:
        log.error("registry file %s is invalid; its tables are not loaded, the other sources are:\n%s", error.path, error.message)
    jobs = ingest_jobs(registry)
    resources = lake_resources(registry, settings)
    lake_resource = resources["lake"]
    if settings.arrivals_queue_url:
        # A notification queue exists only once the AWS stack is in place: arrivals then run by
        # default, from the queue, with the listing as the reconciliation behind it.
        sensors = [build_sqs_sensor(registry, running=True, jobs=jobs),
                   build_landing_sensor(registry, running=True, jobs=jobs, reconcile_only=True)]
    else:
        sensors = [build_landing_sensor(registry, running=settings.automation_running, jobs=jobs)]
    sensors += build_alert_sensors(settings)  # none without a Slack token
    maintenance = maintenance_jobs(registry)
    extracts = extract_jobs(registry)
    core = Definitions(
        assets=[*landing_assets(registry.by_source()), build_unclaimed_asset(registry), *extract_assets(registry),
                *source_aligned_assets(registry), *registry_error_specs(registry)],
        jobs=[*jobs.values(), *maintenance.values(), *extracts.values()],
        sensors=sensors,
        schedules=[*build_refresh_schedules(registry, running=settings.automation_running, jobs=jobs),
                   *build_maintenance_schedules(registry, maintenance, running=settings.automation_running),
                   *build_extract_schedules(registry, extracts, running=settings.automation_running)],
        resources=resources,
        # Every run in one process (the UI's materializations, automation's dbt runs too): a step
        # subprocess costs seconds to start, merges are per source and runs go in parallel.
        executor=in_process_executor,
    )
    if not with_dbt:
        return core
    missing = sorted(sources_read_by_models() - {t.source for t in registry.tables})
    if missing:
        # Not parsed (its generated sources would be rewritten without them): the lake's own sources load.
        log.warning("the dbt layers read source(s) %s, which this lake's registry does not have; they are not loaded "
                    "(the built-in demo source comes with LAKE_BUILTIN_SOURCES=true)", ", ".join(missing))
        return Definitions.merge(core, Definitions(assets=[dbt_not_loaded_spec(missing)]))
    from lake_assets.dbt_assets import dbt_definitions  # dagster-dbt costs seconds to import

    return Definitions.merge(core, dbt_definitions(settings, registry, lake=lake_resource))


def dbt_not_loaded_spec(missing: list[str]) -> AssetSpec:
    """Shown in group `registry_errors`: why the dbt layers are absent from the code location."""
    return AssetSpec(
        key=AssetKey(["registry", "dbt_layers"]),
        group_name=REGISTRY_ERRORS_GROUP,
        description=(f"The dbt project's models read source(s) {', '.join(missing)}, which are not in this lake's table "
                     "registry, so the aggregated and consumer layers are not loaded. Add the source(s) to a registry "
                     "directory (LAKE_SOURCES_DIR), set LAKE_BUILTIN_SOURCES=true for the demo's, or change the models."),
        metadata={"missing_sources": MetadataValue.text(", ".join(missing))},
        tags={"lake/registry_error": "true"},
    )


@definitions
def defs() -> Definitions:
    """What Dagster loads for the code location (workspace.yaml), built when asked for."""
    return code_location()


@functools.cache
def code_location() -> Definitions:
    """The code location's definitions, built once per process: Dagster's code server calls `defs`
    twice while loading (once to resolve the lazy target, once to build the repository)."""
    with gc_paused(freeze=True):  # this process keeps the definitions for its lifetime
        loaded = build_definitions()
        loaded.get_repository_def()  # what the loader does next, while the collector is paused
    return loaded


__all__ = ["defs", "build_definitions", "gc_paused", "registry_error_specs"]
