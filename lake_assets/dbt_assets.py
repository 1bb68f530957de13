"""The dbt layers in Dagster: aggregated and consumer-aligned Iceberg tables as one @dbt_assets.

dbt sources map onto the source-aligned assets (source_aligned/<source>/<table>), so lineage runs
landing -> source-aligned -> aggregated/<model> -> consumer/<consumer>/<dataset>. dbt tests become
asset checks with short names and descriptions; every model has owners (dbt meta, else the owners
of the registry tables it reads) and its Iceberg identifier; each materialization reports the
Iceberg table's columns with their types and its row count. Every model refreshes when the data of
a parent changes (declarative automation, with a sensor that runs by default); a merge that changed
nothing keeps its data version and rebuilds nothing. The dbt target follows LAKE_ENV (local ->
local, aws -> athena).
"""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetSelection,
    AssetSpec,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
    Output,
    define_asset_job,
    in_process_executor,
)
from dagster._core.definitions.metadata import TableMetadataSet
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, DbtProject, dbt_assets
from filelock import FileLock
from packaging import version
from pyiceberg.exceptions import NoSuchTableError

from lake_assets.core import dbt_codegen
from lake_assets.core.naming import NamingError, model_group, model_key_path, source_aligned_key, table_identifier
from lake_assets.core.registry import Registry, load_registry
from lake_assets.core.settings import LakeSettings, current_settings
from lake_assets.jobs import DBT_JOB
from lake_assets.table_metadata import table_metadata
from resources.lake import LakeResource

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


def models_refresh_on_parent_change() -> AutomationCondition:
    """Eager, but on a parent's new *data version* rather than any new materialization: a merge
    with nothing pending keeps its table's data version, so it rebuilds nothing downstream. Parents
    requested in the same tick still pull their children into the same run."""
    parents_changed = AutomationCondition.any_deps_match(
        (AutomationCondition.data_version_changed() & ~AutomationCondition.executed_with_root_target())
        .with_label("data_version_changed_without_root")
        | AutomationCondition.will_be_requested()
    ).with_label("any_deps_data_changed")
    return AutomationCondition.eager().replace("any_deps_updated", parents_changed).with_label("eager_on_data_change")


def short_check_name(test: Mapping[str, Any]) -> str:
    """`not_null__customer_id`, `lake_exact_columns`: the test and its column. dbt's own names
    (kept in the check's metadata) repeat the model and every argument: 100+ characters."""
    meta = test.get("test_metadata") or {}
    if not meta.get("name"):
        return test["name"]  # a singular test: its file name
    column = (meta.get("kwargs") or {}).get("column_name") or test.get("column_name")
    return f"{meta['name']}__{column}" if column else meta["name"]


def check_description(test: Mapping[str, Any]) -> str:
    """The test's own description (dbt `description:`), else what its kind and arguments say."""
    if (test.get("description") or "").strip():
        return test["description"].strip()
    meta = test.get("test_metadata") or {}
    kwargs = meta.get("kwargs") or {}
    column = kwargs.get("column_name") or test.get("column_name")
    kind = meta.get("name")
    if kind == "not_null":
        return f"`{column}` is never null"
    if kind == "unique":
        return f"No two rows share a `{column}`"
    if kind == "accepted_values":
        return f"`{column}` is one of " + ", ".join(str(v) for v in kwargs.get("values") or [])
    if kind == "relationships":
        return f"Every `{column}` exists in {kwargs.get('to', 'the referenced model')}.{kwargs.get('field', '')}"
    if kind == "lake_exact_columns":
        listed = kwargs.get("columns")
        return ("The table has exactly the columns the policy allows: " + ", ".join(listed)) if listed else \
            "The table has exactly the columns its documentation lists"
    if kind == "lake_masked":
        return f"`{column}` is masked ({kwargs.get('mask')}): no value has another shape"
    if kind == "lake_row_filter":
        return f"Only rows where {kwargs.get('expression')}"
    if kind == "lake_unique_combination":
        return "No two rows share (" + ", ".join(kwargs.get("columns") or []) + "): the grain"
    return f"dbt test {kind or test['name']}" + (f" on `{column}`" if column else "")


