"""The dbt sources are generated from the table registry: one models/sources/<source>.yml per registry
source with the registry's tables, columns, types, primary keys and PII tags; `check` fails naming a
stale file; regeneration is deterministic; a new registry source can be `source()`d at once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
import sqlglot
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from lake_assets.core import dbt_codegen, dbt_sources
from lake_assets.core.registry import load_registry
from lake_assets.core.settings import current_settings
from lake_assets.core.types import arrow_type
from lake_assets.dbt_assets import DBT_PROJECT_DIR, dbt_executable

from dbt_lake_fixture import SOURCE

REPO = DBT_PROJECT_DIR.parent
EVERY_REGISTRY_TYPE = ["string", "int", "long", "float", "double", "boolean", "date", "timestamp", "timestamptz",
                       "binary", "decimal(5,2)", "decimal(38,0)"]
CRM = """
source: crm
description: "CRM: contacts and their notes"
tables:
  - name: contacts
    schema: dbo
    primary_key: [contact_id]
    sequence_by: lsn
    pii: [email]
    description: Contacts
    columns:
      - {name: lsn, type: long}
      - {name: contact_id, type: long}
      - {name: email, type: string, description: "Work e-mail: yes, it is personal data"}
      - {name: score, type: "decimal(6,2)"}
      - {name: seen_at, type: timestamptz}
  - name: notes
    schema: dbo
    primary_key: [contact_id, note_no]
    columns:
      - {name: contact_id, type: long}
      - {name: note_no, type: int}
      - {name: body, type: binary}
"""


def sources_file(project: Path, source: str) -> dict:
    doc = yaml.safe_load((project / "models" / "sources" / f"{source}.yml").read_text())
    (entry,) = doc["sources"]
    return entry


@pytest.fixture
def project_copy(tmp_path) -> Path:
    dest = tmp_path / "dbt_project"
    shutil.copytree(DBT_PROJECT_DIR, dest, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    return dest


@pytest.fixture
def crm_sources(tmp_path, monkeypatch) -> Path:
    """A second registry source, added the documented way: a YAML in LAKE_SOURCES_DIR."""
    folder = tmp_path / "extra_sources"
    folder.mkdir()
    (folder / "crm.yaml").write_text(CRM)
    monkeypatch.setenv("LAKE_SOURCES_DIR", str(folder))
    monkeypatch.setenv("LAKE_BUILTIN_SOURCES", "true")  # beside the demo's, which the dbt models read
    return folder


def assert_sources_equal_the_registry(project: Path, registry) -> None:
    by_source = registry.by_source()
    files = sorted(p.stem for p in (project / "models" / "sources").glob("*"))
    assert files == sorted(by_source)
    for source, tables in by_source.items():
        entry = sources_file(project, source)
        assert (entry["name"], entry["schema"]) == (source, source)
        assert [t["name"] for t in entry["tables"]] == [t.name for t in tables]
        for table, dbt_table in zip(tables, entry["tables"]):
            where = f"{source}.{table.name}"
            meta = dbt_table["config"]["meta"]
            assert meta["primary_key"] == list(table.primary_key), where
            assert meta.get("pii_columns", []) == list(table.pii), where
            assert meta["mode"] == table.mode and meta.get("sequence_by") == table.sequence_by, where
            assert dbt_table.get("description") == table.description, where
            columns = dbt_table.get("columns", [])
            landed = [c for c in table.columns or () if table.lands(c.name)]  # except_columns never reach dbt
            assert [c["name"] for c in columns] == [c.name for c in landed], where
            for column, dbt_column in zip(landed, columns):
                config = dbt_column.get("config", {})
                is_pii = column.name in table.pii
                assert ("pii" in config.get("tags", [])) == is_pii, f"{where}.{column.name}"
                assert config.get("meta", {}).get("pii", False) == is_pii, f"{where}.{column.name}"
                assert config.get("meta", {}).get("primary_key", False) == (column.name in table.primary_key)
                assert dbt_column["data_type"] == dbt_sources.sql_type(column.type)
                assert (column.description or "") in dbt_column.get("description", "")
                assert ("PII." in dbt_column.get("description", "")) == is_pii


def test_generated_sources_equal_the_registry():
    registry = load_registry()
    assert_sources_equal_the_registry(DBT_PROJECT_DIR, registry)
    travel = sources_file(DBT_PROJECT_DIR, SOURCE)
    customers = next(t for t in travel["tables"] if t["name"] == "customers")
    email = next(c for c in customers["columns"] if c["name"] == "email")
    assert email == {"name": "email", "data_type": "varchar", "description": "E-mail address. PII.",
                     "config": {"tags": ["pii"], "meta": {"pii": True}}}
    assert travel["config"]["meta"]["lake_registry"] == "lake_assets/sources/travel.yaml"


def test_descriptions_say_what_the_demo_data_holds():
    """The regions are the demo generator's codes (the hand-written file said EU, UK or US)."""
    from demo.generate import CITIES

    regions = sorted({c[2] for c in CITIES})
    assert regions == ["AMER", "APAC", "EMEA"]
    travel = {t["name"]: {c["name"]: c.get("description", "") for c in t["columns"]}
              for t in sources_file(DBT_PROJECT_DIR, SOURCE)["tables"]}
    for table in ("hotels", "payments", "promotions"):
        assert all(r in travel[table]["region"] for r in regions), table
    text = (DBT_PROJECT_DIR / "models" / "sources" / f"{SOURCE}.yml").read_text()
    assert "EU, UK" not in text and "UK or US" not in text


