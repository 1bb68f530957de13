"""The Spark merge job: one batch of a table's landed files into its Iceberg table, with Spark
executing the shared merge pipeline's plan.

    spark-submit [conf] merge_job.py --spec <path | s3://...> [--result <path | s3://...>]

The spec (built by `lake_assets.core.spark.engine.job_spec`) names the table's registry entry,
the batch id, the files (landing keys, file versions and the MD5 of the bytes the ledger claimed),
the landing root, the catalog and a scratch location. The same script runs under local Spark, in
tests (`run_merge` on an open session) and on EMR Serverless.

Nothing is decided here: the driver runs `cdc.pipeline.merge_batch`, the same function the
in-process engine runs, with `SparkWriter` as its engine. Spark compares the winners with the table
using the shared rule (`semantics.outcome_sql`, evaluated in Spark SQL) and writes the plan: one
MERGE INTO driven by those outcomes (current mode), an append (history mode) or a full replacement
(reload), committing the batch id and counts in the snapshot summary as the in-process engine does.

Results go back as a JSON document (`--result`) and, when Dagster launched the job, as a Pipes
custom message; logs go through Pipes too.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import shutil
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lake_assets.core.cdc.batch import SEQ, LandedInput
from lake_assets.core.cdc.dms import OP, LandingKeyError
from lake_assets.core.cdc.formats import parse_table_key
from lake_assets.core.cdc.iceberg import arrow_schema_of, committed_batches, conform
from lake_assets.core.cdc.pipeline import CommitPlan, Committed, Held, MergeResult, env_failpoint, merge_batch
from lake_assets.core.cdc.scd2 import FROM_SEQ, IS_CURRENT
from lake_assets.core.cdc.semantics import DELETE, INSERT, UPDATE, WIN, Classification, outcome_sql
from lake_assets.core.landing import LocalLandingZone, S3LandingZone
from lake_assets.core.registry import TableConfig
from lake_assets.core.spark.conf import CATALOG_NAME, CatalogSettings
from lake_assets.core.spark.engine import SPEC_VERSION

COMMIT_METADATA = "org.apache.iceberg.spark.CommitMetadata"

Log = Callable[[str], None]


class MergeJobError(RuntimeError):
    """The job could not do what the spec asks; the message names the table and batch."""


# --- documents: the spec in, the result out -----------------------------------------------------


def _s3_parts(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def read_document(location: str) -> dict:
    if location.startswith("s3://"):
        import boto3

        bucket, key = _s3_parts(location)
        return json.loads(boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())
    return json.loads(Path(location).read_text())


def write_document(location: str, doc: dict) -> None:
    data = json.dumps(doc, default=str, indent=1).encode()
    if location.startswith("s3://"):
        import boto3

        bucket, key = _s3_parts(location)
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data, ContentType="application/json")
        return
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def result_to_json(result: MergeResult) -> dict:
    d = dataclasses.asdict(result)
    d["per_file"] = {k: list(v) for k, v in result.per_file.items()}
    return d


# --- reading the batch ----------------------------------------------------------------------------


def _landing_zone(root: str):
    if root.startswith("s3://"):
        import boto3

        bucket, prefix = _s3_parts(root)
        return S3LandingZone(bucket, prefix, boto3.client("s3"))
    return LocalLandingZone(Path(root))


def read_landed(spec: dict) -> tuple[list[LandedInput], dict[str, str]]:
    """The spec's files with their bytes; a file that moved or changed since it was claimed fails alone."""
    landing = _landing_zone(spec["landing"])
    table = TableConfig.from_json_dict(spec["table"])
    files, failed = [], {}
    for entry in spec["files"]:
        key = entry["key"]
        try:
            f = parse_table_key(key, table)
            data = landing.read(key)
        except LandingKeyError as e:
            failed[key] = str(e)
            continue
        except Exception as e:  # noqa: BLE001 - OSError locally, botocore ClientError on S3
            failed[key] = f"{key}: cannot read from landing zone {landing.describe()}: {e}"
            continue
        md5 = entry.get("md5")
        if md5 and hashlib.md5(data, usedforsecurity=False).hexdigest() != md5:
            failed[key] = f"{key}: content changed since the batch was claimed (expected MD5 {md5})"
            continue
        files.append(LandedInput(f, data, int(entry.get("version", 1))))
    return files, failed


