"""The merge at scale: 100 to 1M changes into 1M, 5M and 20M-row tables, copy-on-write against
merge-on-read, our in-process engine against local Spark and delta-rs.

    python bench/scale.py                  # the default grid (~15-20 min on 2 cores)
    python bench/scale.py --quick          # 100k rows, a smoke run (< 1 min once the delta venv exists; spark-cow only if asked)
    python bench/scale.py --sizes 5M --changes 100k --dist random --variants cow,mor,delta --json out.json

The table is a plain operational one (`id` long primary key, customer_id, status, amount
decimal(12,2), updated_at, a ~30-character note), unpartitioned, landed as DMS full-load files and
loaded once per size by the in-process engine. Each change set is one DMS CDC file: 70% updates,
15% deletes, 15% inserts of new keys; `random` spreads the updated and deleted keys over the whole
key range, `recent` takes them from the newest 1% of keys (or the newest as many keys as change, when
that is more). Every key changes once per file, so file order alone orders the changes.

Variants, each in its own subprocess on its own copy of the same table (same data files):

- cow / mor / auto: `InProcessEngine` with the table's `write` = copy_on_write / merge_on_read / auto.
- spark-cow / spark-mor: `SparkEngine` (plain spark-submit, local[*]) with write.merge.mode following `write`.
- delta: delta-rs (`deltalake`, in its own scratch venv, never a dependency of the project): the same
  full load written by deltalake, then one MERGE on id of the same CDC file (Op = 'D' deletes,
  otherwise update all / insert all, the last change per key winning).

Per run: the merge's time and the peak resident memory of the process tree (sampled every 50 ms, as
bench/merge.py does), data files rewritten, delete files written, bytes written, files before/after,
then, in the same process and timed apart, a full scan of the table (pyiceberg `scan().to_arrow()`,
deltalake `to_pyarrow_table()`). Every final table must hold exactly the rows computed from the
generator (row count and an order-independent content hash); the Iceberg variants must also agree
in every lake column. A disagreement is printed loudly and fails the run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
BATCH_ID = "bench-scale-changes"
SOURCE, SCHEMA, TABLE = "shop", "public", "orders"
COLUMNS: list[tuple[str, str]] = [
    ("id", "long"),
    ("customer_id", "long"),
    ("status", "string"),
    ("amount", "decimal(12,2)"),
    ("updated_at", "timestamp"),
    ("note", "string"),
]
DATA_COLUMNS = [c for c, _ in COLUMNS]
LOAD_FILE_ROWS = 5_000_000  # the full load is split into LOAD files of at most this many rows, as DMS does
CREATED_FROM = dt.datetime(2024, 1, 1)
CHANGES_AT = dt.datetime(2026, 11, 2, 6, 0, 0)
STATUSES = ["new", "paid", "packed", "shipped", "delivered", "returned", "cancelled", "refunded"]
WORDS = ["gift", "wrap", "fragile", "express", "leave", "at", "door", "call", "before", "delivery", "side", "gate",
         "office", "hours", "only", "signature", "needed", "no", "plastic", "recycled", "box", "ring", "bell", "twice",
         "back", "porch", "reception", "floor", "unit", "left", "right", "corner"]

IN_PROCESS = {"cow": "copy_on_write", "mor": "merge_on_read", "auto": "auto"}
SPARK = {"spark-cow": "copy_on_write", "spark-mor": "merge_on_read"}
VARIANTS = (*IN_PROCESS, *SPARK, "delta")
DISTS = ("random", "recent")

DELTA_VERSION = "1.6.6"
DELTA_VENV = Path(os.environ.get("BENCH_DELTA_VENV", "/tmp/lake-bench-delta"))

# The default grid, chosen to finish in under 20 minutes on 2 cores: the in-process engine everywhere
# (changes up to 10% of the table, 1M changes only into 20M), Spark and delta-rs where they are compared.
DEFAULT_SIZES = (1_000_000, 5_000_000, 20_000_000)
DEFAULT_CHANGES = (100, 10_000, 100_000, 1_000_000)
DEFAULT_SKIP = {(20_000_000, 10_000, "random"), (20_000_000, 10_000, "recent"), (20_000_000, 1_000_000, "recent")}
SPARK_CASES = {"spark-mor": {(5_000_000, 100, "random"), (5_000_000, 100_000, "random")},
               "spark-cow": {(5_000_000, 100_000, "random")}}  # spark-cow takes ~100 s per 5M merge
DELTA_CASES = {(5_000_000, c, d) for c in (100, 100_000) for d in DISTS}
FLOOR_MAX_ROWS = 5_000_000  # the pyarrow floor re-does cow's rewrite: skipped above this size
QUICK_ROWS = 100_000


def parse_count(s: str) -> int:
    s = s.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(s[-1:], 1)
    return int(float(s[:-1] if scale > 1 else s) * scale)


def label(n: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n:,}"


# --- data: the table and its changes, generated with pyarrow.compute (no Python loops) -----------


def _u(n: int, seed: int, stream: int):
    import pyarrow.compute as pc

    return pc.random(n, initializer=seed * 1009 + stream)


def _ints(n: int, seed: int, stream: int, lo: int, hi: int):
    """Uniform integers in [lo, hi)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.add(pc.cast(pc.floor(pc.multiply(_u(n, seed, stream), hi - lo)), pa.int64()), lo)