@pytest.mark.parametrize("registry_type", EVERY_REGISTRY_TYPE)
def test_data_type_is_the_type_a_query_sees(registry_type):
    """DuckDB reads a column the lake writes with arrow_type() as exactly the declared data_type, and
    the data_type is valid Athena (Trino) SQL."""
    data_type = dbt_sources.sql_type(registry_type)
    conn = duckdb.connect()
    written = pa.table({"c": pa.array([None], arrow_type(registry_type))})  # noqa: F841 (DuckDB reads it by name)
    seen = conn.execute("select typeof(c) from written").fetchone()[0]
    declared = conn.execute(f"select typeof(cast(null as {data_type}))").fetchone()[0]
    assert declared == seen
    sqlglot.parse_one(f"select cast(null as {data_type})", read="athena", error_level=sqlglot.ErrorLevel.RAISE)


def test_data_types_match_the_source_tables_in_the_catalog(built_lake, iceberg_duckdb):
    """The travel tables as the CDC merge leaves them, read with DuckDB's iceberg_scan."""
    checked = 0
    for table in sources_file(DBT_PROJECT_DIR, SOURCE)["tables"]:
        iceberg = built_lake.catalog.load_table(f"{SOURCE}.{table['name']}")
        described = iceberg_duckdb.execute(f"describe select * from iceberg_scan('{iceberg.metadata_location}')").fetchall()
        actual = {row[0]: row[1] for row in described}
        for column in table["columns"]:
            declared = iceberg_duckdb.execute(f"select typeof(cast(null as {column['data_type']}))").fetchone()[0]
            assert declared == actual[column["name"]], f"{table['name']}.{column['name']}"
            checked += 1
    assert checked > 40


