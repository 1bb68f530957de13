"""Slack alerts, wired into the code location only when a Slack token is configured (settings.slack):

- `slack_on_run_failure`: every failed run of the location's jobs, with its error and a link.
- `slack_on_table_alerts`: a table whose files failed or whose quarantine rate was breached, from
  the `ledger_reconciled` and `quarantine_rate` check evaluations (lake_assets/checks.py), wherever
  they ran: after a merge or executed alone.
"""

from __future__ import annotations

import json

from dagster import (
    AssetCheckEvaluation,
    DagsterEventType,
    DefaultSensorStatus,
    EventRecordsFilter,
    RunFailureSensorContext,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from lake_assets.checks import LEDGER_RECONCILED, QUARANTINE_RATE
from lake_assets.core.settings import LakeSettings
from lake_assets.core.slack import post_message

ALERTED_CHECKS = (LEDGER_RECONCILED, QUARANTINE_RATE)
EVENTS_PER_TICK = 500  # bounded work per tick; the cursor carries on from the last one read
MAX_TEXT = 2900  # Slack truncates a section's text at 3,000 characters


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def run_failure_text(context: RunFailureSensorContext, webserver_url: str | None) -> str:
    run = context.dagster_run
    lines = [f":red_circle: Run of job `{run.job_name}` failed (`{run.run_id[:8]}`)"]
    if context.failure_event.message:
        lines.append(context.failure_event.message)
    for step in context.get_step_failure_events()[:5]:
        error = getattr(step.event_specific_data, "error", None)
        while error is not None and error.cause is not None:  # Dagster wraps the op's exception: show its own
            error = error.cause
        lines.append(f"• step `{step.step_key}`: {error.message.strip() if error is not None else step.message}")
    if webserver_url:
        lines.append(f"{webserver_url}/runs/{run.run_id}")
    return _clip("\n".join(lines))


def check_alert_text(evaluation: AssetCheckEvaluation) -> str:
    """What an operator needs first: which table, what broke, which files."""
    table = "/".join(evaluation.asset_key.path)
    meta = {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}
    if evaluation.check_name == QUARANTINE_RATE:
        head = f":warning: `{table}`: quarantine rate breached ({QUARANTINE_RATE})"
    else:
        head = f":warning: `{table}`: landed files did not reach the table ({LEDGER_RECONCILED})"
    lines = [head]
    if evaluation.description:
        lines.append(evaluation.description)
    details = ", ".join(f"{k} {json.dumps(v) if not isinstance(v, (int, float, str)) else v}" for k, v in meta.items()
                        if k in ("failed_files", "missing_from_snapshots", "stuck_processing", "quarantined_files",
                                 "quarantined", "rows_read", "rate", "max_rate", "quarantine_rate") and v not in (0, None))
    if details:
        lines.append(details)
    files = meta.get("files")
    if isinstance(files, str) and files.strip():
        lines.append(files)
    return _clip("\n".join(lines))


def build_alert_sensors(settings: LakeSettings) -> list[SensorDefinition]:
    """The alert sensors for `settings` (empty without a Slack token). Running by default: an
    operator who configured a token wants the alerts."""
    if settings.slack is None:
        return []
    webserver_url = settings.slack.webserver_url

    @run_failure_sensor(name="slack_on_run_failure", default_status=DefaultSensorStatus.RUNNING,
                        description=f"Posts every failed run to Slack {settings.slack.channel}")
    def slack_on_run_failure(context: RunFailureSensorContext) -> None:
        post_message(settings, run_failure_text(context, webserver_url))

    @sensor(name="slack_on_table_alerts", minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING,
            description=f"Posts to Slack {settings.slack.channel} when a table's files fail or its quarantine rate is breached")
    def slack_on_table_alerts(context: SensorEvaluationContext):
        after = int(context.cursor) if context.cursor else None
        if after is None:
            # First tick: start from now, not from every failure in the instance's history.
            latest = context.instance.get_event_records(
                EventRecordsFilter(DagsterEventType.ASSET_CHECK_EVALUATION), limit=1, ascending=False)
            context.update_cursor(str(latest[0].storage_id if latest else 0))
            return SkipReason("cursor set at the newest check evaluation; alerts from here on")
        records = context.instance.get_event_records(
            EventRecordsFilter(DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=after), limit=EVENTS_PER_TICK, ascending=True)
        posted = 0
        for record in records:
            entry = record.event_log_entry.dagster_event
            evaluation = entry.event_specific_data if entry is not None else None
            if isinstance(evaluation, AssetCheckEvaluation) and evaluation.check_name in ALERTED_CHECKS and not evaluation.passed:
                post_message(settings, check_alert_text(evaluation))
                posted += 1
            # Advance past each record once posted: a Slack error retries only what was not sent.
            context.update_cursor(str(record.storage_id))
        if not posted:
            return SkipReason(f"{len(records)} check evaluation(s), none a failed {' or '.join(ALERTED_CHECKS)}")
        return None

    return [slack_on_run_failure, slack_on_table_alerts]
