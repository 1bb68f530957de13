"""Named jobs, so every run can be found and re-executed from the UI: `ingest_<source>` merges a
source's tables (the landing sensor, the refresh schedules, `python -m lake_assets.ingest` and the
demo all run it, with the tables they need selected), `dbt_layers` builds the dbt models.

Merge jobs run in process: a merge of a few files takes a second or two, and a step subprocess took
18 s to start (it imports Dagster and loads the code location again). One table's failure does not
stop the others: the source's op merges them one by one and reports failures at the end."""

from __future__ import annotations

from collections.abc import Mapping

from dagster import AssetKey, AssetSelection, DagsterEvent, DagsterInstance, JobDefinition, define_asset_job, in_process_executor
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from lake_assets.core.naming import ingest_job_name
from lake_assets.core.registry import Registry, TableConfig
from lake_assets.run_processes import process_tags

DBT_JOB = "dbt_layers"


def ingest_job(source: str, tables: list[TableConfig]) -> UnresolvedAssetJobDefinition:
    return define_asset_job(
        ingest_job_name(source),
        selection=AssetSelection.assets(*[AssetKey(t.asset_key_path) for t in tables]),
        executor_def=in_process_executor,
        description=f"Merges the landed files of source {source}'s {len(tables)} tables into their Iceberg tables, "
                    "then runs their checks; select tables to merge only those",
        tags={"lake/source": source},
    )


def ingest_jobs(registry: Registry) -> dict[str, UnresolvedAssetJobDefinition]:
    """source -> its ingest job."""
    return {source: ingest_job(source, tables) for source, tables in registry.by_source().items()}


def code_location_origin():
    """The origin of workspace.yaml's code location (`lake`), as the UI loads it."""
    from dagster._core.workspace.load import location_origins_from_yaml_paths

    from lake_assets.core.settings import REPO_ROOT

    [origin] = location_origins_from_yaml_paths([str(REPO_ROOT / "workspace.yaml")])
    return origin


# Runs started here (the ingest command, the demo) print the merge's own INFO lines, not Dagster's
# DEBUG event stream (hundreds of lines per run); every event is still in the run's log in the UI.
CONSOLE_INFO = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def execute_in_process(job: JobDefinition, instance: DagsterInstance, asset_selection: list[AssetKey],
                       tags: Mapping[str, str]) -> tuple[bool, list[DagsterEvent]]:
    """Run `job` here, like `job.execute_in_process`, but as a run of the code location's job: it
    names the location it comes from, so the UI re-executes it like the runs it launched (a run
    without an origin cannot be re-executed from its page). Returns (success, the run's events)."""
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.definitions.repository_definition.valid_definitions import SINGLETON_REPOSITORY_NAME
    from dagster._core.execution.api import create_execution_plan, execute_run
    from dagster._core.remote_origin import RemoteRepositoryOrigin

    selection = frozenset(asset_selection)
    plan = create_execution_plan(InMemoryJob(job).get_subset(asset_selection=selection), run_config=CONSOLE_INFO,
                                 instance_ref=instance.get_ref() if instance.is_persistent else None)
    origin = RemoteRepositoryOrigin(code_location_origin(), SINGLETON_REPOSITORY_NAME).get_job_origin(job.name)
    run = instance.create_run_for_job(job_def=job, execution_plan=plan, asset_selection=selection, run_config=CONSOLE_INFO,
                                      tags={**job.run_tags, **tags}, remote_job_origin=origin)
    instance.add_run_tags(run.run_id, process_tags(run.run_id))  # this process runs it (lake_assets/run_processes.py)
    result = execute_run(InMemoryJob(job), run, instance)
    return result.success, list(result.all_events)
