"""Seconds from arrival, through the real daemon: a CDC file dropped into the landing zone, until its
source-aligned table commits it, and until the consumer table built from it commits.

    python bench/latency.py [--drops 10] [--settle SECONDS] [--keep]

Builds the demo lake in a temporary LAKE_HOME (`python -m demo --reset`: every layer exists), starts
`dagster dev` on it (127.0.0.1, a free port; `python -m lake_assets.dev`), then drops one CDC file
of `travel.promotions` at a time (an update of one promotion, moved into the landing folder whole,
as a careful producer writes) and waits for:

- landing -> source-aligned: the Iceberg commit of `travel.promotions` whose file list holds it
  (the snapshot's own timestamp);
- landing -> consumer: the next commit of `consumer_marketing.promotion_uptake` after that (the
  landing sensor's run, then `dbt_layers_automation_sensor`'s dbt build of
  aggregated/promotion_uptake and consumer/marketing/promotion_uptake).

The first drop is a warm-up (first run of each job) and reported apart; median and max are over
`--drops` after it. `--settle` sets LAKE_SETTLE_SECONDS (default: the lake's own, 5 s locally; S3
objects are complete when listed: 0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SOURCE_TABLE = "travel.promotions"
CONSUMER_TABLE = "consumer_marketing.promotion_uptake"
PROMOTIONS = REPO / "lake_assets" / "sources" / "travel.yaml"


def _env(home: Path, settle: float | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_") and k != "DAGSTER_HOME"}
    env |= {"LAKE_HOME": str(home), "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "PYTHONWARNINGS": "ignore"}
    if settle is not None:
        env["LAKE_SETTLE_SECONDS"] = repr(settle)
    return env


def build_demo_lake(home: Path, env: dict[str, str]) -> None:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "demo", "--reset"], env=env, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"demo failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    print(f"demo lake built in {time.perf_counter() - started:.0f}s at {home}", flush=True)


def snapshots(catalog, identifier: str) -> list:
    try:
        return list(catalog.load_table(identifier).metadata.snapshots)
    except Exception:  # noqa: BLE001 - not created yet, or mid-commit: look again
        return []


def commit_of(catalog, key: str) -> float | None:
    """Epoch seconds of the travel.promotions commit whose batch holds the landed file `key`."""
    for snap in snapshots(catalog, SOURCE_TABLE):
        props = snap.summary.additional_properties if snap.summary else {}
        if key in json.loads(props.get("lake.files", "[]")):
            return snap.timestamp_ms / 1000
    return None


def consumer_commit_after(catalog, after: float) -> float | None:
    times = [s.timestamp_ms / 1000 for s in snapshots(catalog, CONSUMER_TABLE)]
    later = [t for t in times if t >= after - 0.001]
    return min(later) if later else None


def drop(home: Path, n: int, columns: list[tuple[str, str]], row: dict) -> tuple[str, float]:
    """Land one CDC file changing promotion `row` (written aside, then moved in whole)."""
    from demo.dms_writer import cdc_file_name, write_dms_file

    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    changed = dict(row, Op="U", discount_pct=Decimal("5.00") + Decimal(n % 40))
    staging = home / "staging"
    staging.mkdir(exist_ok=True)
    written = write_dms_file(staging / cdc_file_name(now), [changed], columns, cdc=True)
    folder = home / "landing" / "travel" / "booking" / "promotions"
    target = folder / written.name
    os.replace(written, target)
    return target.relative_to(home / "landing").as_posix(), time.time()


def wait_for(what, timeout: float, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value is not None:
            return value
        time.sleep(poll)
    return None


_IN_PROGRESS = """{ runsOrError(filter: {statuses: [QUEUED, NOT_STARTED, STARTING, STARTED]}) { ... on Runs { results { runId } } } }"""


def wait_until_idle(server, timeout: float) -> None:
    """Until no run is queued or running, so stopping the server interrupts nothing."""
    wait_for(lambda: True if not server.graphql(_IN_PROGRESS)["runsOrError"]["results"] else None, timeout, poll=0.5)


def _figures(values: list[float]) -> str:
    return f"median {statistics.median(values):6.1f} s   max {max(values):6.1f} s   (n={len(values)})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--drops", type=int, default=10, help="measured drops, after one warm-up drop")
    p.add_argument("--settle", type=float, default=None, help="LAKE_SETTLE_SECONDS for the daemon (default: the lake's)")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for each commit")
    p.add_argument("--keep", action="store_true", help="keep the temporary lake (and its dagster dev log)")
    args = p.parse_args()

    from lake_assets.core.deployment import local_catalog
    from lake_assets.core.registry import load_source_file
    from lake_assets.dev import DevServer

    tmp = Path(tempfile.mkdtemp(prefix="lake-latency-"))
    home = tmp / "lake"
    env = _env(home, args.settle)
    build_demo_lake(home, env)
    table = next(t for t in load_source_file(PROMOTIONS) if t.name == "promotions")
    columns = [(c.name, c.type) for c in table.columns or ()]
    catalog = local_catalog(home)
    row = {k: v for k, v in catalog.load_table(SOURCE_TABLE).scan(row_filter="promotion_id = 1").to_arrow().to_pylist()[0].items()
           if not k.startswith("_lake_")}

    server = DevServer(log_path=tmp / "dagster-dev.log", env=env)
    to_table: list[float] = []
    to_consumer: list[float] = []
    warmup: tuple[float, float] | None = None
    try:
        started = time.perf_counter()
        server.start()
        print(f"dagster dev ready on {server.url} in {time.perf_counter() - started:.0f}s "
              f"(settle {args.settle if args.settle is not None else 'default'})", flush=True)
        for n in range(args.drops + 1):
            key, dropped = drop(home, n, columns, row)
            committed = wait_for(lambda key=key: commit_of(catalog, key), args.timeout)
            if committed is None:
                raise SystemExit(f"drop {n}: {key} was not committed within {args.timeout:g}s (log: {server.log_path})")
            consumed = wait_for(lambda c=committed: consumer_commit_after(catalog, c), args.timeout)
            if consumed is None:
                raise SystemExit(f"drop {n}: {CONSUMER_TABLE} was not rebuilt within {args.timeout:g}s (log: {server.log_path})")
            a, b = committed - dropped, consumed - dropped
            print(f"  drop {n:>2}{' (warm-up)' if n == 0 else '          '}  landing -> source-aligned {a:5.1f} s   "
                  f"landing -> consumer {b:5.1f} s", flush=True)
            if n == 0:
                warmup = (a, b)
            else:
                to_table.append(a)
                to_consumer.append(b)
            wait_until_idle(server, args.timeout)  # this drop's dbt run runs its tests after the commit
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    print(f"\nlanding -> source-aligned committed: {_figures(to_table)}")
    print(f"landing -> consumer committed:       {_figures(to_consumer)}")
    if warmup:
        print(f"(warm-up drop: {warmup[0]:.1f} s and {warmup[1]:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