def _pick(values: list[str], n: int, seed: int, stream: int):
    import pyarrow as pa

    return pa.array(values, pa.string()).take(_ints(n, seed, stream, 0, len(values)))


def _ids(first: int, n: int):
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), n), start=first - 1) if n else pa.array([], pa.int64())


def _amount(cents):
    """Cents as decimal(12,2), exactly (the unscaled integer reinterpreted at scale 2)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(cents, pa.ChunkedArray):
        cents = cents.combine_chunks()
    return pc.cast(cents, pa.decimal128(19, 0)).view(pa.decimal128(19, 2)).cast(pa.decimal128(12, 2))


def _timestamps(base: dt.datetime, seconds):
    import pyarrow as pa
    import pyarrow.compute as pc

    start_us = int((base - dt.datetime(1970, 1, 1)) / dt.timedelta(microseconds=1))
    return pc.cast(pc.add(pc.multiply(seconds, 1_000_000), start_us), pa.timestamp("us"))


def orders(first_id: int, n: int, seed: int):
    """n orders with ids first_id.. (consecutive); updated_at grows with the id, as in an OLTP table."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = _ids(first_id, n)
    note = pc.binary_join_element_wise(
        _pick(WORDS, n, seed, 4), _pick(WORDS, n, seed, 5), _pick(WORDS, n, seed, 6), _pick(WORDS, n, seed, 7),
        pc.cast(_ints(n, seed, 8, 100_000, 1_000_000), pa.string()), " ")
    return pa.table({
        "id": ids,
        "customer_id": _ints(n, seed, 1, 1, 1_000_001),
        "status": _pick(STATUSES, n, seed, 2),
        "amount": _amount(_ints(n, seed, 3, 100, 10_000_000)),
        "updated_at": _timestamps(CREATED_FROM, pc.add(pc.multiply(ids, 3), _ints(n, seed, 9, 0, 3))),
        "note": note,
    })


def base_table(rows: int):
    return orders(1, rows, seed=1)


def plan(changes: int) -> tuple[int, int, int]:
    updates, deletes = round(changes * 0.70), round(changes * 0.15)
    return updates, deletes, changes - updates - deletes


def changed_keys(rows: int, k: int, dist: str, seed: int):
    """k distinct existing keys: over the whole range (random) or among the newest ones (recent)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if k == 0:
        return pa.array([], pa.int64())
    if dist == "recent":
        window = max(rows // 100, k)
        order = pc.sort_indices(pa.table({"r": _u(window, seed, 20)}), sort_keys=[("r", "ascending")])
        return pc.add(pc.cast(order.slice(0, k), pa.int64()), rows - window + 1)
    draws, attempt = k + k // 10 + 100, 0
    while True:  # uniform draws; duplicates (a few % at most) are dropped, first occurrences kept
        keys = pc.unique(_ints(min(draws, 50 * rows), seed, 21 + attempt, 1, rows + 1))
        if len(keys) >= k:
            return keys.slice(0, k)
        draws, attempt = draws * 2, attempt + 1


def change_set(base, changes: int, dist: str, seed: int = 2):
    """The CDC rows as an Arrow table: "Op" then COLUMNS, U/D/I interleaved in commit order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = base.num_rows
    n_upd, n_del, n_ins = plan(changes)
    keys = changed_keys(rows, n_upd + n_del, dist, seed)
    before = base.take(pc.subtract(keys, 1))  # ids are 1..rows, in order
    updated, deleted = before.slice(0, n_upd), before.slice(n_upd)
    n = n_upd
    updated = updated.set_column(2, "status", _pick(STATUSES, n, seed, 30))
    cents = pc.add(pc.cast(pc.multiply(updated.column("amount"), 100), pa.int64()), _ints(n, seed, 31, -500, 500))
    updated = updated.set_column(3, "amount", _amount(pc.max_element_wise(cents, 1)))
    updated = updated.set_column(4, "updated_at", _timestamps(CHANGES_AT, _ints(n, seed, 32, 0, 3600)))
    inserted = orders(rows + 1, n_ins, seed)
    inserted = inserted.set_column(4, "updated_at", _timestamps(CHANGES_AT, _ints(n_ins, seed, 33, 0, 3600)))
    out = pa.concat_tables([updated, deleted, inserted])
    ops = pa.concat_arrays([pa.repeat(pa.scalar(op), m) for op, m in (("U", n_upd), ("D", n_del), ("I", n_ins))])
    out = out.add_column(0, "Op", ops.cast(pa.string()))
    shuffle = pc.sort_indices(pa.table({"r": _u(out.num_rows, seed, 34)}), sort_keys=[("r", "ascending")])
    return out.take(shuffle)


