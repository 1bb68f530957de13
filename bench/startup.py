"""Start-up and sensor figures: definitions load for a 3,000-table registry, and one landing-sensor tick
over 10,000 new files, each beside its baseline measured in the same run.

    python bench/startup.py [--tables 3000] [--files 10000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LOAD_DEFS = """
import time, sys
t = time.perf_counter()
from lake_assets.definitions import build_definitions
from lake_assets.core.registry import load_registry
r = load_registry()
d = build_definitions(r, with_dbt=False)
n = len(list(d.resolve_asset_graph().get_all_asset_keys()))
print(n, time.perf_counter() - t)
"""


def write_registry(folder: Path, tables: int, per_source: int = 100) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(tables // per_source):
        lines = [f"source: src{s:03d}", "defaults: {refresh: '*/10 * * * *'}", "tables:"]
        for t in range(per_source):
            lines += [
                f"  - name: table_{t:03d}",
                "    schema: public",
                "    primary_key: [id]",
                "    sequence_by: change_seq",
                "    columns: [{name: change_seq, type: long}, {name: id, type: long}, {name: payload, type: string}]",
            ]
        (folder / f"src{s:03d}.yaml").write_text("\n".join(lines) + "\n")


def load_time(sources_dir: Path | None) -> tuple[int, float, float]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("LAKE_SOURCES_DIR", None)
    if sources_dir:
        env["LAKE_SOURCES_DIR"] = str(sources_dir)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", LOAD_DEFS], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    n, inner = out.stdout.split()
    return int(n), float(inner), wall


def sensor_tick(files: int) -> tuple[float, float, int]:
    from dagster import DagsterInstance, build_sensor_context

    from demo.dms_writer import cdc_file_name, write_raw
    from lake_assets.core.deployment import local_environment
    from lake_assets.core.registry import load_registry
    from lake_assets.sensors import build_landing_sensor
    from resources.lake import LakeResource
    import datetime as dt

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        sources = home / "sources"
        write_registry(sources, 100)
        os.environ["LAKE_HOME"] = str(home)
        os.environ["LAKE_SOURCES_DIR"] = str(sources)
        registry = load_registry()
        local_environment(home)
        base = dt.datetime(2026, 11, 21)
        for i in range(files):
            table = f"table_{i % 100:03d}"
            write_raw(home / "landing" / "src000" / "public" / table / f"{cdc_file_name(base + dt.timedelta(milliseconds=i))}.parquet",
                      b"x" * 2048)
        sensor = build_landing_sensor(registry)
        with DagsterInstance.ephemeral() as instance:
            t = time.perf_counter()
            first = sensor(build_sensor_context(instance=instance, resources={"lake": LakeResource()}))
            tick = time.perf_counter() - t
            t = time.perf_counter()
            sensor(build_sensor_context(instance=instance, cursor=first.cursor, resources={"lake": LakeResource()}))
            idle = time.perf_counter() - t
        recorded = sum(local_environment(home).ledger.tables_with_pending().values())
        del os.environ["LAKE_SOURCES_DIR"]
        return tick, idle, recorded


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tables", type=int, default=3000)
    p.add_argument("--files", type=int, default=10_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_registry(Path(tmp), args.tables)
        n_base, inner_base, wall_base = load_time(None)
        n_big, inner_big, wall_big = load_time(Path(tmp))
    print(f"definitions load (process start to asset graph):")
    print(f"  demo registry      {n_base:>5} assets  {wall_base:6.2f}s  (in-process {inner_base:5.2f}s)")
    print(f"  + generated        {n_big:>5} assets  {wall_big:6.2f}s  (in-process {inner_big:5.2f}s)  "
          f"ratio {wall_big / wall_base:4.2f}x the demo registry")
    tick, idle, recorded = sensor_tick(args.files)
    print(f"landing sensor: one tick over {args.files} new files: {tick:6.2f}s ({recorded} recorded); "
          f"next tick with nothing new: {idle:5.2f}s; ratio {tick / idle:5.1f}x")


if __name__ == "__main__":
    main()