def with_short_test_names(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with each test named by `short_check_name` (unique per model; the dbt name is
    kept as `lake_dbt_name`). Dagster names asset checks after the manifest's test names, both when
    loading and when it maps a run's test results, so renaming here renames both; dbt selects tests
    by their fully qualified name, which is left as it is."""
    taken: dict[str, set[str]] = {}
    for unique_id in sorted(manifest["nodes"]):
        node = manifest["nodes"][unique_id]
        if node.get("resource_type") != "test" or "lake_dbt_name" in node:
            continue
        attached = node.get("attached_node") or ",".join(sorted(node.get("depends_on", {}).get("nodes", [])))
        used = taken.setdefault(attached, set())
        name, n = short_check_name(node), 2
        while name in used:
            name, n = f"{short_check_name(node)}_{n}", n + 1
        used.add(name)
        node["lake_dbt_name"], node["name"] = node["name"], name
    return manifest


class LakeDbtTranslator(DagsterDbtTranslator):
    """Maps dbt sources onto source-aligned assets and models onto their layer's keys and groups;
    clean descriptions, owners for every model, the Iceberg identifier, described checks."""

    def __init__(self, registry_owners: Mapping[str, Sequence[str]] | None = None) -> None:
        super().__init__(DagsterDbtTranslatorSettings(enable_asset_checks=True))
        self.registry_owners = dict(registry_owners or {})  # "source.table" -> owners in the registry

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

    def get_description(self, dbt_resource_props: Mapping[str, Any]) -> str:
        # The model's description, not dagster-dbt's default of it plus the model's raw SQL (the
        # consumer models' generated SQL buried what the dataset is).
        return (dbt_resource_props.get("description") or "").strip() or \
            f"dbt {dbt_resource_props['resource_type']} {dbt_resource_props['name']}"

    def get_automation_condition(self, dbt_resource_props: Mapping[str, Any]) -> AutomationCondition | None:
        if dbt_resource_props["resource_type"] != "model":
            return None
        return models_refresh_on_parent_change()

    def get_owners(self, dbt_resource_props: Mapping[str, Any]) -> Sequence[str] | None:
        meta = dbt_resource_props.get("config", {}).get("meta") or dbt_resource_props.get("meta") or {}
        owners = meta.get("owners") or ([meta["owner"]] if meta.get("owner") else [])
        return list(owners) if owners else super().get_owners(dbt_resource_props)

    def get_metadata(self, dbt_resource_props: Mapping[str, Any]) -> Mapping[str, Any]:
        metadata = dict(super().get_metadata(dbt_resource_props))
        if dbt_resource_props["resource_type"] == "source":
            metadata |= TableMetadataSet(table_name=table_identifier(dbt_resource_props["source_name"], dbt_resource_props["name"]))
        if dbt_resource_props["resource_type"] == "model":
            identifier = f"{dbt_resource_props['schema']}.{dbt_resource_props['alias']}"
            # The Iceberg table, not DuckDB's in-memory relation (`memory.<schema>.<alias>`).
            metadata |= TableMetadataSet(table_name=identifier)
            metadata["lake/iceberg_table"] = identifier
            meta = dbt_resource_props.get("config", {}).get("meta") or {}
            if meta.get("lake_consumer"):
                metadata["lake/consumer"] = meta["lake_consumer"]
                metadata["lake/policy"] = f"dbt_project/{meta.get('lake_policy', 'governance/policy.yml')}"
        return metadata

    def _upstream_owners(self, manifest: Mapping[str, Any], unique_id: str, seen: set[str]) -> list[str]:
        """Owners of the registry tables a model reads, through the models it refs."""
        owners: list[str] = []
        for parent in manifest.get("parent_map", {}).get(unique_id, []):
            if parent in seen:
                continue
            seen.add(parent)
            if parent.startswith("source."):
                source = manifest["sources"][parent]
                owners += self.registry_owners.get(table_identifier(source["source_name"], source["name"]), [])
            elif parent.startswith("model."):
                node = manifest["nodes"][parent]
                owners += self.get_owners(node) or self._upstream_owners(manifest, parent, seen)
        return list(dict.fromkeys(owners))

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None) -> AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        if unique_id.startswith("model."):
            spec = spec.merge_attributes(kinds={"iceberg"})
            if not spec.owners:  # an aggregated model without dbt meta: whoever owns what it reads
                owners = self._upstream_owners(manifest, unique_id, set())
                if owners:
                    spec = spec.replace_attributes(owners=owners)
        return spec

    def get_asset_check_spec(self, asset_spec: AssetSpec, manifest: Mapping[str, Any], unique_id: str,
                             project: DbtProject | None) -> AssetCheckSpec | None:
        spec = super().get_asset_check_spec(asset_spec, manifest, unique_id, project)
        if spec is None:
            return None
        test = manifest["nodes"][unique_id]
        return spec._replace(description=check_description(test),
                             metadata={**spec.metadata, "dbt_test": test.get("lake_dbt_name", test["name"])})


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


class LakeDbtCliResource(DbtCliResource):
    """dagster-dbt's resource without two costs of every `dbt.cli` call the lake does not need
    (7 s of a 15 s run of two models): a `dbt --version` subprocess to learn the version of the dbt
    installed beside this Python (its package says it), and a dbt adapter opened in the Dagster process,
    used only by fetch_row_counts / fetch_column_metadata; the lake reads column types and row counts
    from the Iceberg tables instead (lake_assets/table_metadata.py)."""

    @cached_property
    def _cli_version(self) -> version.Version:
        if Path(self.dbt_executable).parent == Path(sys.executable).parent:
            return version.parse(importlib.metadata.version("dbt-core"))
        return super()._cli_version  # another installation: ask it

    def _initialize_dbt_core_adapter(self, args: Sequence[str]) -> Any:
        return None  # no adapter: events stream the same, without in-process row counts or columns


def dbt_resource(project: DbtProject | None = None) -> DbtCliResource:
    project = project or lake_dbt_project()
    return LakeDbtCliResource(
        project_dir=os.fspath(project.project_dir),
        profiles_dir=str(project.profiles_dir),
        target=project.target,
        dbt_executable=dbt_executable(),
    )


# ---------------------------------------------------------------------------------------------
# Definitions


def lake_manifest(project: DbtProject) -> dict[str, Any]:
    """The parsed manifest, with short test names (`with_short_test_names`)."""
    return with_short_test_names(json.loads(project.manifest_path.read_text()))


def registry_owners(registry: Registry | None) -> dict[str, Sequence[str]]:
    return {t.identifier: t.owners for t in registry.tables} if registry is not None else {}


def build_dbt_assets(project: DbtProject, registry: Registry | None = None):
    manifest = lake_manifest(project)
    translator = LakeDbtTranslator(registry_owners(registry))
    # Each model's Iceberg table, and its columns' descriptions for the materialization's schema.
    tables: dict[AssetKey, tuple[str, dict[str, str | None]]] = {}
    for node in manifest["nodes"].values():
        if node.get("resource_type") == "model":
            tables[translator.get_asset_key(node)] = (
                f"{node['schema']}.{node['alias']}",
                {name: col.get("description") or None for name, col in (node.get("columns") or {}).items()})

    @dbt_assets(
        manifest=manifest,
        project=project,
        dagster_dbt_translator=translator,
        name="lake_dbt_models",
        op_tags={"lake/layer": "dbt"},
    )
    def lake_dbt_models(context: AssetExecutionContext, dbt: DbtCliResource, lake: LakeResource):
        """`dbt build` of the selected models (their tests run as asset checks); each materialization
        carries the Iceberg table's column types, row count and snapshot."""
        for event in dbt.cli(["build"], context=context).stream():
            if isinstance(event, Output | AssetMaterialization):
                key = event.asset_key if isinstance(event, AssetMaterialization) else context.asset_key_for_output(event.output_name)
                if key in tables:
                    identifier, descriptions = tables[key]
                    try:
                        tbl = lake.catalog.load_table(identifier)
                    except NoSuchTableError:
                        tbl = None
                    event = event.with_metadata({**event.metadata, **table_metadata(tbl, identifier, descriptions=descriptions)})
            yield event

    return lake_dbt_models


def dbt_definitions(settings: LakeSettings | None = None, registry: Registry | None = None,
                    lake: LakeResource | None = None) -> Definitions:
    """Assets, checks, the `dbt_layers` job, the dbt resource (key `dbt`) and the automation sensor
    of the dbt layers. `registry`: the tables whose owners aggregated models inherit; `lake`: the
    lake resource of the definitions these merge into (its Iceberg catalog describes the tables)."""
    project = prepare_manifest(lake_dbt_project(dbt_target(settings)))
    assets = build_dbt_assets(project, registry if registry is not None else load_registry())
    automation = AutomationConditionSensorDefinition(
        "dbt_layers_automation_sensor",
        target=AssetSelection.assets(assets),
        default_status=DefaultSensorStatus.RUNNING,
        # The automation daemon wakes every 5 s; 1 lets it tick at every wake-up (5 would tick every 10 s).
        minimum_interval_seconds=1,
        description="Refreshes aggregated and consumer models after the data of a parent changes.",
    )
    job = define_asset_job(DBT_JOB, selection=AssetSelection.assets(assets), executor_def=in_process_executor,
                           description="dbt build of the aggregated and consumer models (select models to build only those)")
    return Definitions(assets=[assets], jobs=[job], resources={"dbt": dbt_resource(project), "lake": lake or LakeResource()},
                       sensors=[automation])
