"""Table lifecycle: 200 consecutive merges of 1,000 changes into a 5M-row table, without and with
maintenance on its schedule (issue 10's measure).

    python bench/maintenance.py                    # 5M rows, 200 merges, maintenance every 20 (~20 min on 2 cores)
    python bench/maintenance.py --rows 500k --merges 40 --every 10   # a quick run
    python bench/maintenance.py --json out.json

Two tables of one lake get the same full load and then, merge after merge, the same CDC file
(1,000 changes: 70% updates and 15% deletes spread over the whole key range, 15% inserts),
through the real ledger and runner with the table's default `write: auto`. One of them is
maintained (lake_assets/core/maintenance.py: compaction, manifest rewrite, snapshot expiry,
orphan removal) after every `--every` merges, as a schedule would run it between merges.

After merge 1 and every 20th merge it prints, per table: the merge's time (median of that merge
and the four before it: one merge is noisy), a full scan (pyiceberg `scan().to_arrow()`) timed
apart, data files, delete files, snapshots, manifests and metadata size; the maintenance runs'
times; and the ratios of the last point to the first. At the end both tables must hold the same
rows (every data column): maintenance that changed an answer fails the run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.scale import COLUMNS, DATA_COLUMNS, base_table, change_set, label, parse_count  # noqa: E402

SOURCE = "shop"
TABLES = ("orders_plain", "orders_maintained")
REGISTRY = """
source: shop
defaults: {{maintenance: {{schedule: null, keep_snapshots: 5, max_snapshot_age_hours: 0, orphan_age_hours: 0}}}}
tables:
{tables}
"""
TABLE = """  - name: {name}
    schema: public
    primary_key: [id]
    columns:
{columns}
"""


def registry_text() -> str:
    columns = "\n".join(f"      - {{name: {c}, type: \"{t}\"}}" for c, t in COLUMNS)
    return REGISTRY.format(tables="".join(TABLE.format(name=n, columns=columns) for n in TABLES))


def health_row(tbl, spec) -> dict:
    from lake_assets.core.maintenance import table_health

    h = table_health(tbl, spec)
    return {"data_files": h.data_files, "delete_files": h.delete_files, "snapshots": h.snapshots, "manifests": h.manifests,
            "metadata_kb": round(h.metadata_bytes / 1024, 1)}


def scan_seconds(tbl) -> tuple[float, int]:
    started = time.perf_counter()
    rows = tbl.scan().to_arrow().num_rows
    return time.perf_counter() - started, rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=parse_count, default=5_000_000)
    p.add_argument("--changes", type=parse_count, default=1000)
    p.add_argument("--merges", type=int, default=200)
    p.add_argument("--every", type=int, default=20, help="maintenance after every this many merges")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    from demo.dms_writer import cdc_file_name, load_file_name, table_dir, write_dms_table
    from lake_assets.core.arrivals import record_arrivals
    from lake_assets.core.cdc.inprocess import InProcessEngine
    from lake_assets.core.cdc.runner import MergeOptions, merge_pending
    from lake_assets.core.deployment import local_environment
    from lake_assets.core.maintenance import maintain
    from lake_assets.core.registry import load_registry

    with tempfile.TemporaryDirectory(prefix="lake-bench-maint-") as tmp:
        home = Path(tmp)
        (home / "sources").mkdir()
        (home / "sources" / "shop.yaml").write_text(registry_text())
        registry = load_registry([home / "sources"], strict=True, cache=False)
        env = local_environment(home)
        tables = {t.name: t for t in registry.tables}
        base = base_table(args.rows)
        print(f"{label(args.rows)} rows, {args.merges} merges of {args.changes} changes, maintenance every {args.every}", flush=True)
        for name in TABLES:
            write_dms_table(table_dir(env.landing.root, SOURCE, "public", name) / load_file_name(1), base, COLUMNS, cdc=False)

        def ingest() -> dict[str, float]:
            record_arrivals(env.landing, env.ledger, registry)
            out = {}
            for name in TABLES:
                run = merge_pending(tables[name], catalog=env.catalog, ledger=env.ledger, landing=env.landing,
                                    engine=InProcessEngine(), options=MergeOptions())
                assert run.results and not run.results[-1].failed_files, run
                out[name] = sum(r.seconds for r in run.results)
            return out

        started = time.perf_counter()
        ingest()
        print(f"full load of both tables: {time.perf_counter() - started:.1f}s", flush=True)

        merge_times: dict[str, list[float]] = {n: [] for n in TABLES}
        points: list[dict] = []
        maintenance: list[dict] = []
        at = dt.datetime(2026, 11, 22, 0, 0)
        for k in range(1, args.merges + 1):
            changes = change_set(base, args.changes, "random", seed=1000 + k)
            for name in TABLES:
                write_dms_table(table_dir(env.landing.root, SOURCE, "public", name) / cdc_file_name(at + dt.timedelta(seconds=k)),
                                changes, COLUMNS, cdc=True)
            for name, seconds in ingest().items():
                merge_times[name].append(seconds)
            if k == 1 or k % 20 == 0 or k == args.merges:
                point: dict = {"merge": k}
                for name in TABLES:
                    tbl = env.catalog.load_table(f"{SOURCE}.{name}")
                    window = merge_times[name][max(0, k - 5):k] if k >= 5 else merge_times[name][:5]
                    scan, rows = scan_seconds(tbl)
                    point[name] = {"merge_s": round(statistics.median(window), 3), "scan_s": round(scan, 3), "rows": rows,
                                   **health_row(tbl, tables[name].maintenance)}
                points.append(point)
                line = "  ".join(f"{n.removeprefix('orders_')}: merge {point[n]['merge_s']:.2f}s scan {point[n]['scan_s']:.2f}s "
                                 f"files {point[n]['data_files']} deletes {point[n]['delete_files']} snaps {point[n]['snapshots']} "
                                 f"manifests {point[n]['manifests']} meta {point[n]['metadata_kb']:.0f}KB" for n in TABLES)
                print(f"merge {k:4d}  {line}", flush=True)
            if k % args.every == 0:
                report = maintain(env.catalog, env.ledger, tables["orders_maintained"])
                scan, _ = scan_seconds(env.catalog.load_table(f"{SOURCE}.orders_maintained"))
                maintenance.append({"after_merge": k, "seconds": round(report.seconds, 2), "scan_after_s": round(scan, 3)}
                                   | report.counts())
                print(f"           maintenance after merge {k}: {report.seconds:.1f}s, compacted {report.files_compacted} -> "
                      f"{report.files_written} files, {report.delete_files_removed} delete files removed, "
                      f"{report.snapshots_expired} snapshots expired, {report.orphans_removed} orphans removed; "
                      f"scan then {scan:.2f}s", flush=True)

        # Maintenance must not change an answer: both tables hold the same rows (data columns; the
        # positions differ by the landing folder's digest, their last part).
        import duckdb

        con = duckdb.connect()
        sums = {}
        for name in TABLES:
            con.register("t", env.catalog.load_table(f"{SOURCE}.{name}").scan(selected_fields=tuple(DATA_COLUMNS)).to_arrow())
            sums[name] = con.execute("SELECT count(*), sum(hash(t::VARCHAR)) FROM t").fetchone()
            con.unregister("t")
        same = sums[TABLES[0]] == sums[TABLES[1]]
        print(f"rows: {sums[TABLES[0]][0]:,} and {sums[TABLES[1]][0]:,}; the two tables hold the same rows: {same}")

        first, last = points[0], points[-1]
        summary = {}
        for name in TABLES:
            summary[name] = {"merge_ratio": round(last[name]["merge_s"] / first[name]["merge_s"], 2),
                             "scan_ratio": round(last[name]["scan_s"] / first[name]["scan_s"], 2)}
            print(f"{name}: merge {last['merge']} / merge 1 = {summary[name]['merge_ratio']}x, "
                  f"scan after merge {last['merge']} / after merge 1 = {summary[name]['scan_ratio']}x")
        # The maintained table in the cycle's best phase: the merges just after a maintenance run
        # (the points above are its worst: the merges just before one), and the scan right after it.
        maintained = merge_times["orders_maintained"]
        if len(maintenance) >= 2:
            last_run = maintenance[-2]["after_merge"]  # the run before the last checkpoint's
            after = statistics.median(maintained[last_run:last_run + 5])
            first_five = statistics.median(maintained[:5])
            summary["orders_maintained"] |= {
                "merge_after_maintenance_ratio": round(after / first_five, 2),
                "scan_after_maintenance_ratio": round(maintenance[-1]["scan_after_s"] / first[TABLES[1]]["scan_s"], 2)}
            print(f"orders_maintained just after maintenance: merges {last_run + 1}-{last_run + 5} / merges 1-5 = "
                  f"{summary['orders_maintained']['merge_after_maintenance_ratio']}x, scan after the last run / after merge 1 = "
                  f"{summary['orders_maintained']['scan_after_maintenance_ratio']}x")
        if maintenance:
            print(f"maintenance: {len(maintenance)} runs, median {statistics.median(m['seconds'] for m in maintenance):.1f}s, "
                  f"max {max(m['seconds'] for m in maintenance):.1f}s")
        if args.json:
            args.json.write_text(json.dumps({"points": points, "maintenance": maintenance, "summary": summary}, indent=1))
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