def expected_sum(base, base_sum: list[int], changes) -> list[int]:
    """Row count and content hash of the table after the change set, computed from the generator
    alone: the hash is a sum over rows, so the base table's sum minus the rows every update and
    delete replaces plus every inserted or updated row's after-image."""
    import pyarrow.compute as pc

    is_ud = pc.is_in(changes.column("Op"), value_set=pa_strings(["U", "D"]))
    replaced = base.take(pc.subtract(changes.filter(is_ud).column("id"), 1))
    upserts = changes.filter(pc.not_equal(changes.column("Op"), "D")).drop_columns(["Op"]).cast(base.schema)
    gone, new = content_sum(replaced, DATA_COLUMNS), content_sum(upserts, DATA_COLUMNS)
    return [base_sum[0] - gone[0] + new[0], base_sum[1] - gone[1] + new[1]]


def pa_strings(values: list[str]):
    import pyarrow as pa

    return pa.array(values, pa.string())


def table_config(write: str = "auto", engine: str = "inprocess"):
    """The registry entry, built in code as tests/spark/conftest.py `make_table` does."""
    from lake_assets.core.registry import ColumnSpec, CsvOptions, TableConfig

    return TableConfig(
        source=SOURCE, name=TABLE, schema=SCHEMA, source_table=TABLE, primary_key=("id",), sequence_by=None,
        columns=tuple(ColumnSpec(name=c, type=t) for c, t in COLUMNS), partition_by=(), pii=(), format="parquet",
        csv=CsvOptions(), mode="current", engine=engine, write=write, refresh="on_arrival", tombstone_retention_days=7,
        quarantine_max_rate=0.01, owners=(), description=None, config_file="<bench/scale.py>",
    )


def table_folder(landing: Path) -> Path:
    from demo.dms_writer import table_dir

    return table_dir(landing, SOURCE, SCHEMA, TABLE)


def write_full_load(landing: Path, base) -> list[Path]:
    from demo.dms_writer import load_file_name, write_dms_table

    folder = table_folder(landing)
    return [write_dms_table(folder / load_file_name(n), base.slice(start, LOAD_FILE_ROWS), COLUMNS, cdc=False)
            for n, start in enumerate(range(0, base.num_rows, LOAD_FILE_ROWS), 1)]


def write_cdc(folder: Path, changes) -> Path:
    from demo.dms_writer import cdc_file_name, write_dms_table

    return write_dms_table(folder / cdc_file_name(CHANGES_AT), changes, COLUMNS, cdc=True)


def normalized(t):
    """Columns every engine reads back alike: timestamps as microseconds, strings as `string`."""
    import pyarrow as pa

    cols = []
    for name in t.column_names:
        c = t.column(name)
        if pa.types.is_timestamp(c.type):
            c = c.cast(pa.timestamp("us", tz=c.type.tz)).cast(pa.int64())
        elif pa.types.is_large_string(c.type) or pa.types.is_string_view(c.type):
            c = c.cast(pa.string())
        cols.append(c)
    return pa.table(cols, names=t.column_names)


def content_sum(t, columns: list[str] | None = None) -> list[int]:
    """bench/merge.py's checksum (row count, order-independent DuckDB hash of every row) of an Arrow table."""
    from bench.merge import checksum

    return list(checksum(None, normalized(t.select(columns) if columns else t), columns))