# --- Spark helpers --------------------------------------------------------------------------------


def spark_identifier_of(identifier: str) -> str:
    """`lake`.`source`.`table` for Spark SQL."""
    source, name = identifier.split(".")
    return f"{CATALOG_NAME}.`{source}`.`{name}`"


@contextmanager
def commit_properties(spark, props: dict[str, str]):
    """Snapshot summary properties for Iceberg commits made by Spark statements on this thread.

    Iceberg's Spark writes add `CommitMetadata`'s thread-local properties to every commit (the Java
    API is `CommitMetadata.withCommitProperties`). SQL has no other way to set them: there is no
    `spark.sql.iceberg...snapshot-property` session setting in Iceberg 1.10. PySpark pins each Python
    thread to one JVM thread, so setting the thread-local here reaches the MERGE run from this thread;
    the caller verifies the summary after the commit all the same.
    """
    jvm = spark._jvm
    loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
    cls = jvm.java.lang.Class.forName(COMMIT_METADATA, True, loader)
    holder = cls.getDeclaredField("COMMIT_PROPERTIES")
    holder.setAccessible(True)
    local = holder.get(None)
    props_map = jvm.java.util.HashMap()
    for k, v in props.items():
        props_map.put(k, str(v))
    local.set(props_map)
    try:
        yield
    finally:
        local.remove()


class Scratch:
    """Where the driver hands Arrow rows to Spark as Parquet (a local directory or an S3 prefix)."""

    def __init__(self, base: str, table: TableConfig, batch_id: str):
        name = f"{table.source}.{table.name}/{batch_id}-{uuid.uuid4().hex[:8]}"
        self.base = base.rstrip("/") + "/" + name
        self._written: list[str] = []

    def location(self, name: str) -> str:
        """Where Spark writes an output of this batch (a directory of Parquet parts)."""
        location = f"{self.base}/{name}"
        self._written.append(location)
        return location

    def write(self, name: str, data: pa.Table) -> str:
        location = f"{self.base}/{name}.parquet"
        if location.startswith("s3://"):
            import boto3

            buf = io.BytesIO()
            pq.write_table(data, buf)
            bucket, key = _s3_parts(location)
            boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
        else:
            Path(location).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(data, location)
        self._written.append(location)
        return location

    def read(self, location: str) -> pa.Table:
        return pq.read_table(location)

    def cleanup(self) -> None:
        if self.base.startswith("s3://"):
            import boto3

            s3 = boto3.client("s3")
            bucket, prefix = _s3_parts(self.base)
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
                for obj in page.get("Contents", []):
                    s3.delete_object(Bucket=bucket, Key=obj["Key"])
        else:
            shutil.rmtree(self.base, ignore_errors=True)


def _on(keys: tuple[str, ...], left: str, right: str) -> str:
    return " AND ".join(f"{left}.`{k}` = {right}.`{k}`" for k in keys)


OUTCOME = "__lake_outcome"  # a winner's outcome, carried into the MERGE source


