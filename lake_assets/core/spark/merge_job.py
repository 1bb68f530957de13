"""The Spark merge job: one batch of a table's landed DMS files into its Iceberg table with MERGE INTO.

    spark-submit [conf] merge_job.py --spec <path | s3://...> [--result <path | s3://...>]

The spec (built by `lake_assets.core.cdc.engines.spark.job_spec`) names the table's registry entry, the
batch id, the files (landing keys + MD5 of the bytes the ledger claimed), the landing root, the
catalog and a scratch location. The same script runs under local Spark, in tests (`run_merge` on an
open session) and on EMR Serverless.

Semantics are the CDC core's, not re-decided here: the driver reads the files with the core's reader
(`read_batch`: typed rows, quarantine, `_lake_seq`), picks winners and rejects tombstoned changes
with `semantics`, writes quarantine and tombstones with `sidecars` (pyiceberg on the same catalog),
creates and evolves the table with `iceberg`. Spark does the table side: it classifies winners
against the table (for counts and tombstones) and applies them with one MERGE INTO (current mode),
an append (history mode) or a full replacement (reload), committing the batch id and file list in
the snapshot summary exactly as the in-process engine does, so exactly-once recovery is one code path.

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
import shutil
import sys
import time
import traceback
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lake_assets.core.cdc.batch import SEQ, ChangeBatch
from lake_assets.core.cdc.dms import OP, LandingKeyError, parse_landing_key
from lake_assets.core.cdc.runner import env_failpoint
from lake_assets.core.cdc.iceberg import (
    arrow_schema_of,
    batch_summary,
    committed_batches,
    conform,
    current_load_max,
    evolve_schema,
    load_or_create,
    table_properties,
)
from lake_assets.core.cdc.engines.inprocess import (
    MergeResult,
    table_schema_for,
    history_rows,
    with_lake_columns,
    read_batch,
)
from lake_assets.core.cdc.semantics import reject_tombstoned, winners
from lake_assets.core.cdc.engines.spark import SPEC_VERSION
from lake_assets.core.cdc.sidecars import load_tombstones, update_tombstones, write_quarantine
from lake_assets.core.landing import LocalLandingZone, S3LandingZone
from lake_assets.core.registry import TableConfig
from lake_assets.core.spark.conf import CATALOG_NAME, CatalogSettings

WIN = "__lake_w"  # index of a winner in the batch, carried through Spark to name outcomes
HAS_TOMBSTONE = "__lake_t"  # the winner's key holds a tombstone
INSERT, UPDATE, DELETE, ABSENT_DELETE, STALE = "insert", "update", "delete", "absent_delete", "stale"
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


def read_landed(spec: dict) -> tuple[list, dict[str, str]]:
    """The spec's files as (DmsFile, bytes); a file that moved or changed since it was claimed fails alone."""
    landing = _landing_zone(spec["landing"])
    files, failed = [], {}
    for entry in spec["files"]:
        key = entry["key"]
        try:
            f = parse_landing_key(key)
            data = landing.read(key)
        except LandingKeyError as e:
            failed[key] = str(e)
            continue
        except Exception as e:  # OSError locally, botocore ClientError on S3
            failed[key] = f"{key}: cannot read from landing zone {landing.describe()}: {e}"
            continue
        md5 = entry.get("md5")
        if md5 and hashlib.md5(data, usedforsecurity=False).hexdigest() != md5:
            failed[key] = f"{key}: content changed since the batch was claimed (expected MD5 {md5})"
            continue
        files.append((f, data))
    return files, failed


# --- Spark helpers --------------------------------------------------------------------------------


def spark_identifier(table: TableConfig) -> str:
    return f"{CATALOG_NAME}.`{table.source}`.`{table.name}`"


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

    def cleanup(self) -> None:
        if self.base.startswith("s3://"):
            import boto3

            s3 = boto3.client("s3")
            for location in self._written:
                s3.delete_object(Bucket=_s3_parts(location)[0], Key=_s3_parts(location)[1])
        else:
            shutil.rmtree(self.base, ignore_errors=True)


def _typed_source(spark, location: str, ident: str, extra: dict | None = None):
    """The Parquet rows read with the table's own Spark schema (no inference pass), plus `extra`
    columns (name -> Spark type). The rows were conformed to the table's Arrow schema first."""
    from pyspark.sql.types import StructField, StructType

    target = spark.table(ident).schema
    fields = list(target.fields) + [StructField(c, t) for c, t in (extra or {}).items()]
    return spark.read.schema(StructType(fields)).parquet(location)