def content_sums(t) -> tuple[list[int], list[int]]:
    """content_sum over the data columns and over every column, in one pass (big tables)."""
    import duckdb

    con = duckdb.connect()
    con.register("t", normalized(t))
    q = lambda cols: "sum(hash(" + ", ".join('"' + c + '"' for c in cols) + ")::HUGEINT)"  # noqa: E731
    n, data, every = con.execute(f"SELECT count(*), {q(DATA_COLUMNS)}, {q(t.column_names)} FROM t").fetchone()
    con.close()
    return [int(n), int(data or 0)], [int(n), int(every or 0)]


# --- workers: one variant, one merge, then one scan, in this (sub)process -------------------------


def phase(name: str) -> None:
    """Tell the driver that the merge is over: memory from here on is the scan's."""
    print(f"PHASE {name}", flush=True)


def _snapshot_stats(tbl) -> dict:
    s = tbl.current_snapshot()
    summary = s.summary.additional_properties if s is not None else {}
    return {"snapshot": s.snapshot_id if s else None, "data_files": int(summary.get("total-data-files", 0)),
            "delete_files": int(summary.get("total-delete-files", 0))}


def _written_since(tbl, snapshot_id: int | None) -> dict:
    """What the snapshots after `snapshot_id` did (Spark may commit more than one)."""
    totals = {"rewritten": 0, "data_files_added": 0, "delete_files_added": 0, "bytes_written": 0}
    s = tbl.current_snapshot()
    while s is not None and s.snapshot_id != snapshot_id:
        p = s.summary.additional_properties
        totals["rewritten"] += int(p.get("deleted-data-files", 0))
        totals["data_files_added"] += int(p.get("added-data-files", 0))
        totals["delete_files_added"] += int(p.get("added-delete-files", 0))
        totals["bytes_written"] += int(p.get("added-files-size", 0))
        s = tbl.snapshot_by_id(s.parent_snapshot_id) if s.parent_snapshot_id is not None else None
    return totals


def work_load(home: Path) -> dict:
    """The full load, once per size: the in-process engine writes the table every variant starts from,
    one batch per LOAD file (as files arriving one by one are merged), so memory follows a file."""
    from bench.merge import catalog_for, landed_files
    from lake_assets.core.cdc.inprocess import InProcessEngine

    catalog = catalog_for(home)
    table = table_config()
    started = time.perf_counter()
    inserted = 0
    for i, f in enumerate(landed_files(home / "landing", table, cdc=False), 1):
        inserted += InProcessEngine().merge(catalog, table, [f], f"bench-full-load-{i}", now=NOW).inserted
    took = time.perf_counter() - started
    return {"merge": took, "inserted": inserted} | _snapshot_stats(catalog.load_table(table.identifier))


def work_iceberg(variant: str, home: Path, floor: bool, profile: str | None = None) -> dict:
    from bench.merge import catalog_for, landed_files
    from lake_assets.core.cdc.iceberg import ensure_write_properties

    catalog = catalog_for(home)
    spark = variant in SPARK
    table = table_config(write=SPARK.get(variant) or IN_PROCESS[variant], engine="spark" if spark else "inprocess")
    tbl = ensure_write_properties(catalog.load_table(table.identifier), table)  # metadata only, before the clock
    before = _snapshot_stats(tbl)
    before_files = {t.file.file_path: t.file for t in tbl.scan().plan_files()}
    files = landed_files(home / "landing", table, cdc=True)
    out: dict = {}
    started = time.perf_counter()
    if spark:
        from lake_assets.core.spark.engine import SparkEngine
        from resources.spark import LocalSpark, plain_launcher

        local = LocalSpark(workdir=home / "spark-jobs", master="local[*]", driver_memory=os.environ.get("BENCH_SPARK_MEMORY", "4g"))
        engine = SparkEngine(plain_launcher(local), landing=str(home / "landing"), scratch=str(home / "spark-scratch"))
        r = engine.merge(catalog, table, files, BATCH_ID, now=NOW)
        t = engine.last_report["timings"]
        out |= {"start": t["session_ready_at"] - t["launched_at"], "merge": t["finished_at"] - t["session_ready_at"],
                "total": t["exited_at"] - t["launched_at"]}
    else:
        from lake_assets.core.cdc.inprocess import InProcessEngine

        if profile:  # the merge alone, under cProfile (slower than unprofiled)
            import cProfile

            with cProfile.Profile() as prof:
                r = InProcessEngine().merge(catalog, table, files, BATCH_ID, now=NOW)
            prof.dump_stats(profile)
        else:
            r = InProcessEngine().merge(catalog, table, files, BATCH_ID, now=NOW)
        out["merge"] = out["total"] = time.perf_counter() - started
    phase("scan")
    tbl = catalog.load_table(table.identifier)
    after = _snapshot_stats(tbl)
    out |= {"counts": [r.inserted, r.updated, r.deleted], "files_read": r.files_read,
            "files_before": before["data_files"] + before["delete_files"], "files_after": after["data_files"] + after["delete_files"],
            "data_files_after": after["data_files"], "delete_files_after": after["delete_files"]}
    out |= _written_since(tbl, before["snapshot"])
    started = time.perf_counter()
    data = tbl.scan().to_arrow()
    out["scan"] = time.perf_counter() - started
    out["sum_data"], out["sum_all"] = content_sums(data)
    del data
    if floor and out["rewritten"]:
        after_paths = {t.file.file_path for t in tbl.scan().plan_files()}
        out["floor"] = cow_floor(tbl, [f for p, f in before_files.items() if p not in after_paths])
    return out