class SparkWriter:
    """The Spark side of the pipeline: compares winners with the table in Spark SQL, and writes the
    plan with MERGE INTO / append / overwrite. Rows travel between the driver and Spark as Parquet
    in the scratch location, never through py4j collections."""

    name = "spark"

    def __init__(self, spark, scratch: Scratch, log: Log = lambda msg: None):
        self.spark = spark
        self.scratch = scratch
        self.log = log

    def classify(self, tbl, win: pa.Table, keys: tuple[str, ...], result: MergeResult) -> Classification:
        from pyspark.sql.types import LongType, StringType, StructField, StructType

        ident = spark_identifier_of(result.table)
        marked = pa.table({**{k: win.column(k) for k in keys}, SEQ: win.column(SEQ), OP: win.column(OP)}).append_column(
            WIN, pa.array(range(win.num_rows), pa.int64()))
        location = self.scratch.write("winners", marked)
        table_fields = {f.name: f for f in self.spark.table(ident).schema.fields}
        schema = StructType([table_fields[k] for k in keys] + [StructField(SEQ, StringType()), StructField(OP, StringType()),
                                                              StructField(WIN, LongType())])
        view = f"lake_winners_{uuid.uuid4().hex[:12]}"
        self.spark.read.schema(schema).parquet(location).createOrReplaceTempView(view)
        kcols = ", ".join(f"`{k}`" for k in keys)
        rule = outcome_sql(op=f"w.`{OP}`", change_seq=f"w.`{SEQ}`", held_seq=f"t.`{SEQ}`", held="t.__held")
        started = time.perf_counter()
        try:
            out = self.scratch.location("outcomes")
            self.spark.sql(
                f"SELECT w.`{WIN}` AS wi, {rule} AS outcome FROM {view} w "
                f"LEFT JOIN (SELECT {kcols}, `{SEQ}`, true AS __held FROM {ident}) t ON {_on(keys, 'w', 't')}"
            ).write.mode("overwrite").parquet(out)
        finally:
            self.spark.catalog.dropTempView(view)
        outcomes = self.scratch.read(out).sort_by("wi")
        self.log(f"{result.table}: {win.num_rows} winners compared with the table in {time.perf_counter() - started:.1f}s")
        assert outcomes.column("wi").to_pylist() == list(range(win.num_rows)), "Spark lost or duplicated winners"
        return Classification(outcomes.column("outcome").combine_chunks())

    def hold(self, tbl, wanted: pa.Table | None, keys: tuple[str, ...], result: MergeResult) -> Held:
        """The table's rows of the wanted keys (None: every current scd2 version), through Spark."""
        from pyspark.sql.types import StructType

        ident = spark_identifier_of(result.table)
        view = None
        if wanted is None:
            query = f"SELECT * FROM {ident} WHERE `{IS_CURRENT}`"
        else:
            table_fields = {f.name: f for f in self.spark.table(ident).schema.fields}
            location = self.scratch.write("wanted", pa.table({k: wanted.column(k) for k in keys}))
            view = f"lake_wanted_{uuid.uuid4().hex[:12]}"
            self.spark.read.schema(StructType([table_fields[k] for k in keys])).parquet(location).createOrReplaceTempView(view)
            query = f"SELECT t.* FROM {ident} t LEFT SEMI JOIN {view} w ON {_on(keys, 't', 'w')}"
        try:
            out = self.scratch.location("held")
            self.spark.sql(query).write.mode("overwrite").parquet(out)
        finally:
            if view is not None:
                self.spark.catalog.dropTempView(view)
        return Held(conform(self.scratch.read(out), arrow_schema_of(tbl)))

    def removing(self, held: Held, removed: pa.Array) -> object:
        return None  # the MERGE finds the versions it removes by key and opening position

    def commit(self, catalog, tbl, plan: CommitPlan) -> Committed:
        from pyspark.sql import functions as F
        from pyspark.sql.types import StringType, StructField, StructType

        identifier = plan.table.identifier
        ident = spark_identifier_of(identifier)
        if plan.evolution.changes:
            # Spark resolves the MERGE's columns against the table in the catalog: commit the schema
            # first (a metadata-only commit, no snapshot; the columns it adds are nullable).
            txn = tbl.transaction()
            plan.evolution.apply(txn)
            txn.commit_transaction()
            self.log(f"{identifier}: {'; '.join(plan.evolution.changes)}")
        target = arrow_schema_of(catalog.load_table(identifier))
        c = plan.classification
        if plan.history:
            rows, action = conform(plan.rows, target), "append"
        else:
            assert c is not None  # current mode: the pipeline classified the winners
            if plan.reload:
                rows, action = conform(plan.rows.take(c.written), target), "replace"
            else:
                changing = c.indices(INSERT, UPDATE, DELETE)
                rows = conform(plan.rows.take(changing), target).append_column(OUTCOME, c.outcome.take(changing))
                action = "merge"
        if action != "replace" and rows.num_rows == 0:
            _empty_commit(catalog, identifier, plan.summary)
        else:
            location = self.scratch.write(action, rows)
            fields = list(self.spark.table(ident).schema.fields)
            if action == "merge":
                fields.append(StructField(OUTCOME, StringType()))
            source = self.spark.read.schema(StructType(fields)).parquet(location)
            started = time.perf_counter()
            with commit_properties(self.spark, plan.summary):
                if action == "merge":
                    view = f"lake_source_{uuid.uuid4().hex[:12]}"
                    source.createOrReplaceTempView(view)
                    try:
                        # scd2 rows are versions: one per key and opening position
                        match = plan.table.primary_key + ((FROM_SEQ,) if plan.table.mode == "scd2" else ())
                        self.spark.sql(merge_sql(ident, view, match, [f.name for f in target]))
                    finally:
                        self.spark.catalog.dropTempView(view)
                elif action == "append":
                    source.writeTo(ident).append()
                else:  # a reload: the new full load is the whole table
                    source.writeTo(ident).overwrite(F.lit(True))
            self.log(f"{identifier}: {action} committed in {time.perf_counter() - started:.1f}s")
        committed = committed_batches(catalog.load_table(identifier)).get(plan.batch_id)
        if committed is None:
            raise MergeJobError(f"table {identifier}: batch {plan.batch_id}: the {action} committed no snapshot carrying the batch id")
        return Committed(int(committed["snapshot-id"]), files_rewritten=int(committed.get("deleted-data-files", 0)))


