"""The dbt layers in Dagster: aggregated and consumer-aligned Iceberg tables as one @dbt_assets.

dbt sources map onto the source-aligned assets (source_aligned/<source>/<table>), so lineage runs
landing -> source-aligned -> aggregated/<model> -> consumer/<consumer>/<dataset>. dbt tests become
asset checks, and every model refreshes when its parents change (declarative automation, with a
sensor that runs by default). The dbt target follows LAKE_ENV (local -> local, aws -> athena).
"""

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    AssetSpec,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
)
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, DbtProject, dbt_assets
from filelock import FileLock

from lake_assets.core import dbt_codegen
from lake_assets.core.naming import NamingError, model_group, model_key_path, source_aligned_key
from lake_assets.core.settings import LakeSettings, current_settings

DBT_PROJECT_DIR = Path(__file__).resolve().parent.parent / "dbt_project"
ADAPTER_OF_TARGET = {"local": "duckdb", "athena": "athena"}
# What a change to one of these files means for the manifest Dagster reads the asset graph from.
_PROJECT_INPUTS = ("dbt_project.yml", "profiles.yml", "models", "macros", "tests", "governance")


class DbtLayerError(RuntimeError):
    """The dbt project cannot be turned into assets; the message says what to fix."""


def dbt_target(settings: LakeSettings | None = None) -> str:
    """The dbt target of the deployment: `local` (dbt-duckdb) or `athena`."""
    return (settings or current_settings()).dbt_target


def dbt_executable() -> str:
    """dbt of the running interpreter's environment, so nothing depends on an activated venv."""
    candidate = Path(sys.executable).parent / ("dbt.exe" if os.name == "nt" else "dbt")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("dbt")
    if found:
        return found
    raise DbtLayerError(f"no dbt executable next to {sys.executable} nor on PATH: install dbt-core")


# ---------------------------------------------------------------------------------------------
# Asset keys, groups and namespaces of the models: lake_assets.core.naming decides them.


class LakeDbtTranslator(DagsterDbtTranslator):
    """Maps dbt sources onto source-aligned assets and models onto their layer's keys and groups."""

    def __init__(self) -> None:
        super().__init__(DagsterDbtTranslatorSettings(enable_asset_checks=True))

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return AssetKey(source_aligned_key(dbt_resource_props["source_name"], dbt_resource_props["name"]))
        try:
            return AssetKey(model_key_path(dbt_resource_props["schema"], dbt_resource_props["alias"]))
        except NamingError as e:
            raise DbtLayerError(str(e)) from None

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        if dbt_resource_props["resource_type"] == "source":
            return dbt_resource_props["source_name"]
        schema = dbt_resource_props["schema"]
        return model_group(schema)

    def get_automation_condition(self, dbt_resource_props: Mapping[str, Any]) -> AutomationCondition | None:
        if dbt_resource_props["resource_type"] != "model":
            return None
        # Refresh once any parent has a new materialization, when no parent is missing or running.
        return AutomationCondition.eager()

    def get_owners(self, dbt_resource_props: Mapping[str, Any]) -> Sequence[str] | None:
        owner = (dbt_resource_props.get("config", {}).get("meta") or {}).get("owner")
        return [owner] if owner else super().get_owners(dbt_resource_props)

    def get_metadata(self, dbt_resource_props: Mapping[str, Any]) -> Mapping[str, Any]:
        metadata = dict(super().get_metadata(dbt_resource_props))
        if dbt_resource_props["resource_type"] == "model":
            metadata["lake/iceberg_table"] = f"{dbt_resource_props['schema']}.{dbt_resource_props['alias']}"
            meta = dbt_resource_props.get("config", {}).get("meta") or {}
            if meta.get("lake_consumer"):
                metadata["lake/consumer"] = meta["lake_consumer"]
                metadata["lake/policy"] = f"dbt_project/{meta.get('lake_policy', 'governance/policy.yml')}"
        return metadata

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None) -> AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        if unique_id.startswith("model."):
            spec = spec.merge_attributes(kinds={"iceberg"})
        return spec


# ---------------------------------------------------------------------------------------------
# Project, manifest and resource


def lake_dbt_project(target: str | None = None) -> DbtProject:
    return DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR, target=target or dbt_target())


def _latest_input_mtime(project_dir: Path) -> float:
    latest = 0.0
    for name in _PROJECT_INPUTS:
        path = project_dir / name
        paths = [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file()) if path.exists() else ()
        for p in paths:
            latest = max(latest, p.stat().st_mtime)
    return latest


def _manifest_is_current(project: DbtProject) -> bool:
    path = project.manifest_path
    if not path.exists() or path.stat().st_mtime < _latest_input_mtime(project.project_dir):
        return False
    try:
        adapter = json.loads(path.read_text()).get("metadata", {}).get("adapter_type")
    except ValueError:
        return False
    return adapter == ADAPTER_OF_TARGET.get(project.target or "local")


def prepare_manifest(project: DbtProject | None = None) -> DbtProject:
    """Make `project.manifest_path` current, offline: regenerate the generated dbt files (sources
    from the table registry, consumer models from the governance policy) when they changed, then
    `dbt parse` when any project file is newer than the manifest (or it was parsed for the other
    target). A no-op when nothing changed, so loading the definitions stays fast; concurrent
    loaders wait on a lock instead of parsing twice."""
    project = project or lake_dbt_project()
    target_dir = project.project_dir / project.target_path
    target_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target_dir / "lake_prepare.lock"), timeout=300):
        dbt_codegen.generate(project.project_dir)
        if _manifest_is_current(project):
            return project
        result = subprocess.run(
            [dbt_executable(), "parse", "--quiet", "--target", project.target or dbt_target()],
            cwd=project.project_dir,
            env={**os.environ, **current_settings().to_env(), "DBT_PROJECT_DIR": str(project.project_dir),
                 "DBT_PROFILES_DIR": str(project.profiles_dir)},
            capture_output=True,
            text=True,
        )
        if result.returncode != 0 or not project.manifest_path.exists():
            raise DbtLayerError(
                f"dbt parse --target {project.target} failed in {project.project_dir}:\n{result.stdout}{result.stderr}"
            )
    return project


def dbt_resource(project: DbtProject | None = None) -> DbtCliResource:
    project = project or lake_dbt_project()
    return DbtCliResource(
        project_dir=project,
        profiles_dir=str(project.profiles_dir),
        target=project.target,
        dbt_executable=dbt_executable(),
    )


# ---------------------------------------------------------------------------------------------
# Definitions


def build_dbt_assets(project: DbtProject):
    @dbt_assets(
        manifest=project.manifest_path,
        project=project,
        dagster_dbt_translator=LakeDbtTranslator(),
        name="lake_dbt_models",
        op_tags={"lake/layer": "dbt"},
    )
    def lake_dbt_models(context: AssetExecutionContext, dbt: DbtCliResource):
        """`dbt build` of the selected models (their tests run as asset checks)."""
        yield from dbt.cli(["build"], context=context).stream()

    return lake_dbt_models


def dbt_definitions(settings: LakeSettings | None = None) -> Definitions:
    """Assets, checks, the dbt resource (key `dbt`) and the automation sensor of the dbt layers."""
    project = prepare_manifest(lake_dbt_project(dbt_target(settings)))
    assets = build_dbt_assets(project)
    automation = AutomationConditionSensorDefinition(
        "dbt_layers_automation_sensor",
        target=AssetSelection.assets(assets),
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="Refreshes aggregated and consumer models after their parents change.",
    )
    return Definitions(assets=[assets], resources={"dbt": dbt_resource(project)}, sensors=[automation])
