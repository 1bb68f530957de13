"""Event streams: events/s into an event table (`load: events`) against a plain pyarrow JSON read
plus `Table.append` of the same files, measured in the same run (issue 9's throughput figure).

    python bench/events.py                        # 200 files x 5,000 events (1M), ~1-2 min on 2 cores
    python bench/events.py --files 20 --events 2000   # a quick run
    python bench/events.py --json out.json

Both paths get the same Firehose-layout files (`YYYY/MM/DD/HH/<name>.gz`, gzip, clean events:
the plain path cannot set bad lines aside) and write a table partitioned by `day(event_time)` in
their own SQLite catalog:

- **lake**: the landing zone's files recorded in the ledger (`record_arrivals`) and merged by the
  table's runner (`merge_pending`, in-process engine: one batch, one commit), as the sensor and
  the asset do: per-line parsing and checks, the errors sidecar, the lake columns, the ledger.
- **plain**: for each file, gunzip and `pyarrow.json.read_json`, the event time cast to
  timestamptz, then one `Table.append` of all of them: no checks, no exactly-once, no errors.

It prints events/s of each and their ratio (plain / lake: how many times faster the bare read
is), and checks both tables hold the same events.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

REGISTRY = """
source: bench
tables:
  - name: clicks
    schema: firehose
    format: jsonl
    load: events
    mode: history
    primary_key: [event_id]
    quarantine_max_rate: 1
    events: {time_field: event_time, partition: day, required: [user_id]}
    columns:
      - {name: event_id, type: string}
      - {name: user_id, type: long}
      - {name: event_time, type: timestamptz}
      - {name: page, type: string}
      - {name: referrer, type: string}
      - {name: duration_ms, type: long}
      - {name: price, type: double}
"""
FOLDER = "bench/firehose/clicks"
START = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)
PAGES = ["home", "search", "hotel", "cart", "checkout", "confirmation"]


def write_files(landing: Path, files: int, events: int, seed: int = 7) -> list[Path]:
    """Firehose files: one per arrival minute, spread over the hours after START; events of the
    last three days (late events included), gzipped as Firehose writes them."""
    rng = random.Random(seed)
    out = []
    n = 0
    for f in range(files):
        arrived = START + dt.timedelta(minutes=7 * f)
        lines = []
        for _ in range(events):
            n += 1
            at = arrived - dt.timedelta(seconds=rng.randrange(3 * 86400))
            lines.append(json.dumps({
                "event_id": f"{n:012d}", "user_id": rng.randrange(100_000),
                "event_time": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "page": rng.choice(PAGES), "referrer": rng.choice([None, "google", "email", "direct"]),
                "duration_ms": rng.randrange(60_000), "price": round(rng.random() * 500, 2)}))
        path = landing / FOLDER / f"{arrived:%Y/%m/%d/%H}" / f"clicks-1-{arrived:%Y-%m-%d-%H-%M-%S}-{f:08d}.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=6))
        out.append(path)
    return out


def run_lake(home: Path) -> tuple[float, int]:
    """The lake's path over the files under home/landing: arrivals recorded, the table merged."""
    from lake_assets.core.arrivals import record_arrivals
    from lake_assets.core.cdc.inprocess import InProcessEngine
    from lake_assets.core.cdc.runner import merge_pending
    from lake_assets.core.deployment import local_environment
    from lake_assets.core.registry import load_registry

    (home / "sources").mkdir(parents=True, exist_ok=True)
    (home / "sources" / "bench.yaml").write_text(REGISTRY)
    registry = load_registry([home / "sources"], strict=True, cache=False)
    env = local_environment(home)
    table = registry.get("bench", "clicks")
    started = time.perf_counter()
    record_arrivals(env.landing, env.ledger, registry)
    run = merge_pending(table, catalog=env.catalog, ledger=env.ledger, landing=env.landing, engine=InProcessEngine())
    seconds = time.perf_counter() - started
    assert not run.failed_files, run.failed_files
    return seconds, env.catalog.load_table(table.identifier).scan().count()


def run_plain(home: Path, files: list[Path]) -> tuple[float, int]:
    """The bare path: read each file with pyarrow, append them all to a day-partitioned table."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.transforms import DayTransform

    home.mkdir(parents=True, exist_ok=True)
    catalog = SqlCatalog("plain", uri=f"sqlite:///{home / 'plain.db'}", warehouse=f"file://{home / 'plain'}")
    catalog.create_namespace("bench")
    started = time.perf_counter()
    parts = []
    for path in files:
        t = pj.read_json(io.BytesIO(gzip.decompress(path.read_bytes())))
        i = t.schema.get_field_index("event_time")
        parts.append(t.set_column(i, "event_time", pc.cast(t.column("event_time"), pa.timestamp("us", tz="UTC"))))
    data = pa.concat_tables(parts, promote_options="permissive")
    tbl = catalog.create_table("bench.clicks", schema=data.schema)
    with tbl.update_spec() as spec:
        spec.add_field("event_time", DayTransform(), "event_time_day")
    tbl.append(data)
    seconds = time.perf_counter() - started
    return seconds, catalog.load_table("bench.clicks").scan().count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--events", type=int, default=5000, help="events per file")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        home = Path(tmp)
        t0 = time.perf_counter()
        files = write_files(home / "landing", args.files, args.events)
        total = args.files * args.events
        size = sum(p.stat().st_size for p in files)
        print(f"{args.files} files x {args.events:,} events = {total:,} events, {size / 2**20:.1f} MiB gzipped "
              f"(written in {time.perf_counter() - t0:.1f}s)")
        warm = home / "warm-up"  # imports and first-use caches out of the figures: one small file through both paths
        warm_files = write_files(warm / "landing", 1, 10)
        run_lake(warm)
        run_plain(warm, warm_files)
        lake_s, lake_rows = run_lake(home)
        plain_s, plain_rows = run_plain(home, files)
        assert lake_rows == plain_rows == total, (lake_rows, plain_rows, total)
        figures = {"files": args.files, "events": total, "lake_seconds": round(lake_s, 2), "plain_seconds": round(plain_s, 2),
                   "lake_events_per_s": round(total / lake_s), "plain_events_per_s": round(total / plain_s),
                   "ratio_plain_over_lake": round(lake_s / plain_s, 2)}
        print(f"lake  (ledger + runner + in-process engine): {lake_s:6.1f}s  {figures['lake_events_per_s']:>10,} events/s")
        print(f"plain (pyarrow read_json + Table.append):     {plain_s:6.1f}s  {figures['plain_events_per_s']:>10,} events/s")
        print(f"ratio: the plain read is {figures['ratio_plain_over_lake']}x as fast as the lake's path")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