def cow_floor(tbl, data_files) -> dict:
    """pyarrow alone: read the files copy-on-write rewrote and write them again with zstd (to memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    started = time.perf_counter()
    written = 0
    for f in data_files:
        with tbl.io.new_input(f.file_path).open() as stream:
            t = pq.read_table(stream)
        sink = pa.BufferOutputStream()
        pq.write_table(t, sink, compression="zstd")
        written += sink.getvalue().size
        del t
    return {"seconds": time.perf_counter() - started, "files": len(data_files), "bytes": written}


def work_delta_load(home: Path, landing: Path) -> dict:
    """The same full load, written by deltalake itself (runs in the delta venv)."""
    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    files = sorted(table_folder(landing).glob("LOAD*.parquet"))
    started = time.perf_counter()
    for i, f in enumerate(files):
        write_deltalake(str(home), pq.read_table(f), mode="overwrite" if i == 0 else "append")
    from deltalake import DeltaTable

    return {"merge": time.perf_counter() - started, "files": len(DeltaTable(str(home)).file_uris())}


def work_delta(home: Path, cdc_file: Path, dump: Path) -> dict:
    """delta-rs MERGE of the CDC file on id: the last change per key wins; D deletes, else update/insert all."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    dtable = DeltaTable(str(home))

    def files() -> dict[str, int]:
        adds = dtable.get_add_actions(flatten=True)
        adds = pa.table(adds) if not isinstance(adds, pa.Table) else adds
        return dict(zip(adds.column("path").to_pylist(), adds.column("size_bytes").to_pylist()))

    before = files()
    started = time.perf_counter()
    src = pq.read_table(cdc_file)
    # The winner per key: the last row of the file for that id (what our engine's positions decide).
    src = src.append_column("__row", pa.array(range(src.num_rows), pa.int64()))
    last = src.group_by("id").aggregate([("__row", "max")]).column("__row_max")
    src = src.take(last.take(pc.sort_indices(last))).drop_columns(["__row"])
    metrics = (
        dtable.merge(src, predicate="t.id = s.id", source_alias="s", target_alias="t")
        .when_matched_delete(predicate="s.Op = 'D'")
        .when_matched_update_all(except_cols=["Op"])
        .when_not_matched_insert_all(predicate="s.Op != 'D'", except_cols=["Op"])
        .execute()
    )
    took = time.perf_counter() - started
    phase("scan")
    dtable = DeltaTable(str(home))
    after = files()
    added = {p: s for p, s in after.items() if p not in before}
    out = {"merge": took, "total": took, "metrics": metrics, "counts": [metrics.get("num_target_rows_inserted"),
           metrics.get("num_target_rows_updated"), metrics.get("num_target_rows_deleted")],
           "files_before": len(before), "files_after": len(after), "data_files_after": len(after), "delete_files_after": 0,
           "rewritten": len([p for p in before if p not in after]), "data_files_added": len(added),
           "delete_files_added": 0, "bytes_written": sum(added.values())}
    started = time.perf_counter()
    data = dtable.to_pyarrow_table()
    out["scan"] = time.perf_counter() - started
    pq.write_table(data, dump)  # checksummed by the driver, which has DuckDB
    return out


# --- the driver ------------------------------------------------------------------------------


