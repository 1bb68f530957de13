"""The Spark merge engine: the CDC core's semantics run as one PySpark job, out of process.

`SparkEngine.merge` has the in-process engine's signature and result. It builds the job spec (the
table's registry entry, batch id, landed file keys with the MD5 of the bytes the ledger claimed, the
landing root, the catalog, a scratch location) and hands it to an injected launcher: spark-submit as
a plain subprocess, spark-submit through Dagster Pipes, EMR Serverless through Dagster Pipes, or an
open Spark session in tests (`resources/spark.py` and `lake_assets/spark/merge_job.py`). The job's
errors come back as the core's exceptions, so the exactly-once runner treats both engines alike: a
commit conflict is retried, schema drift fails the table's batch with its reason.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException

from lake_assets.core.cdc.batch import LandedInput
from lake_assets.core.cdc.iceberg import SchemaDriftError, TableDefinitionError
from lake_assets.core.cdc.pipeline import EngineInterrupted, MergeResult
from lake_assets.core.registry import TableConfig
from lake_assets.core.spark.conf import CatalogSettings, catalog_settings_of

SPEC_VERSION = 2  # the job spec's layout; the job refuses a spec of another version

Launcher = Callable[[dict, Mapping[str, str]], dict]
"""Runs a job spec and returns the job's result document: {"ok": true, "result": {...MergeResult}}
or {"ok": false, "error": {"type", "message"}}; raises SparkJobError when the job left no document.
The mapping holds the job's secrets (`CatalogSettings.secret_env`): a launcher puts them in the
job's environment only, never in the spec, on a command line or in a log."""


class SparkJobError(RuntimeError):
    """The Spark job failed or could not be run; the message names the table, batch and reason."""


class SparkJobInterrupted(SparkJobError, EngineInterrupted):
    """The Spark job ended without a result document (killed, out of memory, its run failed)."""


def job_spec(
    table: TableConfig,
    files: list[LandedInput],
    batch_id: str,
    *,
    landing: str,
    catalog: CatalogSettings,
    scratch: str,
    now: dt.datetime,
    reload_requested: bool = False,
) -> dict:
    return {
        "version": SPEC_VERSION,
        "table": table.to_json_dict(),
        "batch_id": batch_id,
        "files": [{"key": f.key, "version": f.version, "md5": hashlib.md5(f.data, usedforsecurity=False).hexdigest()} for f in files],
        "reload_requested": reload_requested,
        "landing": landing,
        "catalog": catalog.to_json_dict(),
        "scratch": scratch,
        "now": now.isoformat(),
    }


_RESULT_FIELDS = {f.name for f in dataclasses.fields(MergeResult)}


def result_from_document(table: TableConfig, batch_id: str, doc: dict) -> MergeResult:
    """The job's result document as a MergeResult, or its error as the exception the core raises."""
    if doc.get("ok"):
        r = {k: v for k, v in doc["result"].items() if k in _RESULT_FIELDS}
        r["per_file"] = {k: tuple(v) for k, v in (r.get("per_file") or {}).items()}
        return MergeResult(**r)
    err = doc.get("error") or {}
    kind, message = err.get("type", "Error"), err.get("message", "no reason reported")
    if kind == "SchemaDriftError":
        raise SchemaDriftError(message)
    if kind == "TableDefinitionError":
        raise TableDefinitionError(message)
    if kind == "CommitFailedException":
        raise CommitFailedException(f"table {table.identifier}: batch {batch_id}: {message}")
    detail = f"\n{err['traceback']}" if err.get("traceback") else ""
    raise SparkJobError(f"table {table.identifier}: Spark merge of batch {batch_id} failed: {kind}: {message}{detail}")


@dataclass
class SparkEngine:
    """Merges a batch with the Spark job; `launcher` decides where the job runs.

    landing: the landing root the job reads files from (a directory or s3://bucket/prefix).
    scratch: where the job's driver hands rows to Spark (a directory, or an S3 prefix on EMR).
    catalog_settings: the catalog as the job sees it; by default derived from the catalog `merge`
    is given (local SQLite/PostgreSQL), on EMR the Glue settings.
    """

    launcher: Launcher
    landing: str
    scratch: str
    catalog_settings: CatalogSettings | None = None
    name: str = "spark"
    last_report: dict | None = field(default=None, repr=False)  # the last job's full document (timings)

    def merge(
        self,
        catalog: Catalog,
        table: TableConfig,
        files: list[LandedInput],
        batch_id: str,
        *,
        now: dt.datetime | None = None,
        reload_requested: bool = False,
        failpoint=lambda name: None,
    ) -> MergeResult:
        started = time.perf_counter()
        now = now or dt.datetime.now(dt.UTC)
        settings = self.catalog_settings or catalog_settings_of(catalog)
        spec = job_spec(table, files, batch_id, landing=self.landing, catalog=settings, scratch=self.scratch, now=now,
                        reload_requested=reload_requested)
        # Crash points as the runner knows them: before the job (nothing of the batch is written) and
        # after it (committed, ledger not yet told). Inside the job, LAKE_FAILPOINT=spark:<point>.
        failpoint("before_commit")
        doc = self.launcher(spec, settings.secret_env())
        self.last_report = doc
        result = result_from_document(table, batch_id, doc)
        failpoint("after_commit")
        result.seconds = time.perf_counter() - started
        return result

    def maintain(self, catalog: Catalog, table: TableConfig, *, expire_snapshot_ids: list[int],
                 orphans_older_than: dt.datetime) -> dict[str, int]:
        """Compaction, manifest rewrite, the given snapshots' expiry and orphan removal, by Iceberg's
        procedures in the Spark job (lake_assets/core/maintenance.py decides what may expire)."""
        settings = self.catalog_settings or catalog_settings_of(catalog)
        spec = {"version": SPEC_VERSION, "action": "maintain", "table": table.to_json_dict(), "catalog": settings.to_json_dict(),
                "maintenance": table.maintenance.model_dump(mode="json"), "expire_snapshot_ids": expire_snapshot_ids,
                "orphans_older_than": orphans_older_than.astimezone(dt.UTC).isoformat()}
        doc = self.launcher(spec, settings.secret_env())
        if not doc.get("ok"):
            error = doc.get("error") or {}
            raise RuntimeError(f"table {table.identifier}: the Spark maintenance job failed: {error.get('type')}: {error.get('message')}")
        return dict(doc["result"])