def merge_sql(ident: str, source_view: str, keys: tuple[str, ...], columns: list[str]) -> str:
    """MERGE INTO driven by the outcomes the pipeline decided: the statement re-decides nothing."""
    sets = ", ".join(f"t.`{c}` = s.`{c}`" for c in columns)
    cols = ", ".join(f"`{c}`" for c in columns)
    vals = ", ".join(f"s.`{c}`" for c in columns)
    return f"""MERGE INTO {ident} t USING {source_view} s ON {_on(keys, 't', 's')}
WHEN MATCHED AND s.`{OUTCOME}` = '{DELETE}' THEN DELETE
WHEN MATCHED AND s.`{OUTCOME}` = '{UPDATE}' THEN UPDATE SET {sets}
WHEN NOT MATCHED AND s.`{OUTCOME}` = '{INSERT}' THEN INSERT ({cols}) VALUES ({vals})"""


def _empty_commit(catalog, identifier: str, summary: dict[str, str]) -> None:
    """A snapshot that changes no rows but records the batch (everything was stale, or nothing was read)."""
    tbl = catalog.load_table(identifier)
    txn = tbl.transaction()
    with txn.update_snapshot(snapshot_properties=summary).overwrite():
        pass
    txn.commit_transaction()


def job_failpoint(name: str) -> None:
    """Crash the job on purpose where LAKE_FAILPOINT is `spark:<name>` (crash-recovery tests)."""
    env_failpoint(f"spark:{name}")