def test_stale_sources_file_fails_check_naming_it(project_copy, capsys):
    path = project_copy / "models" / "sources" / f"{SOURCE}.yml"
    path.write_text(path.read_text().replace("Sales region: EMEA, AMER or APAC.", "Sales region: EU, UK or US."))
    assert dbt_codegen.main(["check", "--project-dir", str(project_copy)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"stale: {path} (out of date)", "run: python -m lake_assets.core.dbt_codegen generate"]

    path.unlink()
    assert dbt_codegen.main(["check", "--project-dir", str(project_copy)]) == 1
    assert f"stale: {path} (missing)" in capsys.readouterr().err

    assert dbt_codegen.main(["generate", "--project-dir", str(project_copy)]) == 0
    assert dbt_codegen.main(["check", "--project-dir", str(project_copy)]) == 0
    assert path.read_bytes() == (DBT_PROJECT_DIR / "models" / "sources" / f"{SOURCE}.yml").read_bytes()


def test_a_registry_change_makes_check_fail_until_generated(project_copy, crm_sources, monkeypatch, capsys):
    crm = project_copy / "models" / "sources" / "crm.yml"
    assert dbt_codegen.main(["check", "--project-dir", str(project_copy)]) == 1
    assert f"stale: {crm} (missing)" in capsys.readouterr().err
    assert dbt_codegen.generate(project_copy) == [Path("models/sources/crm.yml")]
    assert_sources_equal_the_registry(project_copy, load_registry())

    (crm_sources / "crm.yaml").write_text(CRM.replace("pii: [email]", "pii: [email, score]"))
    assert dbt_codegen.main(["check", "--project-dir", str(project_copy)]) == 1
    assert capsys.readouterr().err.splitlines()[0] == f"stale: {crm} (out of date)"
    dbt_codegen.generate(project_copy)
    score = next(c for c in sources_file(project_copy, "crm")["tables"][0]["columns"] if c["name"] == "score")
    assert score["config"] == {"tags": ["pii"], "meta": {"pii": True}}

    monkeypatch.delenv("LAKE_SOURCES_DIR")  # the source leaves the registry: its file goes too
    current_settings.cache_clear()  # settings are read once per process; this test changes them midway
    assert dbt_codegen.main(["check", "--project-dir", str(project_copy)]) == 1
    assert f"stale: {crm} (no longer generated)" in capsys.readouterr().err
    assert dbt_codegen.generate(project_copy) == [Path("models/sources/crm.yml")]
    assert not crm.exists()


@pytest.mark.parametrize("module", ["lake_assets.core.dbt_codegen", "lake_assets.core.governance"])
def test_check_command_exits_non_zero_naming_the_stale_file(project_copy, module):
    """The command as CI runs it; the governance module's older name does the same."""
    path = project_copy / "models" / "sources" / f"{SOURCE}.yml"
    path.write_text(path.read_text() + "# hand edit\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("LAKE_SOURCES_DIR", None)
    run = subprocess.run([sys.executable, "-m", module, "check", "--project-dir", str(project_copy)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert f"stale: {path} (out of date)" in run.stderr
    fixed = subprocess.run([sys.executable, "-m", module, "generate", "--project-dir", str(project_copy)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert fixed.returncode == 0 and f"updated {path}" in fixed.stdout, fixed.stderr


def test_a_hand_written_sources_file_is_refused(project_copy, capsys):
    extra = project_copy / "models" / "sources" / "extra.yml"
    extra.write_text("version: 2\nsources:\n  - name: travel\n    tables: [{name: customers}]\n")
    with pytest.raises(dbt_codegen.GeneratedFilesError, match="hand-written file in models/sources/"):
        dbt_codegen.generate(project_copy)
    assert dbt_codegen.main(["check", "--project-dir", str(project_copy)]) == 2
    assert str(extra) in capsys.readouterr().err and extra.exists()


RENDER_ALL = """
import json, sys
from pathlib import Path
from lake_assets.core import dbt_codegen
out = {str(p): f.render(p.suffix) for d in dbt_codegen.generated_folders(Path(sys.argv[1])) for p, f in d.files.items()}
print(json.dumps(out))
"""


def test_regeneration_is_deterministic(project_copy, crm_sources):
    """Same registry and policy, same bytes: across processes with different hash seeds, from an
    empty folder or over existing files, and with the repository checked out elsewhere."""
    renders = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": seed}
        run = subprocess.run([sys.executable, "-c", RENDER_ALL, str(project_copy)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120, check=True)
        renders.append(json.loads(run.stdout))
    assert renders[0] == renders[1] and len(renders[0]) >= 10

    shutil.rmtree(project_copy / "models" / "sources")
    shutil.rmtree(project_copy / "models" / "consumer")
    dbt_codegen.generate(project_copy)
    written = {str(p.relative_to(project_copy)): p.read_text()
               for folder in ("sources", "consumer") for p in (project_copy / "models" / folder).rglob("*") if p.is_file()}
    assert written == renders[0]
    assert dbt_codegen.generate(project_copy) == []
    for name, text in written.items():
        if name != "models/sources/crm.yml":  # the repository has no crm source
            assert (DBT_PROJECT_DIR / name).read_text() == text, name
    assert str(crm_sources.resolve()) in written["models/sources/crm.yml"]  # outside the repository: named as it is
    assert str(REPO) not in written["models/sources/travel.yml"]


@settings(max_examples=300, deadline=None)
@given(st.text(), st.lists(st.text(min_size=1), max_size=4))
def test_sources_yaml_reads_back_as_written(text, words):
    doc = {"version": 2, "sources": [{"name": "s", "description": text, "config": {"meta": {"owners": words, "x": {}}},
                                      "tables": [{"name": "t", "columns": [{"name": "c", "description": text}]}]}]}
    assert yaml.safe_load(dbt_sources.dump_yaml(doc)) == doc


def test_a_new_registry_source_can_be_sourced_right_away(project_copy, crm_sources, tmp_path):
    """Adding a source YAML is all it takes: a model selecting from it parses, its source carries the
    registry's columns, types and PII tags, and its lineage is the source-aligned table."""
    (project_copy / "models" / "aggregated" / "contact_scores.sql").write_text(
        "select contact_id, score from {{ source('crm', 'contacts') }}\n")
    dbt_codegen.generate(project_copy)
    target = tmp_path / "target"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBT_")}
    env |= {"LAKE_ENV": "local", "LAKE_HOME": str(tmp_path / "lake"), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    run = subprocess.run([dbt_executable(), "parse", "--target", "local", "--target-path", str(target),
                          "--log-path", str(target)], cwd=project_copy, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    manifest = json.loads((target / "manifest.json").read_text())
    contacts = manifest["sources"]["source.lakehouse.crm.contacts"]
    assert contacts["schema"] == "crm"
    assert {n: (c["data_type"], c["tags"]) for n, c in contacts["columns"].items()} == {
        "lsn": ("bigint", []), "contact_id": ("bigint", []), "email": ("varchar", ["pii"]),
        "score": ("decimal(6,2)", []), "seen_at": ("timestamp with time zone", []),
    }
    assert manifest["sources"]["source.lakehouse.crm.notes"]["meta"]["primary_key"] == ["contact_id", "note_no"]
    model = manifest["nodes"]["model.lakehouse.contact_scores"]
    assert model["depends_on"]["nodes"] == ["source.lakehouse.crm.contacts"]


def test_a_broken_registry_file_keeps_its_last_good_sources_file(project_copy, crm_sources):
    """Loading the code location generates the dbt files: a typo in a source's YAML must not delete
    that source's dbt sources (and break every model reading it) until the YAML is fixed."""
    dbt_codegen.generate(project_copy)
    crm = project_copy / "models" / "sources" / "crm.yml"
    good = crm.read_text()
    (crm_sources / "crm.yaml").write_text(CRM.replace("primary_key: [contact_id]", "primary_key: [Contact Id]"))
    registry = load_registry()
    assert registry.error_for_source("crm") is not None
    assert dbt_codegen.generate(project_copy, registry) == []
    assert crm.read_text() == good
