"""Ingest what has landed, once, without the daemon: what the landing sensor plus the runs it requests do.

    python -m lake_assets.ingest [--retry-failed] [--reload SOURCE.TABLE ...] [--rebuild SOURCE.TABLE ...]

Records new landing files in the ledger and materializes every source-aligned asset with pending files
through Dagster: one run of `ingest_<source>` per source, in the lake's Dagster instance (the settings'
`dagster_home`, $LAKE_HOME/dagster), so the runs show in `make ui` and can be re-executed there. Works
from any directory. It prints, per table, what the merge did, then every failed file, failed check and
failed table, and exits 1 when there is any (or when a registry file is invalid): a run that
quarantined everything never looks like a success.

--reload: the table's next batch with full-load (LOAD*) files replaces its contents.
--rebuild: drop the table and its sidecars and merge every landed file of it again (after a
registry change of primary key, mode, partitioning or sequence_by, which is refused until then).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Set
from contextlib import ExitStack
from dataclasses import dataclass, field

from dagster import AssetCheckSeverity, AssetKey, DagsterEvent, DagsterEventType, DagsterInstance

from lake_assets.assets import REBUILD_TAG, RELOAD_TAG, RETRY_FAILED_TAG
from lake_assets.core.arrivals import ArrivalReport, record_arrivals
from lake_assets.core.deployment import LakeEnvironment, environment_from_env
from lake_assets.core.naming import ingest_job_name
from lake_assets.core.settings import current_settings
from lake_assets.jobs import execute_in_process
from lake_assets.run_processes import reap_dead_runs


@dataclass
class IngestOutcome:
    arrivals: ArrivalReport
    metadata: dict[str, dict]  # asset key -> materialization metadata
    success: bool
    failed_checks: list[str] = field(default_factory=list)  # "<asset key> <check>: <why>"
    warned_checks: list[str] = field(default_factory=list)  # failed with severity WARN: shown, not a failure
    failed_tables: list[str] = field(default_factory=list)  # the failure each failed table reported
    registry_errors: list[str] = field(default_factory=list)

    @property
    def failed_files(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for md in self.metadata.values():
            out.update(md.get("failed_file_reasons") or {})
        return out

    @property
    def ok(self) -> bool:
        return (self.success and not self.failed_checks and not self.failed_files and not self.registry_errors
                and not self.arrivals.unroutable)


def _named(values: list[str], registry) -> set[str]:
    known = {t.identifier for t in registry.tables}
    unknown = [v for v in values if v not in known]
    if unknown:
        raise SystemExit(f"unknown table(s) {', '.join(unknown)}; tables are named source.table, e.g. {next(iter(known), 'shop.orders')}")
    return set(values)


def ingest(env: LakeEnvironment, defs, registry, instance: DagsterInstance | None = None, retry_failed: bool = False,
           reload: Set[str] = frozenset(), rebuild: Set[str] = frozenset(), settle_seconds: float = 0.0) -> IngestOutcome:
    """Record arrivals, then run `ingest_<source>` for each source with tables to merge, selecting
    those tables (`instance`: where the runs are recorded; None: a throwaway one)."""
    report = record_arrivals(env.landing, env.ledger, registry, settle_seconds=settle_seconds)
    if report.settling and report.settled_at:
        # A one-shot command: wait (once) for files that are still being written, rather than leave them.
        time.sleep(max(0.0, report.settled_at - time.time()) + 0.05)
        report = report.add(record_arrivals(env.landing, env.ledger, registry, settle_seconds=settle_seconds))
    errors = [e.message for e in getattr(registry, "errors", ())]
    pending = env.ledger.tables_with_pending()
    tables = [t for t in registry.tables if t.identifier in pending or retry_failed or t.identifier in reload | rebuild]
    outcome = IngestOutcome(report, {}, True, registry_errors=errors)
    tags = {"lake/trigger": "ingest", RETRY_FAILED_TAG: str(retry_failed).lower()}
    if reload:
        tags[RELOAD_TAG] = ",".join(sorted(reload))
    if rebuild:
        tags[REBUILD_TAG] = ",".join(sorted(rebuild))
    by_source: dict[str, list[AssetKey]] = {}
    for t in tables:
        by_source.setdefault(t.source, []).append(AssetKey(t.asset_key_path))
    with ExitStack() as stack:
        runs_in = instance or stack.enter_context(DagsterInstance.ephemeral())
        reap_dead_runs(runs_in)  # a killed earlier ingest must not hold its source's merge slot
        for source, keys in by_source.items():
            success, events = execute_in_process(defs.resolve_job_def(ingest_job_name(source)), runs_in, keys, tags)
            outcome.success &= success
            _collect(outcome, events)
    return outcome


def _collect(outcome: IngestOutcome, events: list[DagsterEvent]) -> None:
    """What a run's events say: each table's materialization, failed checks, failed tables."""
    for ev in events:
        if ev.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            mat = ev.step_materialization_data.materialization
            outcome.metadata[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
        elif ev.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            check = ev.asset_check_evaluation_data
            if not check.passed:
                line = f"{check.asset_key.to_user_string()} {check.check_name}: " + ", ".join(
                    f"{k} {v.value}" for k, v in check.metadata.items() if k in _CHECK_FIGURES)
                warned = check.severity == AssetCheckSeverity.WARN
                (outcome.warned_checks if warned else outcome.failed_checks).append(line)
        elif ev.event_type == DagsterEventType.STEP_FAILURE:
            error = ev.step_failure_data.error
            outcome.failed_tables.append(error.message.strip() if error else str(ev.event_specific_data))


# What a failed check's line shows (the rest is in its metadata in the UI).
_CHECK_FIGURES = ("duplicate_keys", "rate", "max_rate", "missing_from_snapshots", "stuck_processing", "examples",
                  "failed_files", "quarantined_files", "oldest_unmerged_file_landed_at")


def format_row(key: str, md: dict) -> str:
    return (
        f"  {key:<44} files {md.get('files', 0):>3}  rows {md.get('rows_read', 0):>7}  "
        f"I/U/D {md.get('inserted', 0)}/{md.get('updated', 0)}/{md.get('deleted', 0)}  appended {md.get('appended', 0)}  "
        f"late-ignored {md.get('stale_skipped', 0) + md.get('tombstone_rejected', 0)}  quarantined {md.get('quarantined', 0)}"
        + ("  RELOADED" if md.get("reload") else "")
        + (f"  FAILED FILES {md['failed_files']}" if md.get("failed_files") else "")
    )


def print_outcome(out: IngestOutcome, say=print) -> None:
    r = out.arrivals
    say(f"{r.total} new files recorded ({len(r.unroutable)} unroutable, {r.identical} identical re-deliveries ignored, "
        f"{len(r.content_duplicates)} duplicates of other files)")
    for error in out.registry_errors:
        say(f"  INVALID REGISTRY (its source is not ingested): {error}")
    for _key, reason in r.unroutable:
        say(f"  unroutable: {reason}")
    for key, other in r.content_duplicates:
        say(f"  duplicate: {key} has the same content as {other}; not merged again")
    for key, md in sorted(out.metadata.items()):
        say(format_row(key, md))
    for _key, reason in sorted(out.failed_files.items()):  # by key; each reason names its file
        say(f"  FAILED FILE {reason}")
    for check in out.failed_checks:
        say(f"  FAILED CHECK {check}")
    for check in out.warned_checks:
        say(f"  WARNING {check}")
    for failure in out.failed_tables:
        say(f"  FAILED {failure}")
    if not out.ok:
        say("ingest found problems (above); failed files stay in the ledger and can be retried with --retry-failed")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--retry-failed", action="store_true", help="retry files that failed before")
    p.add_argument("--reload", nargs="+", default=[], metavar="SOURCE.TABLE", help="replace these tables with their next full load")
    p.add_argument("--rebuild", nargs="+", default=[], metavar="SOURCE.TABLE", help="re-derive these tables from their landed files")
    args = p.parse_args(argv)
    # Source-aligned assets only: neither dagster-dbt nor the dbt manifest is touched here.
    from lake_assets.core.registry import load_registry
    from lake_assets.definitions import build_definitions, gc_paused
    from lake_assets.instance import lake_instance

    with gc_paused(freeze=True):  # the registry and definitions live as long as the command
        registry = load_registry()
        defs = build_definitions(registry, with_dbt=False)
    with lake_instance() as instance:  # the one `make ui` shows
        out = ingest(environment_from_env(), defs, registry, instance, args.retry_failed,
                     reload=_named(args.reload, registry), rebuild=_named(args.rebuild, registry),
                     settle_seconds=current_settings().settle_seconds)
    print_outcome(out)
    return 0 if out.ok else 1


if __name__ == "__main__":
    sys.exit(main())
