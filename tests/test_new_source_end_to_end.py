"""A new source added only as a YAML in LAKE_SOURCES_DIR plus DMS files under $LAKE_HOME/landing becomes
Iceberg tables in the `lake` catalog at $LAKE_HOME/catalog.db through the documented command."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

from demo.dms_writer import cdc_file_name, date_folder, load_file_name, write_dms_file
from lake_assets.core.deployment import REPO_ROOT, local_catalog

YAML = """
source: crm
defaults: {refresh: on_arrival}
tables:
  - name: contacts
    schema: dbo
    source_table: CONTACTS
    primary_key: [contact_id]
    sequence_by: lsn
    columns:
      - {name: lsn, type: long}
      - {name: contact_id, type: long}
      - {name: email, type: string}
      - {name: score, type: "decimal(6,2)"}
      - {name: updated_at, type: timestamp}
  - name: notes
    schema: dbo
    primary_key: [note_id]
    format: csv
    csv: {header: false, null_marker: "\\\\N"}
    columns:
      - {name: note_id, type: long}
      - {name: contact_id, type: long}
      - {name: body, type: string}
"""

CONTACTS = [("lsn", "long"), ("contact_id", "long"), ("email", "string"), ("score", "decimal(6,2)"), ("updated_at", "timestamp")]
NOTES = [("note_id", "long"), ("contact_id", "long"), ("body", "string")]
T0 = dt.datetime(2026, 11, 21, 9, 0)


def _contact(lsn, cid, email, score, op=None):
    from decimal import Decimal

    row = {"lsn": lsn, "contact_id": cid, "email": email, "score": Decimal(score), "updated_at": T0 + dt.timedelta(minutes=lsn)}
    return row | ({"Op": op} if op else {})


def test_yaml_plus_dms_files_become_iceberg_tables_with_the_sources_final_state(tmp_path):
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "crm.yaml").write_text(YAML)
    home = tmp_path / "lake"
    landing = home / "landing" / "crm" / "dbo"
    write_dms_file(landing / "CONTACTS" / load_file_name(1),
                   [_contact(0, 1, "a@x.io", "1.50"), _contact(0, 2, "b@x.io", "2.00"), _contact(0, 3, "c@x.io", "3.25")],
                   CONTACTS, cdc=False)
    late, later = T0 + dt.timedelta(minutes=1), T0 + dt.timedelta(minutes=2)
    write_dms_file(landing / "CONTACTS" / date_folder(later) / cdc_file_name(later),
                   [_contact(9, 2, "b2@x.io", "2.50", "U"), _contact(10, 3, "c@x.io", "3.25", "D"), _contact(11, 4, "d@x.io", "4.00", "I")],
                   CONTACTS, cdc=True)
    # delivered in the same landing but older by sequence: must lose to lsn 9 and not undo the delete
    write_dms_file(landing / "CONTACTS" / date_folder(late) / cdc_file_name(late),
                   [_contact(5, 2, "stale@x.io", "9.99", "U"), _contact(6, 3, "c-back@x.io", "3.25", "U")], CONTACTS, cdc=True)
    write_dms_file(landing / "notes" / load_file_name(1),
                   [{"note_id": 1, "contact_id": 1, "body": "hello, world"}, {"note_id": 2, "contact_id": 2, "body": None}],
                   NOTES, fmt="csv", cdc=False, gzip=True, null_marker="\\N")
    write_dms_file(landing / "notes" / cdc_file_name(later),
                   [{"Op": "U", "note_id": 2, "contact_id": 2, "body": 'says "hi"'}, {"Op": "I", "note_id": 3, "contact_id": 4, "body": "new"}],
                   NOTES, fmt="csv", cdc=True, gzip=True, null_marker="\\N")

    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "LAKE_FAILPOINT")}
    env |= {"LAKE_HOME": str(home), "LAKE_SOURCES_DIR": str(sources), "LAKE_ENV": "local", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-m", "lake_assets.ingest"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "5 new files recorded" in out.stdout

    catalog = local_catalog(home)
    contacts = catalog.load_table("crm.contacts").scan().to_arrow().to_pylist()
    assert sorted((r["contact_id"], r["email"], str(r["score"]), r["lsn"]) for r in contacts) == [
        (1, "a@x.io", "1.50", 0), (2, "b2@x.io", "2.50", 9), (4, "d@x.io", "4.00", 11)]
    notes = catalog.load_table("crm.notes").scan().to_arrow().to_pylist()
    assert sorted((r["note_id"], r["contact_id"], r["body"]) for r in notes) == [
        (1, 1, "hello, world"), (2, 2, 'says "hi"'), (3, 4, "new")]