def run_worker(args: list[str], python: str = sys.executable, script: Path = Path(__file__)) -> dict:
    """One worker subprocess (`script --worker args`); peak RSS of its process tree while it merges,
    and apart while it scans (after it prints `PHASE scan`); its last stdout line is its JSON result."""
    from bench.merge import tree_rss

    cmd = [python, str(script.resolve()), "--worker", *args]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        peaks = {"merge": 0, "scan": 0}
        current = ["merge"]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                rss = tree_rss(proc.pid)
                peaks[current[0]] = max(peaks[current[0]], rss)
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("PHASE "):
                current[0] = line.split()[1]
            else:
                lines.append(line)
        proc.wait()
        wall = time.perf_counter() - started
        stop.set()
        sampler.join()
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"worker {args[0]} failed ({proc.returncode}):\n{err.read().decode(errors='replace')[-4000:]}")
    doc = json.loads(lines[-1])
    return doc | {"wall": wall, "peak_rss": peaks["merge"], "scan_peak_rss": peaks["scan"]}


def clone(src: Path, dst: Path) -> None:
    """A copy of a lake: Parquet files (never rewritten in place) hard-linked, everything else copied
    (the SQLite catalog, metadata). Paths inside stay valid because dst is where src was built."""
    shutil.rmtree(dst, ignore_errors=True)

    def copy(s: str, d: str) -> None:
        if s.endswith(".parquet"):
            os.link(s, d)
        else:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=copy)