def _on(keys: tuple[str, ...], left: str, right: str) -> str:
    return " AND ".join(f"{left}.`{k}` = {right}.`{k}`" for k in keys)


NEWER = f"(t.`{SEQ}` IS NULL OR s.`{SEQ}` > t.`{SEQ}`)"


@dataclass
class Outcome:
    """What the winners do to the table: counts per outcome, and the winner indices the tombstone
    update needs (applied and absent deletes; writes only where the key holds a tombstone)."""

    counts: dict[str, int]
    tombstoned: list[int]
    rewritten: list[int]


def classify(spark, source_view: str, ident: str, keys: tuple[str, ...]) -> Outcome:
    """The MERGE's own conditions, evaluated once against the table before it runs."""
    kcols = ", ".join(f"`{k}`" for k in keys)
    df = spark.sql(
        f"""SELECT s.`{WIN}` AS wi, s.`{HAS_TOMBSTONE}` AS has_tombstone,
               CASE WHEN t.__found IS NULL THEN (CASE WHEN s.`_lake_op` = 'D' THEN '{ABSENT_DELETE}' ELSE '{INSERT}' END)
                    WHEN {NEWER} THEN (CASE WHEN s.`_lake_op` = 'D' THEN '{DELETE}' ELSE '{UPDATE}' END)
                    ELSE '{STALE}' END AS outcome
        FROM {source_view} s
        LEFT JOIN (SELECT {kcols}, `{SEQ}`, true AS __found FROM {ident}) t ON {_on(keys, 's', 't')}"""
    ).persist()
    try:
        counts = {k: 0 for k in (INSERT, UPDATE, DELETE, ABSENT_DELETE, STALE)}
        counts.update({r.outcome: r["count"] for r in df.groupBy("outcome").count().collect()})
        needed = df.where(
            f"outcome IN ('{DELETE}', '{ABSENT_DELETE}') OR (has_tombstone AND outcome IN ('{INSERT}', '{UPDATE}'))"
        ).select("wi", "outcome").collect()
    finally:
        df.unpersist()
    tombstoned = sorted(r.wi for r in needed if r.outcome in (DELETE, ABSENT_DELETE))
    rewritten = sorted(r.wi for r in needed if r.outcome in (INSERT, UPDATE))
    return Outcome(counts, tombstoned, rewritten)


def has_tombstone(win: pa.Table, tombstones: pa.Table | None, keys: tuple[str, ...]) -> pa.Array:
    """Per winner: does its key hold a tombstone? (Only those writes change the tombstone table.)"""
    if tombstones is None or tombstones.num_rows == 0 or win.num_rows == 0:
        return pa.array([False] * win.num_rows, pa.bool_())
    import duckdb

    con = duckdb.connect()
    con.register("w", pa.table({k: win.column(k) for k in keys}).append_column(WIN, pa.array(range(win.num_rows), pa.int64())))
    con.register("t", pa.table({k: tombstones.column(k) for k in keys}))
    on = " AND ".join(f'w."{k}" = t."{k}"' for k in keys)
    hit = con.execute(f'SELECT w."{WIN}" FROM w WHERE EXISTS (SELECT 1 FROM t WHERE {on})').arrow().read_all().column(0)
    con.close()
    return pc.is_in(pa.array(range(win.num_rows), pa.int64()), value_set=hit.combine_chunks().cast(pa.int64()))


def merge_sql(ident: str, source_view: str, keys: tuple[str, ...]) -> str:
    return f"""MERGE INTO {ident} t USING {source_view} s ON {_on(keys, 't', 's')}
WHEN MATCHED AND {NEWER} AND s.`_lake_op` = 'D' THEN DELETE
WHEN MATCHED AND {NEWER} THEN UPDATE SET *
WHEN NOT MATCHED AND s.`_lake_op` <> 'D' THEN INSERT *"""


# --- the merge --------------------------------------------------------------------------------------


def _empty_commit(catalog, identifier: str, summary: dict[str, str]) -> None:
    """A snapshot that changes no rows but records the batch (everything was stale, or nothing was read)."""
    tbl = catalog.load_table(identifier)
    txn = tbl.transaction()
    with txn.update_snapshot(snapshot_properties=summary).overwrite():
        pass
    txn.commit_transaction()