def run_merge(spark, spec: dict, *, secret_env: Mapping[str, str] | None = None, log: Log = lambda msg: None,
              failpoint: Callable[[str], None] = job_failpoint) -> dict:
    """Run one spec on an open Spark session; returns the MergeResult as JSON.

    secret_env: where the catalog password is (the job's environment; the launcher's secrets in process).
    """
    if spec.get("version") != SPEC_VERSION:
        raise MergeJobError(f"spec version {spec.get('version')!r} is not {SPEC_VERSION}; deploy the job script with the package")
    if spec.get("action") == "maintain":
        return run_maintenance(spark, spec, log=log)
    table = TableConfig.from_json_dict(spec["table"])
    catalog = CatalogSettings.from_json_dict(spec["catalog"]).with_secret_env(secret_env or {}).load()
    now = dt.datetime.fromisoformat(spec["now"])
    files, unreachable = read_landed(spec)
    for reason in unreachable.values():
        log(f"{table.identifier}: file left out of batch {spec['batch_id']}: {reason}")
    work = Scratch(spec["scratch"], table, spec["batch_id"])
    try:
        result = merge_batch(SparkWriter(spark, work, log), catalog, table, files, spec["batch_id"], now=now,
                             reload_requested=bool(spec.get("reload_requested")), failpoint=failpoint)
    finally:
        work.cleanup()
    result.failed_files = {**unreachable, **result.failed_files}
    for key, reason in result.failed_files.items():
        if key not in unreachable:
            log(f"{table.identifier}: file left out of batch {spec['batch_id']}: {reason}")
    log(f"{table.identifier}: batch {spec['batch_id']}: {result.rows_read} rows from {len(result.files)} files")
    return result_to_json(result)


def run_maintenance(spark, spec: dict, *, log: Log = lambda msg: None) -> dict:
    """Maintenance of a Spark table with Iceberg's own procedures: compaction sorted by the primary
    key (with the deletes applied), manifest rewrite, expiry of the snapshots the caller chose (it
    keeps their batch records first) and orphan removal. Returns the procedures' counts."""
    table = TableConfig.from_json_dict(spec["table"])
    ident = spark_identifier_of(table.identifier).removeprefix(f"{CATALOG_NAME}.")
    m = spec["maintenance"]
    out: dict[str, int] = {}
    sort = ", ".join(f"{k} ASC NULLS FIRST" for k in table.primary_key)
    options = {"min-input-files": str(m["min_files_to_compact"]), "target-file-size-bytes": str(m["target_file_mb"] * 2**20),
               "delete-ratio-threshold": str(m["max_deleted_share"]), "delete-file-threshold": str(m["max_delete_files"] + 1)}
    opts = ", ".join(f"'{k}', '{v}'" for k, v in options.items())
    [row] = spark.sql(f"CALL {CATALOG_NAME}.system.rewrite_data_files(table => '{ident}', strategy => 'sort', "
                      f"sort_order => '{sort}', options => map({opts}))").collect()
    out["files_compacted"], out["files_written"] = int(row["rewritten_data_files_count"]), int(row["added_data_files_count"])
    [row] = spark.sql(f"CALL {CATALOG_NAME}.system.rewrite_manifests('{ident}')").collect()
    out["manifests_before"], out["manifests_after"] = int(row["rewritten_manifests_count"]), int(row["added_manifests_count"])
    ids = [int(i) for i in spec.get("expire_snapshot_ids", [])]
    if ids:
        [row] = spark.sql(f"CALL {CATALOG_NAME}.system.expire_snapshots(table => '{ident}', "
                          f"snapshot_ids => array({', '.join(map(str, ids))}), retain_last => 1)").collect()
        out["snapshots_expired"] = len(ids)
        out["files_expired"] = sum(int(v) for k, v in row.asDict().items() if k.startswith("deleted_"))
    older_than = spec["orphans_older_than"].replace("T", " ").split("+")[0]
    orphans = spark.sql(f"CALL {CATALOG_NAME}.system.remove_orphan_files(table => '{ident}', "
                        f"older_than => TIMESTAMP '{older_than}')").collect()
    out["orphans_removed"] = len(orphans)
    log(f"{table.identifier}: maintenance {out}")
    return out


