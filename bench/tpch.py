"""One TPC-H CDC round into `lineitem` (SF1: 6M rows), merged by the in-process engine: time and
peak memory, the issue's "TPC-H SF1 CDC round ≤ 1.5 GB peak".

    python bench/tpch.py [--sf 1] [--share 0.03] [--write auto]

The rows come from DuckDB's TPC-H generator (`dbgen`), run in a scratch venv with duckdb and
duckdb-extension-tpch ($BENCH_TPCH_VENV, default /tmp/lake-bench-tpch, created with pip on first
use; never a dependency of the project). They land as DMS files of a table keyed on
(l_orderkey, l_linenumber): LOAD files of at most 5M rows, merged as the full load one file per
batch, then one CDC file changing `--share` of the rows (70% updates of l_quantity and
l_comment, 15% deletes, 15% inserts of new orders), merged as one batch in a worker process whose
peak RSS is sampled every 50 ms. The table afterwards must hold exactly the generator's rows:
row count and the sum of l_quantity, computed by DuckDB from the generated files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
VENV = Path(os.environ.get("BENCH_TPCH_VENV", "/tmp/lake-bench-tpch"))
DUCKDB = "1.5.5"
SOURCE, SCHEMA, TABLE = "tpch", "public", "lineitem"
COLUMNS = [("l_orderkey", "long"), ("l_partkey", "long"), ("l_suppkey", "long"), ("l_linenumber", "int"),
           ("l_quantity", "decimal(15,2)"), ("l_extendedprice", "decimal(15,2)"), ("l_discount", "decimal(15,2)"),
           ("l_tax", "decimal(15,2)"), ("l_returnflag", "string"), ("l_linestatus", "string"), ("l_shipdate", "date"),
           ("l_commitdate", "date"), ("l_receiptdate", "date"), ("l_shipinstruct", "string"), ("l_shipmode", "string"),
           ("l_comment", "string")]
LOAD_FILE_ROWS = 5_000_000

# Run by the scratch venv's python: the rows, the change set and what the table must hold after.
GENERATE = """
import duckdb, duckdb_extensions, json, sys
out, sf, share = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
cols = json.loads(sys.argv[4])
con = duckdb.connect()
con.execute(f"SET extension_directory = '{out}/extensions'")
duckdb_extensions.import_extension("tpch", con=con)
con.execute("LOAD tpch")
con.execute(f"CALL dbgen(sf={sf})")
sel = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in cols)
con.execute(f"CREATE TABLE base AS SELECT {sel} FROM lineitem")
n = con.execute("SELECT count(*) FROM base").fetchone()[0]
k = int(n * share)
upd, dele = int(k * 0.70), int(k * 0.85) - int(k * 0.70)
con.execute(f"CREATE TABLE picked AS SELECT *, row_number() OVER () AS r FROM (SELECT * FROM base USING SAMPLE {upd + dele} ROWS (reservoir, 7))")
top = con.execute("SELECT max(l_orderkey) FROM base").fetchone()[0]
names = ", ".join(c for c, _ in cols)
con.execute(f\"\"\"CREATE TABLE changes AS
  SELECT 'U' AS Op, * EXCLUDE (r) REPLACE (l_quantity + 1 AS l_quantity, 'changed by the bench' AS l_comment) FROM picked WHERE r <= {upd}
  UNION ALL SELECT 'D' AS Op, * EXCLUDE (r) FROM picked WHERE r > {upd}
  UNION ALL SELECT 'I' AS Op, * REPLACE (l_orderkey + {top} AS l_orderkey) FROM (SELECT * FROM base LIMIT {k - upd - dele})\"\"\")
con.execute(f"COPY base TO '{out}/base.parquet' (FORMAT parquet)")
con.execute(f"COPY (SELECT Op, {names} FROM changes) TO '{out}/changes.parquet' (FORMAT parquet)")
rows, qty = con.execute(\"\"\"SELECT count(*), sum(l_quantity) FROM (
  SELECT l_quantity FROM base ANTI JOIN changes USING (l_orderkey, l_linenumber)
  UNION ALL SELECT l_quantity FROM changes WHERE Op <> 'D')\"\"\").fetchone()
counts = dict(con.execute("SELECT Op, count(*) FROM changes GROUP BY Op").fetchall())
print(json.dumps({"base_rows": n, "rows": rows, "quantity": str(qty), "changes": counts}))
"""
SQL_TYPES = {"long": "BIGINT", "int": "INTEGER", "string": "VARCHAR", "date": "DATE"}


def scratch_python() -> str:
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {VENV} (duckdb=={DUCKDB}, duckdb-extension-tpch=={DUCKDB}) for the TPC-H generator", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"duckdb=={DUCKDB}", f"duckdb-extensions=={DUCKDB}", f"duckdb-extension-tpch=={DUCKDB}"], check=True)
    return str(python)


def table_config(write: str):
    from lake_assets.core.registry import ColumnSpec, CsvOptions, TableConfig

    return TableConfig(
        source=SOURCE, name=TABLE, schema=SCHEMA, source_table=TABLE, primary_key=("l_orderkey", "l_linenumber"),
        sequence_by=None, columns=tuple(ColumnSpec(name=c, type=t) for c, t in COLUMNS), partition_by=(), pii=(),
        format="parquet", csv=CsvOptions(), mode="current", engine="inprocess", write=write, refresh="on_arrival",
        tombstone_retention_days=7, quarantine_max_rate=0.01, owners=(), description=None, config_file="<bench/tpch.py>",
    )


def land(home: Path, generated: Path) -> None:
    import pyarrow.parquet as pq

    from demo.dms_writer import cdc_file_name, load_file_name, table_dir, write_dms_table

    folder = table_dir(home / "landing", SOURCE, SCHEMA, TABLE)
    base = pq.read_table(generated / "base.parquet")
    for n, start in enumerate(range(0, base.num_rows, LOAD_FILE_ROWS), 1):
        write_dms_table(folder / load_file_name(n), base.slice(start, LOAD_FILE_ROWS), COLUMNS, cdc=False)
    del base
    write_dms_table(folder / cdc_file_name(dt.datetime(2026, 11, 2, 6)), pq.read_table(generated / "changes.parquet"),
                    COLUMNS, cdc=True)


def worker(home: Path, write: str, what: str) -> dict:
    import pyarrow.compute as pc

    from bench.merge import catalog_for, landed_files
    from lake_assets.core.cdc.inprocess import InProcessEngine

    catalog, table = catalog_for(home), table_config(write)
    started = time.perf_counter()
    if what == "load":
        for i, f in enumerate(landed_files(home / "landing", table, cdc=False), 1):
            InProcessEngine().merge(catalog, table, [f], f"tpch-load-{i}", now=NOW)
        return {"merge": time.perf_counter() - started}
    r = InProcessEngine().merge(catalog, table, landed_files(home / "landing", table, cdc=True), "tpch-cdc-1", now=NOW)
    took = time.perf_counter() - started
    print("PHASE scan", flush=True)
    data = catalog.load_table(table.identifier).scan(selected_fields=("l_quantity",)).to_arrow()
    return {"merge": took, "counts": [r.inserted, r.updated, r.deleted], "files_read": r.files_read,
            "files_rewritten": r.files_rewritten, "rows": data.num_rows, "quantity": str(pc.sum(data.column(0)).as_py())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sf", type=float, default=1.0)
    p.add_argument("--share", type=float, default=0.03, help="share of the rows the CDC round changes")
    p.add_argument("--write", default="auto", choices=["auto", "merge_on_read", "copy_on_write"])
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), args.worker[1], args.worker[2])))
        return 0
    from bench.scale import run_worker

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-tpch-") as tmp:
        home, generated = Path(tmp) / "lake", Path(tmp) / "generated"
        generated.mkdir()
        types = json.dumps([(c, SQL_TYPES.get(t, t.upper())) for c, t in COLUMNS])
        gen = subprocess.run([scratch_python(), "-c", GENERATE, str(generated), str(args.sf), str(args.share), types],
                             capture_output=True, text=True)
        if gen.returncode:
            raise SystemExit(f"the TPC-H generator failed:\n{gen.stderr[-3000:]}")
        want = json.loads(gen.stdout.strip().splitlines()[-1])
        land(home, generated)
        print(f"TPC-H SF{args.sf:g} lineitem: {want['base_rows']:,} rows; CDC round {want['changes']} "
              f"(generated and landed in {time.perf_counter() - started:.0f}s)", flush=True)
        load = run_worker([str(home), args.write, "load"], script=Path(__file__))
        print(f"full load (in-process, one batch per LOAD file): {load['merge']:.1f}s, peak {load['peak_rss'] / 2**20:,.0f} MiB")
        cdc = run_worker([str(home), args.write, "cdc"], script=Path(__file__))
        ok = cdc["rows"] == want["rows"] and cdc["quantity"] == want["quantity"]
        print(f"CDC round (write: {args.write}): merge {cdc['merge']:.2f}s, peak {cdc['peak_rss'] / 2**20:,.0f} MiB, "
              f"I/U/D {'/'.join(map(str, cdc['counts']))}, files read {cdc['files_read']}, rewritten {cdc['files_rewritten']}; "
              f"table {cdc['rows']:,} rows, sum(l_quantity) {cdc['quantity']}: "
              + ("equals the generator's" if ok else f"MISMATCH: expected {want['rows']:,} rows, {want['quantity']}"))
    print(f"(all in {time.perf_counter() - started:.0f}s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