def apply_batch(
    spark,
    catalog,
    batch: ChangeBatch,
    batch_id: str,
    *,
    now: dt.datetime,
    scratch: str,
    log: Log = lambda msg: None,
    failpoint: Callable[[str], None] = lambda name: None,
) -> MergeResult:
    """InProcessEngine.apply with Spark doing the table side; the same steps in the same order."""
    table = batch.table
    file_keys = [f.key for f in batch.files]
    ident = spark_identifier(table)
    result = MergeResult(table.identifier, batch_id, file_keys, rows_read=batch.rows_read)
    history = table.mode == "history"
    schema = table_schema_for(batch, history)
    tbl = load_or_create(catalog, table.identifier, schema, partition_by=table.partition_by, properties=table_properties(table))
    done = committed_batches(tbl)
    if batch_id in done:  # resumed after a crash that came after the commit
        result.already_committed = True
        result.snapshot_id = int(done[batch_id]["snapshot-id"])
        log(f"{table.identifier}: batch {batch_id} is already committed (snapshot {result.snapshot_id})")
        return result

    result.quarantined = write_quarantine(catalog, table, batch_id, batch.quarantined, now)
    load_max = current_load_max(tbl)
    loads = batch.load_numbers
    result.reload = bool(loads) and loads[0] <= load_max
    new_load_max = max([load_max] + loads) if not result.reload else max(loads)

    # Schema additions and widenings are committed before Spark writes (a metadata-only commit, no
    # snapshot): Spark's MERGE resolves columns against the table as it is in the catalog.
    txn = tbl.transaction()
    result.schema_changes = evolve_schema(txn, table.identifier, schema, file_keys)
    if result.schema_changes:
        txn.commit_transaction()
        log(f"{table.identifier}: {'; '.join(result.schema_changes)}")
    target = arrow_schema_of(catalog.load_table(table.identifier))

    work = Scratch(scratch, table, batch_id)
    try:
        if history:
            rows = conform(history_rows(batch.changes, batch_id, now), target)
            result.appended = rows.num_rows
            action, data = ("append" if rows.num_rows else "none"), rows
        else:
            action, data = _plan_current(spark, catalog, batch, batch_id, now, result, target, ident, work, log)
        summary = batch_summary(batch_id, file_keys, new_load_max, result.counts())
        failpoint("before_commit")
        started = time.perf_counter()
        _commit(spark, catalog, table, ident, action, data, summary, work)
        log(f"{table.identifier}: {action} committed in {time.perf_counter() - started:.1f}s")
    finally:
        work.cleanup()
    failpoint("after_commit")

    committed = committed_batches(catalog.load_table(table.identifier)).get(batch_id)
    if committed is None:
        raise MergeJobError(f"table {table.identifier}: batch {batch_id}: the {action} committed no snapshot carrying the batch id")
    result.snapshot_id = int(committed["snapshot-id"])
    result.files_rewritten = int(committed.get("deleted-data-files", 0))
    return result


def _plan_current(spark, catalog, batch: ChangeBatch, batch_id, now, result: MergeResult, target: pa.Schema, ident, work: Scratch, log: Log):
    table = batch.table
    keys = table.primary_key
    win = winners(batch.changes, keys)
    tombstones = load_tombstones(catalog, table)
    win, result.tombstone_rejected = reject_tombstoned(win, None if result.reload else tombstones, keys)
    rows = conform(with_lake_columns(win, batch_id, now), target)  # the winners in the table's columns

    if result.reload:
        is_delete = pc.equal(win.column(OP), "D")
        inserts = pc.indices_nonzero(pc.invert(is_delete))
        tombstoned = pc.indices_nonzero(is_delete)
        written = inserts
        result.inserted = len(inserts)
        action, data = "replace", rows.take(inserts)
    elif win.num_rows == 0:
        written = tombstoned = pa.array([], pa.int64())
        action, data = "none", rows
    else:
        marked = rows.append_column(WIN, pa.array(range(rows.num_rows), pa.int64()))
        marked = marked.append_column(HAS_TOMBSTONE, has_tombstone(win, tombstones, keys))
        location = work.write("winners", marked)
        view = f"lake_winners_{uuid.uuid4().hex[:12]}"
        from pyspark.sql.types import BooleanType, LongType

        _typed_source(spark, location, ident, extra={WIN: LongType(), HAS_TOMBSTONE: BooleanType()}).createOrReplaceTempView(view)
        started = time.perf_counter()
        try:
            outcome = classify(spark, view, ident, keys)
        finally:
            spark.catalog.dropTempView(view)
        log(f"{table.identifier}: {win.num_rows} winners classified against the table in {time.perf_counter() - started:.1f}s")
        result.inserted = outcome.counts[INSERT]
        result.updated = outcome.counts[UPDATE]
        result.deleted = outcome.counts[DELETE]
        result.stale_skipped = outcome.counts[STALE]
        written = pa.array(outcome.rewritten, pa.int64())
        tombstoned = pa.array(outcome.tombstoned, pa.int64())
        changes = result.inserted + result.updated + result.deleted
        action, data = ("merge", location) if changes else ("none", rows)

    update_tombstones(
        catalog, table, batch_id, old=tombstones, deleted=win.take(tombstoned),
        rewritten_keys=win.take(written).select(list(keys)), reload=result.reload, now=now,
    )
    return action, data