def error_of(exc: BaseException) -> dict:
    """The error as the engine maps it: an Iceberg commit conflict anywhere in a Java cause chain is a
    CommitFailedException (the runner retries it); everything else keeps its class name and message."""
    jexc = getattr(exc, "java_exception", None)  # py4j's Py4JJavaError
    cause, depth = jexc, 0
    while cause is not None and depth < 20:
        name = str(cause.getClass().getName())
        if name in ("org.apache.iceberg.exceptions.CommitFailedException", "org.apache.iceberg.exceptions.ValidationException"):
            return {"type": "CommitFailedException", "message": str(cause.getMessage())}
        cause, depth = cause.getCause(), depth + 1
    message = str(jexc.toString()) if jexc is not None else (str(exc) or repr(exc))
    return {"type": type(exc).__name__, "message": message, "traceback": traceback.format_exc(limit=8)}


def session_launcher(spark, *, log: Log = lambda msg: None) -> Callable[[dict, Mapping[str, str]], dict]:
    """A launcher that runs specs on an open session in this process (tests, notebooks, the bench)."""

    def launch(spec: dict, secret_env: Mapping[str, str]) -> dict:
        started_at = time.time()
        try:
            doc = {"ok": True, "result": run_merge(spark, spec, secret_env=secret_env, log=log)}
        except Exception as exc:  # noqa: BLE001 - the caller reads the failure from the document, as from a submitted job
            doc = {"ok": False, "error": error_of(exc)}
        doc["timings"] = {"started_at": started_at, "session_ready_at": started_at, "finished_at": time.time()}
        return doc

    return launch


# --- entry point ---------------------------------------------------------------------------------


def _pipes():
    """The Dagster Pipes context when Dagster launched this process, else nothing."""
    try:
        from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes
    except ImportError:
        return nullcontext(None)
    if not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        return nullcontext(None)
    return open_dagster_pipes()


def main(argv: list[str] | None = None) -> int:
    started_at = time.time()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="job spec JSON: a local path or s3:// URI")
    parser.add_argument("--result", help="where to write the result JSON (local path or s3:// URI)")
    args = parser.parse_args(argv)
    spec = read_document(args.spec)

    with _pipes() as pipes:
        def log(msg: str) -> None:
            if pipes is not None:
                pipes.log.info(msg)
            print(f"[lake merge job] {msg}", file=sys.stderr, flush=True)

        from pyspark.sql import SparkSession

        builder = SparkSession.builder.appName(f"lake-merge {spec['table']['source']}.{spec['table']['name']}")
        # The catalog password arrives in this process's environment, never on spark-submit's
        # command line: it becomes the JDBC catalog's property here, before the session starts.
        for key, value in CatalogSettings.from_json_dict(spec["catalog"]).with_secret_env(os.environ).secret_spark_conf().items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        session_ready_at = time.time()
        log(f"Spark {spark.version} session ready in {session_ready_at - started_at:.1f}s")
        doc: dict[str, Any] = {"ok": False, "error": {"type": "Interrupted", "message": "the job was interrupted before it finished"}}
        try:
            result = run_merge(spark, spec, secret_env=os.environ, log=log)
            doc = {"ok": True, "result": result}
        except Exception as exc:  # reported, then re-raised so the job run fails with the reason
            doc = {"ok": False, "error": error_of(exc)}
            raise
        finally:
            doc["timings"] = {"started_at": started_at, "session_ready_at": session_ready_at, "finished_at": time.time()}
            if args.result:
                write_document(args.result, doc)
            if pipes is not None:
                pipes.report_custom_message(doc)
            spark.stop()
        r = doc["result"]
        log(
            f"{r['table']}: batch {r['batch_id']} committed snapshot {r['snapshot_id']}: inserted {r['inserted']}, "
            f"updated {r['updated']}, deleted {r['deleted']}, appended {r['appended']}, quarantined {r['quarantined']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
