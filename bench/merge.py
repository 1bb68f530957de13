"""Merge engines side by side: 10% changes (70% updates, 15% deletes, 15% inserts) into taxi-shaped
tables of 1.37M and 1M rows, by our in-process engine, local Spark and pyiceberg's `Table.upsert`.

    python bench/merge.py            # both cases, all three engines (a few minutes on 2 cores)
    python bench/merge.py --quick    # 100k rows, for a smoke run
    python bench/merge.py --rows 500000 --engines inprocess,spark

Every engine merges the same CDC file into its own identical copy of the table (the full load is
written once per copy by the in-process engine, so all start from the same data files), in its own
subprocess; peak memory is that process tree's resident set, sampled every 50 ms (for Spark: the
job's JVM and Python driver). Spark's time is split into start (spark-submit until the session is
ready) and merge. The tables must end identical: row count and content checksum, also against the
expected table computed independently from the generator.
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
BATCH_ID = "bench-changes"
ENGINES = ("inprocess", "spark", "upsert")
DEFAULT_CASES = (1_370_000, 1_000_000)


def taxi_table(source: str):
    """The registry entry of bench/sources/taxi.yaml, under another source name (one copy per engine)."""
    from lake_assets.core.registry import load_source_file

    [t] = load_source_file(REPO / "bench" / "sources" / "taxi.yaml")
    return t.model_copy(update={"source": source})


def catalog_for(home: Path):
    from lake_assets.core.deployment import local_catalog

    return local_catalog(home)


def landed_files(landing: Path, table, cdc: bool) -> list:
    from lake_assets.core.cdc.batch import LandedInput
    from lake_assets.core.cdc.dms import parse_landing_key

    folder = landing / table.landing_prefix
    out = []
    for p in sorted(folder.rglob("*.parquet")):
        f = parse_landing_key(p.relative_to(landing).as_posix())
        if f.is_load != cdc:
            out.append(LandedInput(f, p.read_bytes()))
    return out


# --- workers: one engine, one merge, in this (sub)process ----------------------------------------


def work(engine: str, home: Path, source: str) -> dict:
    catalog = catalog_for(home)
    table = taxi_table(source)
    files = landed_files(home / "landing", table, cdc=True)
    started = time.perf_counter()
    if engine == "inprocess":
        from lake_assets.core.cdc.inprocess import InProcessEngine

        r = InProcessEngine().merge(catalog, table, files, BATCH_ID, now=NOW)
        return {"merge": time.perf_counter() - started, "counts": [r.inserted, r.updated, r.deleted]}
    if engine == "spark":
        from lake_assets.core.spark.engine import SparkEngine
        from resources.spark import LocalSpark, plain_launcher

        local = LocalSpark(workdir=home / "spark-jobs", master="local[*]", driver_memory=os.environ.get("BENCH_SPARK_MEMORY", "4g"))
        spark = SparkEngine(plain_launcher(local), landing=str(home / "landing"), scratch=str(home / "spark-scratch"))
        r = spark.merge(catalog, table, files, BATCH_ID, now=NOW)
        t = spark.last_report["timings"]
        return {"start": t["session_ready_at"] - t["launched_at"], "merge": t["finished_at"] - t["session_ready_at"],
                "total": t["exited_at"] - t["launched_at"], "counts": [r.inserted, r.updated, r.deleted]}
    if engine == "upsert":
        return upsert(catalog, table, files, started)
    raise SystemExit(f"unknown engine {engine}")


def upsert(catalog, table, files, started: float) -> dict:
    """pyiceberg's Table.upsert for inserts/updates plus Table.delete for deletes, on the same winners
    and lake columns our engines write (so the tables can be compared)."""
    import pyarrow.compute as pc
    from pyiceberg.expressions import In

    from lake_assets.core.cdc.batch import read_batch
    from lake_assets.core.cdc.dms import OP
    from lake_assets.core.cdc.iceberg import conform
    from lake_assets.core.cdc.pipeline import with_lake_columns
    from lake_assets.core.cdc.semantics import winners

    batch, _ = read_batch(table, files)
    win = winners(batch.changes, table.primary_key)
    tbl = catalog.load_table(table.identifier)
    rows = conform(with_lake_columns(win, BATCH_ID, NOW), tbl.schema().as_arrow())
    is_delete = pc.equal(win.column(OP), "D")
    deleted = win.filter(is_delete).column("trip_id").to_pylist()
    prepared = time.perf_counter()
    if deleted:
        tbl.delete(In("trip_id", deleted))
    res = tbl.upsert(rows.filter(pc.invert(is_delete)), join_cols=["trip_id"])
    done = time.perf_counter()
    return {"merge": done - started, "upsert_only": done - prepared,
            "counts": [res.rows_inserted, res.rows_updated, len(deleted)]}


# --- the driver ----------------------------------------------------------------------------------


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def run_worker(engine: str, home: Path, source: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", engine, "--home", str(home), "--source", source]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(proc.pid))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{engine} worker failed ({proc.returncode}):\n{err[-4000:]}")
    doc = json.loads(out.strip().splitlines()[-1])
    return doc | {"wall": wall, "peak_rss": peak}


def prepare(home: Path, rows: int, engines: list[str], fraction: float) -> dict[str, str]:
    """One landing copy per engine (same bytes), each loaded by the in-process engine."""
    from bench.taxi import write_taxi_changes, write_taxi_full_load
    from lake_assets.core.cdc.inprocess import InProcessEngine

    landing = home / "landing"
    generated = home / "generated"
    t = time.perf_counter()
    write_taxi_full_load(generated, rows=rows, source="gen")
    write_taxi_changes(generated, base_rows=rows, fraction=fraction, source="gen")
    print(f"  generated {rows:,} rows + {round(rows * fraction):,} changes in {time.perf_counter() - t:.1f}s", flush=True)
    catalog = catalog_for(home)
    sources = {}
    for engine in engines:
        source = f"taxi_{engine}"
        shutil.copytree(generated / "gen", landing / source)
        table = taxi_table(source)
        t = time.perf_counter()
        InProcessEngine().merge(catalog, table, landed_files(landing, table, cdc=False), "bench-full-load", now=NOW)
        print(f"  full load of the {engine} copy: {time.perf_counter() - t:.1f}s", flush=True)
        sources[engine] = source
    shutil.rmtree(generated)
    return sources


def checksum(catalog, identifier: str, columns: list[str] | None = None) -> tuple[int, int]:
    """(rows, order-independent hash of every row's values) with DuckDB."""
    import duckdb

    data = catalog.load_table(identifier).scan().to_arrow() if isinstance(identifier, str) else identifier
    cols = columns or data.column_names
    con = duckdb.connect()
    con.register("t", data.select(cols))
    # A position ends with the landing key, which names each copy's own source: compare without it.
    quoted = ", ".join("regexp_replace(\"_lake_seq\", '![^!]*$', '')" if c == "_lake_seq" else '"' + c + '"' for c in cols)
    row = con.execute(f"SELECT count(*), sum(hash({quoted})::HUGEINT) FROM t").fetchone()
    con.close()
    return int(row[0]), int(row[1] or 0)


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def run_case(rows: int, engines: list[str], fraction: float, keep: bool) -> dict:
    from bench.taxi import TAXI_COLUMNS, expected_taxi_table

    home = Path(tempfile.mkdtemp(prefix=f"bench-merge-{rows}-"))
    print(f"\n== {rows:,} rows, {fraction:.0%} changes ({home})", flush=True)
    try:
        sources = prepare(home, rows, engines, fraction)
        results = {}
        for engine in engines:
            r = run_worker(engine, home, sources[engine])
            results[engine] = r
            extra = f" (start {r['start']:.1f}s + merge {r['merge']:.1f}s)" if engine == "spark" else ""
            print(f"  {engine:9} {r['merge']:6.1f}s{extra}  peak {mib(r['peak_rss'])}  i/u/d {r['counts']}", flush=True)
        catalog = catalog_for(home)
        data_cols = [c for c, _ in TAXI_COLUMNS]
        expected = checksum(catalog, expected_taxi_table(rows, fraction=fraction), data_cols)
        sums = {e: checksum(catalog, taxi_table(sources[e]).identifier) for e in engines}
        data_sums = {e: checksum(catalog, taxi_table(sources[e]).identifier, data_cols) for e in engines}
        identical = len(set(sums.values())) == 1
        correct = all(v == expected for v in data_sums.values())
        print(f"  rows {sorted({v[0] for v in sums.values()})}; all columns identical across engines: {identical}; "
              f"equal to the expected table: {correct}", flush=True)
        if not (identical and correct):
            raise SystemExit(f"engines disagree: {sums} / data {data_sums} / expected {expected}")
        return {"rows": rows, "changes": round(rows * fraction), "results": results, "final_rows": expected[0]}
    finally:
        if keep:
            print(f"  kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def report(cases: list[dict], engines: list[str]) -> str:
    lines = ["| table | engine | merge | start (Spark) | merge ÷ ours | incl. start ÷ ours | peak RSS |",
             "|---|---|---|---|---|---|---|"]
    for c in cases:
        res = c["results"]
        ours = res.get("inprocess", {}).get("merge")
        for e in engines:
            r = res[e]
            start = r.get("start", 0.0)
            ratio = f"{r['merge'] / ours:.1f}×" if ours else "–"
            ratio_all = f"{(r['merge'] + start) / ours:.1f}×" if ours else "–"
            lines.append(f"| {c['rows']:,} rows, {c['changes']:,} changes | {e} | {r['merge']:.1f} s | "
                         f"{f'{start:.1f} s' if e == 'spark' else '–'} | {ratio} | {ratio_all} | {mib(r['peak_rss'])} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=lambda s: [int(x.replace("_", "")) for x in s.split(",")], help="table sizes, comma-separated")
    p.add_argument("--quick", action="store_true", help="one 100k-row case")
    p.add_argument("--fraction", type=float, default=0.10)
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--keep", action="store_true", help="keep the temporary lakes")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--home", help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(work(args.worker, Path(args.home), args.source)))
        return
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        raise SystemExit(f"unknown engines {sorted(unknown)}; use {', '.join(ENGINES)}")
    sizes = args.rows or ([100_000] if args.quick else list(DEFAULT_CASES))
    started = time.perf_counter()
    cases = [run_case(n, engines, args.fraction, args.keep) for n in sizes]
    print(f"\n{report(cases, engines)}\n\n(all in {time.perf_counter() - started:.0f}s, {os.cpu_count()} cores)")
    if args.json:
        Path(args.json).write_text(json.dumps(cases, indent=1))


if __name__ == "__main__":
    main()