def _commit(spark, catalog, table: TableConfig, ident: str, action: str, data, summary: dict[str, str], work: Scratch) -> None:
    from pyspark.sql import functions as F

    if action == "none":
        _empty_commit(catalog, table.identifier, summary)
        return
    if action == "merge":
        location = data
    else:
        location = work.write(action, data)
    source = _typed_source(spark, location, ident)
    with commit_properties(spark, summary):
        if action == "merge":
            view = f"lake_source_{uuid.uuid4().hex[:12]}"
            source.createOrReplaceTempView(view)
            try:
                spark.sql(merge_sql(ident, view, table.primary_key))
            finally:
                spark.catalog.dropTempView(view)
        elif action == "append":
            source.writeTo(ident).append()
        elif action == "replace":  # a reload: the new full load is the whole table
            source.writeTo(ident).overwrite(F.lit(True))
        else:
            raise ValueError(f"unknown merge action {action!r}")


def job_failpoint(name: str) -> None:
    """Crash the job on purpose where LAKE_FAILPOINT is `spark:<name>` (crash-recovery tests)."""
    env_failpoint(f"spark:{name}")


def run_merge(spark, spec: dict, *, log: Log = lambda msg: None, failpoint: Callable[[str], None] = job_failpoint) -> dict:
    """Run one spec on an open Spark session; returns the MergeResult as JSON."""
    if spec.get("version") != SPEC_VERSION:
        raise MergeJobError(f"spec version {spec.get('version')!r} is not {SPEC_VERSION}; deploy the job script with the package")
    table = TableConfig.from_json_dict(spec["table"])
    catalog = CatalogSettings.from_json_dict(spec["catalog"]).load()
    now = dt.datetime.fromisoformat(spec["now"])
    started = time.perf_counter()
    files, failed = read_landed(spec)
    batch, unreadable = read_batch(table, files)
    failed.update(unreadable)
    for reason in failed.values():
        log(f"{table.identifier}: file left out of batch {spec['batch_id']}: {reason}")
    log(f"{table.identifier}: batch {spec['batch_id']}: {batch.changes.num_rows} changes from {len(batch.files)} files")
    result = apply_batch(spark, catalog, batch, spec["batch_id"], now=now, scratch=spec["scratch"], log=log, failpoint=failpoint)
    result.failed_files = failed
    result.per_file = batch.per_file
    result.seconds = time.perf_counter() - started
    return result_to_json(result)


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


def session_launcher(spark, *, log: Log = lambda msg: None) -> Callable[[dict], dict]:
    """A launcher that runs specs on an open session in this process (tests, notebooks, the bench)."""

    def launch(spec: dict) -> dict:
        started_at = time.time()
        try:
            doc = {"ok": True, "result": run_merge(spark, spec, log=log)}
        except Exception as exc:
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

        spark = SparkSession.builder.appName(f"lake-merge {spec['table']['source']}.{spec['table']['name']}").getOrCreate()
        session_ready_at = time.time()
        log(f"Spark {spark.version} session ready in {session_ready_at - started_at:.1f}s")
        doc = {"ok": False, "error": {"type": "Interrupted", "message": "the job was interrupted before it finished"}}
        try:
            result = run_merge(spark, spec, log=log)
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
