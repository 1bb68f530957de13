"""The demo: a travel-booking database's DMS files and its loyalty programme's Debezium stream,
partner rate sheets and points event stream flow round by round through every layer.

    python -m demo [--reset] [--rounds N]

Each round lands both sources' files as their producers would (a DMS task; Kafka Connect's S3 sink,
a daily CSV export and a Firehose delivery stream), records them as the landing sensor does, runs
the `ingest_travel` and `ingest_loyalty` jobs in the lake's Dagster instance (the runs show in `make ui`), then checks the
lake against each source's true final state (every event once; each bad event line once in its
`__errors` table) and runs the `dbt_layers` job.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from decimal import Decimal

from dagster import DagsterEventType

from demo.generate import generate_travel
from demo.generate_loyalty import generate_loyalty
from lake_assets.core.deployment import local_environment
from lake_assets.core.registry import load_registry
from lake_assets.core.settings import current_settings
from lake_assets.ingest import format_row, ingest
from lake_assets.instance import lake_instance
from lake_assets.jobs import DBT_JOB, execute_in_process
from lake_assets.maintenance import maintenance_job_name


def _say(msg: str) -> None:
    print(msg, flush=True)


def _norm(v):
    if isinstance(v, Decimal):
        return str(v.normalize())
    return v


def _compare(env, registry, source: str, expected: dict[str, list[dict]]) -> bool:
    ok = True
    for t in registry.tables:
        if t.source != source or t.name not in expected:
            continue
        want_rows = expected[t.name]
        cols = [c.name for c in t.columns]
        got = env.catalog.load_table(t.identifier).scan().to_arrow().to_pylist()
        note = ""
        if t.mode == "history":
            got_set = sorted(tuple(_norm(r[c]) for c in cols) + (r["_lake_op"],) for r in got)
            want_set = sorted(tuple(_norm(r[c]) for c in cols) + (r.get("Op", "I"),) for r in want_rows)
        elif t.mode == "scd2":  # the current versions are the source's rows; the others its history
            cols = [c for c in cols if t.lands(c)]
            current = [r for r in got if r["_is_current"]]
            got_set = sorted(tuple(_norm(r[c]) for c in cols) for r in current)
            want_set = sorted(tuple(_norm(r[c]) for c in cols) for r in want_rows)
            note = f" ({len(got)} versions of {len({r['customer_id'] for r in got})} keys, {len(current)} current)"
        else:
            got_set = sorted(tuple(_norm(r[c]) for c in cols) for r in got)
            want_set = sorted(tuple(_norm(r[c]) for c in cols) for r in want_rows)
        same = got_set == want_set
        ok &= same
        _say(f"  {t.identifier:<36} {len(got):>6} rows  {'matches the source' if same else 'DIFFERS from the source'}{note}")
    return ok


def _compare_errors(env, registry, source: str, bad_lines: dict[str, list[tuple[str, int, str]]]) -> bool:
    """Each table's `__errors` against the bad lines its producer sent: each exactly once."""
    ok = True
    for t in registry.tables:
        if t.source != source or t.name not in bad_lines:
            continue
        want = sorted(bad_lines[t.name])
        got = []
        if env.catalog.table_exists(t.quarantine_identifier):
            got = sorted((r["file"], r["row"], r["raw"]) for r in env.catalog.load_table(t.quarantine_identifier).scan().to_arrow().to_pylist())
        same = got == want
        ok &= same
        _say(f"  {t.quarantine_identifier:<36} {len(got):>6} rows  {len(want)} bad lines sent: "
             f"{'each once' if same else 'DIFFERS from the bad lines sent'}")
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reset", action="store_true", help="start from an empty LAKE_HOME")
    p.add_argument("--rounds", type=int, default=4, help="CDC rounds after the full load")
    p.add_argument("--skip-dbt", action="store_true")
    args = p.parse_args(argv)

    home = current_settings().home
    if args.reset and home.exists():
        _say(f"resetting {home}")
        for name in ("landing", "warehouse", "demo_source", "catalog.db", "ledger.db", "dbt"):
            path = home / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    from lake_assets.definitions import build_definitions

    started = time.perf_counter()
    env = local_environment(home)
    registry = load_registry()
    defs = build_definitions(registry, with_dbt=not args.skip_dbt)
    ok = True
    instance = lake_instance()

    _say(f"lake home: {home}\ngenerating the travel-booking source (DMS format) ...")
    source = generate_travel(home / "demo_source", cdc_rounds=args.rounds)
    _say("generating its loyalty programme (Debezium members, partner hotels' daily rate sheets, Firehose points events) ...")
    loyalty = generate_loyalty(home / "demo_source", source)
    for i, rnd in enumerate(source.rounds):
        source.deliver(i, home / "landing")
        loyalty.deliver(i, home / "landing")
        out = ingest(env, defs, registry, instance)
        _say(f"\nround {i} ({rnd.name}): {len(rnd.files)} travel and {len(loyalty.rounds[i].files)} loyalty files landed, "
             f"{out.arrivals.total} recorded in the ledger, {len(out.metadata)} tables merged")
        for key, md in sorted(out.metadata.items()):
            _say(format_row(key, md))
        if not out.success:
            ok = False
            _say("  some tables failed; see the run in the Dagster UI (make ui). Other tables went on.")

    _say("\nsource-aligned tables vs the source databases' final state:")
    ok = _compare(env, registry, "travel", source.expected) and ok
    ok = _compare(env, registry, "loyalty", loyalty.expected) and ok
    ok = _compare_errors(env, registry, "loyalty", loyalty.bad_lines) and ok

    if not args.skip_dbt:
        _say("\nbuilding the aggregated and consumer-aligned layers (dbt, target local) ...")
        job = defs.resolve_job_def(DBT_JOB)
        success, events = execute_in_process(job, instance, sorted(job.asset_layer.executable_asset_keys), {"lake/trigger": "demo"})
        built = sum(1 for e in events if e.event_type == DagsterEventType.ASSET_MATERIALIZATION)
        _say(f"  {built} dbt models materialized" + ("" if success else " (with failures; see the Dagster UI)"))
        ok &= success
        from demo.dbt_report import empty_consumer_datasets, print_consumer_samples

        print_consumer_samples(home)
        empty = empty_consumer_datasets(home)
        if empty:
            ok = False
            _say(f"\nconsumer datasets with no rows (does the policy's row filter match the data?): {', '.join(empty)}")

    _say("\nmaintenance (the maintain_travel job, nightly on its schedule): compaction, manifests, expiry ...")
    success, events = execute_in_process(defs.resolve_job_def(maintenance_job_name("travel")), instance, [], {"lake/trigger": "demo"})
    for e in events:
        if e.event_type == DagsterEventType.ASSET_OBSERVATION:
            obs = e.asset_observation_data.asset_observation
            md = {k: v.value for k, v in obs.metadata.items()}
            _say(f"  {'.'.join(obs.asset_key.path[1:]):<36} data files {md['before_data_files']:>3} -> {md['data_files']:<3} "
                 f"delete files {md['before_delete_files']:>3} -> {md['delete_files']:<3} manifests {md['before_manifests']:>3} -> "
                 f"{md['manifests']:<3} snapshots {md['before_snapshots']:>3} -> {md['snapshots']}")
    ok &= success
    _say(f"\ndone in {time.perf_counter() - started:.1f}s. Browse it: make ui  (http://127.0.0.1:3000)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
