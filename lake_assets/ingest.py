"""Ingest what has landed, once, without the daemon: what the landing sensor plus the runs it requests do.

    python -m lake_assets.ingest [--retry-failed]

Records new landing files in the ledger and materializes every source-aligned asset with pending files
through Dagster (runs appear in the UI when DAGSTER_HOME is set). Exit code 1 if any table failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from dagster import AssetKey, DagsterInstance, materialize

from lake_assets.core.arrivals import ArrivalReport, record_arrivals
from lake_assets.assets import RETRY_FAILED_TAG
from lake_assets.core.deployment import LakeEnvironment, environment_from_env


@dataclass
class IngestOutcome:
    arrivals: ArrivalReport
    metadata: dict[str, dict]  # asset key -> materialization metadata
    success: bool


def ingest(env: LakeEnvironment, defs, registry, instance=None, retry_failed: bool = False) -> IngestOutcome:
    report = record_arrivals(env.landing, env.ledger, registry)
    pending = env.ledger.tables_with_pending()
    tables = [t for t in registry.tables if t.identifier in pending or retry_failed]
    if not tables:
        return IngestOutcome(report, {}, True)
    keys = [AssetKey(t.asset_key_path) for t in tables]
    result = materialize(
        list(defs.assets), selection=keys, instance=instance, resources=dict(defs.resources),
        tags={"lake/trigger": "ingest", RETRY_FAILED_TAG: str(retry_failed).lower()}, raise_on_error=False,
    )
    md = {
        ev.materialization.asset_key.to_user_string(): {k: v.value for k, v in ev.materialization.metadata.items()}
        for ev in result.get_asset_materialization_events()
    }
    return IngestOutcome(report, md, result.success)


def format_row(key: str, md: dict) -> str:
    return (
        f"  {key:<44} files {md.get('files', 0):>3}  rows {md.get('rows_read', 0):>7}  "
        f"I/U/D {md.get('inserted', 0)}/{md.get('updated', 0)}/{md.get('deleted', 0)}  appended {md.get('appended', 0)}  "
        f"late-ignored {md.get('stale_skipped', 0) + md.get('tombstone_rejected', 0)}  quarantined {md.get('quarantined', 0)}"
        + (f"  FAILED FILES {md['failed_files']}" if md.get("failed_files") else "")
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--retry-failed", action="store_true", help="retry files that failed before")
    args = p.parse_args(argv)
    # Source-aligned assets only: neither dagster-dbt nor the dbt manifest is touched here.
    from lake_assets.definitions import build_definitions, gc_paused
    from lake_assets.core.registry import load_registry

    with gc_paused(freeze=True):  # the registry and definitions live as long as the command
        registry = load_registry()
        defs = build_definitions(registry, with_dbt=False)
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else None
    out = ingest(environment_from_env(), defs, registry, instance, args.retry_failed)
    r = out.arrivals
    print(f"{r.total} new files recorded ({len(r.unroutable)} unroutable, {r.identical} identical re-deliveries ignored, "
          f"{len(r.content_duplicates)} duplicates of other files)")
    for key, reason in r.unroutable:
        print(f"  unroutable: {reason}")
    for key, other in r.content_duplicates:
        print(f"  duplicate: {key} has the same content as {other}; not merged again")
    for key, md in sorted(out.metadata.items()):
        print(format_row(key, md))
    if not out.success:
        print("some tables failed; their files stay in the ledger as retryable (see the run's logs)")
    return 0 if out.success else 1


if __name__ == "__main__":
    sys.exit(main())
