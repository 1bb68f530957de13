"""Start-up and sensor figures: definitions load for a 3,000-table registry, `python -m lake_assets.ingest`
with nothing pending, and one landing-sensor tick over 10,000 new files, each beside its baseline
measured in the same run. Every start-up figure is a fresh process, min / median of --repeat runs.

    python bench/startup.py [--tables 3000] [--files 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# What a code server does for the code location, timed from process start: import the module, call
# the lazy `defs` (or the same without dbt, as the ingest command builds), resolve the asset graph.
LOAD_DEFS = """
import sys, time
t = time.perf_counter()
from lake_assets import definitions
if sys.argv[1] == "dbt":
    d = definitions.defs()
else:
    with definitions.gc_paused(freeze=True):
        d = definitions.build_definitions(with_dbt=False)
        d.get_repository_def()
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


def _env(sources_dir: Path | None, lake_home: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "LAKE_HOME": str(lake_home), "PYTHONPATH": str(REPO)}
    env.pop("LAKE_SOURCES_DIR", None)
    if sources_dir:  # beside the demo's source: 3,006 tables
        env["LAKE_SOURCES_DIR"] = str(sources_dir)
        env["LAKE_BUILTIN_SOURCES"] = "true"
    return env


def load_time(sources_dir: Path | None, lake_home: Path, dbt: bool = False) -> tuple[int, float, float]:
    """(assets, in-process seconds, wall seconds) of one fresh process loading the definitions."""
    env = _env(sources_dir, lake_home)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", LOAD_DEFS, "dbt" if dbt else "core"], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    n, inner = out.stdout.split()[-2:]
    return int(n), float(inner), wall


def ingest_time(sources_dir: Path | None, lake_home: Path) -> float:
    """Wall seconds of `python -m lake_assets.ingest` with nothing landed."""
    env = _env(sources_dir, lake_home)
    env.pop("DAGSTER_HOME", None)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lake_assets.ingest"], env=env, cwd=REPO, capture_output=True, check=True)
    return time.perf_counter() - t


def _figure(values: list[float]) -> str:
    return f"min {min(values):5.2f}s  median {statistics.median(values):5.2f}s"


def startup_figures(tables: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sources = Path(tmp) / "sources"
        write_registry(sources, tables)
        warm_home = Path(tmp) / "warm"
        load_time(sources, warm_home, dbt=True)  # primes the registry cache and the dbt manifest
        load_time(None, warm_home)

        def runs(fn) -> list:
            return [fn() for _ in range(repeat)]

        def cold_home() -> Path:
            return Path(tempfile.mkdtemp(dir=tmp))

        print(f"definitions load (process start to asset graph), {repeat} runs each:")
        demo = runs(lambda: load_time(None, warm_home))
        big_cold = runs(lambda: load_time(sources, cold_home()))
        big = runs(lambda: load_time(sources, warm_home))
        big_dbt = runs(lambda: load_time(sources, warm_home, dbt=True))
        for label, rs in (("demo registry, no dbt", demo), (f"+ {tables} generated, registry cache cold", big_cold),
                          (f"+ {tables} generated, registry cache warm", big),
                          (f"+ {tables} generated, with dbt (the code location)", big_dbt)):
            print(f"  {label:<48} {rs[0][0]:>5} assets  wall {_figure([r[2] for r in rs])}  "
                  f"(in-process {_figure([r[1] for r in rs])})")
        print(f"  ratio {statistics.median(r[2] for r in big) / statistics.median(r[2] for r in demo):4.2f}x "
              "the demo registry (warm, no dbt)")
        print(f"python -m lake_assets.ingest, nothing pending ({tables + 6} tables), {repeat} runs each:")
        print(f"  empty LAKE_HOME (registry cache cold) wall {_figure(runs(lambda: ingest_time(sources, cold_home())))}")
        print(f"  LAKE_HOME used before (cache warm)    wall {_figure(runs(lambda: ingest_time(sources, warm_home)))}")


def sensor_tick(files: int) -> tuple[float, float, int]:
    import datetime as dt

    from dagster import DagsterInstance, build_sensor_context

    from demo.dms_writer import cdc_file_name, write_raw
    from lake_assets.core.deployment import local_environment
    from lake_assets.core.registry import load_registry
    from lake_assets.sensors import build_landing_sensor
    from resources.lake import LakeResource

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        sources = home / "sources"
        write_registry(sources, 100)
        os.environ["LAKE_HOME"] = str(home)
        os.environ["LAKE_SOURCES_DIR"] = str(sources)
        os.environ["LAKE_SETTLE_SECONDS"] = "0"  # the files are complete; with the default 5 s the tick records none
        from lake_assets.core.settings import current_settings

        current_settings.cache_clear()
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
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    startup_figures(args.tables, args.repeat)
    tick, idle, recorded = sensor_tick(args.files)
    print(f"landing sensor: one tick over {args.files} new files: {tick:6.2f}s ({recorded} recorded, observed and requested); "
          f"next tick with nothing new: {idle:5.2f}s; ratio {tick / idle:5.1f}x")


if __name__ == "__main__":
    main()