def delta_python() -> str:
    """The scratch venv with deltalake; created on first use (the project never depends on it)."""
    py = DELTA_VENV / "bin" / "python"
    check = [str(py), "-c", f"import deltalake, pyarrow; assert deltalake.__version__ == {DELTA_VERSION!r}"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(py)
    print(f"  creating the delta-rs venv: {sys.executable} -m venv {DELTA_VENV}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(DELTA_VENV)], check=True)
    print(f"  {py} -m pip install -q deltalake=={DELTA_VERSION} pyarrow", flush=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", f"deltalake=={DELTA_VERSION}", "pyarrow"], check=True)
    subprocess.run(check, check=True)
    return str(py)


def applies(variant: str, rows: int, changes: int, dist: str, quick: bool, everywhere: bool) -> bool:
    if variant in IN_PROCESS or everywhere:
        return True
    if quick:  # one case per external engine in the smoke run
        return (changes, dist) == (plan_quick_changes()[-1], "random")
    return (rows, changes, dist) in (SPARK_CASES[variant] if variant in SPARK else DELTA_CASES)


def plan_quick_changes() -> list[int]:
    return [100, 10_000]


def changes_for(rows: int, wanted: list[int]) -> list[int]:
    """Changes up to 10% of the table; 1M changes only into tables of 20M rows and more."""
    return [c for c in wanted if c <= rows // 10 and (c < 1_000_000 or rows >= 20_000_000)]


def run_size(rows: int, cases: list[tuple[int, str]], variants: list[str], root: Path, args, results: list, problems: list) -> None:
    import pyarrow.parquet as pq

    print(f"\n== {rows:,} rows ({root})", flush=True)
    lake, pristine = root / "lake", root / f"pristine-{rows}"
    t = time.perf_counter()
    base = base_table(rows)
    shutil.rmtree(lake, ignore_errors=True)
    write_full_load(lake / "landing", base)
    print(f"  generated {rows:,} rows + the full load in {time.perf_counter() - t:.1f}s", flush=True)
    load = run_worker(["load", "--home", str(lake)])
    print(f"  full load by the in-process engine: {load['merge']:.1f}s, peak {mib(load['peak_rss'])}, "
          f"{load['data_files']} data files", flush=True)
    os.rename(lake, pristine)
    base_sum = content_sum(base, DATA_COLUMNS)
    delta_pristine = root / f"delta-pristine-{rows}"
    if any(v == "delta" and applies(v, rows, c, d, args.quick, args.everywhere) for c, d in cases for v in variants):
        py = delta_python()
        dl = run_worker(["delta-load", "--home", str(delta_pristine), "--landing", str(pristine / "landing")], python=py)
        print(f"  full load by deltalake: {dl['merge']:.1f}s, {dl['files']} data files", flush=True)
    cdc_dir = root / "cdc"
    try:
        for changes, dist in cases:
            todo = [v for v in variants if applies(v, rows, changes, dist, args.quick, args.everywhere)]
            if not todo:
                continue
            t = time.perf_counter()
            cs = change_set(base, changes, dist)
            shutil.rmtree(cdc_dir, ignore_errors=True)
            cdc_file = write_cdc(cdc_dir, cs)
            expected = expected_sum(base, base_sum, cs)
            del cs
            print(f"  -- {label(changes)} changes, {dist} (generated in {time.perf_counter() - t:.1f}s; expect {expected[0]:,} rows)",
                  flush=True)
            sums_all = {}
            for v in todo:
                if v == "delta":
                    run = root / "delta-run"
                    clone(delta_pristine, run)
                    dump = root / "delta-scan.parquet"
                    r = run_worker(["delta", "--home", str(run), "--cdc", str(cdc_file), "--dump", str(dump)], python=delta_python())
                    r["sum_data"] = content_sum(pq.read_table(dump), DATA_COLUMNS)
                    dump.unlink()
                    shutil.rmtree(run, ignore_errors=True)
                else:
                    clone(pristine, lake)
                    target = table_folder(lake / "landing") / cdc_file.name
                    os.link(cdc_file, target)
                    r = run_worker([v, "--home", str(lake)] + (["--floor"] if args.floor and v == "cow" and rows <= FLOOR_MAX_ROWS else [])
                                   + (["--profile-to", str(Path(args.profile) / f"{rows}-{changes}-{dist}-{v}.prof")]
                                      if args.profile and v in IN_PROCESS else []))
                    sums_all[v] = tuple(r["sum_all"])
                ok = tuple(r["sum_data"]) == tuple(expected)
                r |= {"rows": rows, "changes": changes, "dist": dist, "variant": v, "expected": expected, "correct": ok}
                results.append(r)
                start = f" (start {r['start']:.1f}s)" if "start" in r else ""
                print(f"     {v:9} merge {r['merge']:6.2f}s{start}  peak {mib(r['peak_rss'])}  rewrote {r['rewritten']}  "
                      f"+{r['delete_files_added']} delete files  {mib(r['bytes_written'])} written  files {r['files_before']}->{r['files_after']}  "
                      f"scan {r['scan']:.2f}s  rows {r['sum_data'][0]:,}  {'ok' if ok else 'MISMATCH'}", flush=True)
                if not ok:
                    problems.append(f"{label(rows)} x {label(changes)} {dist} {v}: content {r['sum_data']} != expected {expected}")
                    print(f"     !!! {v}: the final table differs from the expected table: {r['sum_data']} vs {expected}", flush=True)
            if len(set(sums_all.values())) > 1:
                problems.append(f"{label(rows)} x {label(changes)} {dist}: Iceberg variants differ in lake columns: {sums_all}")
                print(f"     !!! the Iceberg variants' tables differ (all columns): {sums_all}", flush=True)
    finally:
        if not args.keep:
            for d in (lake, pristine, delta_pristine, cdc_dir):
                shutil.rmtree(d, ignore_errors=True)


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def report(results: list[dict]) -> str:
    out = []
    for rows in sorted({r["rows"] for r in results}):
        out += [f"\n### {rows:,} rows\n",
                "| changes | dist | variant | merge | peak RSS | rewritten | delete files | written | files before → after | scan | scan peak | rows | check |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in [r for r in results if r["rows"] == rows]:
            merge = f"{r['merge']:.2f} s" + (f" (+{r['start']:.1f} s start)" if "start" in r else "")
            out.append(f"| {label(r['changes'])} | {r['dist']} | {r['variant']} | {merge} | {mib(r['peak_rss'])} | {r['rewritten']} | "
                       f"{r['delete_files_added']} | {mib(r['bytes_written'])} | {r['files_before']} → {r['files_after']} | "
                       f"{r['scan']:.2f} s | {mib(r['scan_peak_rss'])} | {r['sum_data'][0]:,} | {'ok' if r['correct'] else '**MISMATCH**'} |")
    return "\n".join(out)


def ratios(results: list[dict]) -> str:
    by = {(r["rows"], r["changes"], r["dist"], r["variant"]): r for r in results}
    lines = ["\nRatios (merge time; > 1 means the second is faster):"]
    for (rows, ch, dist, v), r in sorted(by.items()):
        key = (rows, ch, dist)
        if v == "mor" and (*key, "cow") in by:
            c = by[(*key, "cow")]
            lines.append(f"  mor/cow      {label(rows):>4} x {label(ch):>4} {dist:6}: time {r['merge'] / c['merge']:.2f}  "
                         f"peak {r['peak_rss'] / c['peak_rss']:.2f}  scan {r['scan'] / c['scan']:.2f}")
    for (rows, ch, dist, v), r in sorted(by.items()):
        key = (rows, ch, dist)
        ours = [by[(*key, o)] for o in IN_PROCESS if (*key, o) in by]
        if not ours:
            continue
        best = min(ours, key=lambda o: o["merge"])
        if v == "delta":
            lines.append(f"  delta/ours   {label(rows):>4} x {label(ch):>4} {dist:6}: {r['merge'] / best['merge']:.2f}x "
                         f"(delta {r['merge']:.2f}s vs {best['variant']} {best['merge']:.2f}s)")
        if v in SPARK:
            mine = by.get((*key, v.removeprefix("spark-")))
            lines.append(f"  {v}/{v.removeprefix('spark-')} {label(rows):>4} x {label(ch):>4} {dist:6}: merge {r['merge'] / mine['merge']:.1f}x, "
                         f"incl. start {r['total'] / mine['merge']:.1f}x; vs our best ({best['variant']}) {r['merge'] / best['merge']:.1f}x"
                         if mine else f"  {v}: no in-process counterpart")
    floors = [r for r in results if r.get("floor")]
    if floors:
        lines.append("\npyarrow copy-on-write floor (read + zstd rewrite of the files cow rewrote, no merge logic):")
        for r in floors:
            f = r["floor"]
            lines.append(f"  {label(r['rows']):>4} x {label(r['changes']):>4} {r['dist']:6}: {f['files']} files in {f['seconds']:.2f}s "
                         f"(cow merge {r['merge']:.2f}s)")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    counts = lambda s: [parse_count(x) for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--sizes", type=counts, help="table sizes, e.g. 1M,5M,20M")
    p.add_argument("--changes", type=counts, help="changes per merge, e.g. 100,10k,100k,1M")
    p.add_argument("--dist", default=",".join(DISTS))
    p.add_argument("--variants", help=f"default {','.join(VARIANTS)} (--quick: all but spark-cow, to stay under a minute)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows, a smoke run of every variant")
    p.add_argument("--everywhere", action="store_true", help="run spark-* and delta at every size and change count")
    p.add_argument("--no-floor", dest="floor", action="store_false", help="skip the pyarrow copy-on-write floor")
    p.add_argument("--keep", action="store_true", help="keep the temporary lakes")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--profile", help="cProfile each in-process merge into this directory (<rows>-<changes>-<dist>-<variant>.prof)")
    p.add_argument("--profile-to", help=argparse.SUPPRESS)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--home", help=argparse.SUPPRESS)
    p.add_argument("--landing", help=argparse.SUPPRESS)
    p.add_argument("--cdc", help=argparse.SUPPRESS)
    p.add_argument("--dump", help=argparse.SUPPRESS)
    p.add_argument("--floor", action="store_true", dest="floor_worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        home = Path(args.home)
        if args.worker == "load":
            doc = work_load(home)
        elif args.worker == "delta-load":
            doc = work_delta_load(home, Path(args.landing))
        elif args.worker == "delta":
            doc = work_delta(home, Path(args.cdc), Path(args.dump))
        else:
            doc = work_iceberg(args.worker, home, args.floor_worker, args.profile_to)
        print(json.dumps(doc, default=str))
        return
    variants = [v for v in (args.variants or ",".join(v for v in VARIANTS if not (args.quick and v == "spark-cow"))).split(",") if v]
    dists = [d for d in args.dist.split(",") if d]
    if set(variants) - set(VARIANTS) or set(dists) - set(DISTS):
        raise SystemExit(f"use variants from {', '.join(VARIANTS)} and distributions from {', '.join(DISTS)}")
    sizes = args.sizes or ([QUICK_ROWS] if args.quick else list(DEFAULT_SIZES))
    wanted = args.changes or (plan_quick_changes() if args.quick else list(DEFAULT_CHANGES))
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    problems: list[str] = []
    try:
        for rows in sizes:
            cases = [(c, d) for c in changes_for(rows, wanted) for d in dists
                     if args.changes or args.quick or (rows, c, d) not in DEFAULT_SKIP]
            run_size(rows, cases, variants, root, args, results, problems)
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(report(results))
    print(ratios(results))
    print(f"\n(all in {time.perf_counter() - started:.0f}s, {os.cpu_count()} cores)")
    if problems:
        print("\n!!! CORRECTNESS MISMATCH !!!\n  " + "\n  ".join(problems))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
