"""Which process runs a run, and what happens to runs whose process died.

A run killed with its process (SIGKILL, out of memory, a machine restart) stays STARTED in the
instance and keeps the concurrency slot of its source's merge pool (`merge_<source>`, one at a
time): every later merge of that source would wait for it for ever. So every run the lake starts
carries PROCESS_TAG, "<host>:<pid>:<process start time>" (and PROCESS_RUN_TAG, its own run id), and `reap_dead_runs` (the ingest
command before it merges, the landing sensor at every tick) fails the in-progress runs of this
host whose process is gone and frees their slots, and frees slots held by runs that ended. The ledger's table lock is what keeps a merge
exactly once; this only keeps Dagster's bookkeeping from blocking the next merge.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

PROCESS_TAG = "lake/process"
# The run the process tag was written for: a re-execution copies its parent's tags, and must not be
# judged by its parent's (long gone) process.
PROCESS_RUN_TAG = "lake/process_run"
IN_PROGRESS = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
               DagsterRunStatus.CANCELING]


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux /proc), or "" where unknown: with
    the pid, it tells a process from a later one that got the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name in parentheses may hold spaces


def process_identity(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def process_tags(run_id: str, pid: int | None = None) -> dict[str, str]:
    """The tags naming the process that runs `run_id` (this one unless `pid`)."""
    return {PROCESS_TAG: process_identity(pid), PROCESS_RUN_TAG: run_id}


def is_alive(identity: str) -> bool | None:
    """Whether the process an identity names still runs; None when it names another host's."""
    host, _, rest = identity.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return not started or _start_time(pid) == started


def reap_dead_runs(instance: DagsterInstance) -> list[str]:
    """Fail the in-progress runs of this host whose process is gone, freeing their concurrency slots;
    returns their run ids."""
    reaped = []
    for run in instance.get_runs(RunsFilter(statuses=IN_PROGRESS)):
        identity = run.tags.get(PROCESS_TAG)
        if not identity or run.tags.get(PROCESS_RUN_TAG) != run.run_id or is_alive(identity) is not False:
            continue
        instance.report_run_failed(run, f"The process that ran this run ({identity}) is gone (killed or crashed); "
                                        "its merges resume in the next run, which the ledger keeps exactly once.")
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        reaped.append(run.run_id)
    return reaped + _free_orphan_slots(instance)


def _free_orphan_slots(instance: DagsterInstance) -> list[str]:
    """Slots held by runs that ended, or that the run storage does not know (a run storage reset
    under a live event log): nothing will ever release them. Returns those run ids."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    holders = {s.run_id for key in storage.get_concurrency_keys() for s in storage.get_concurrency_info(key).claimed_slots}
    freed = []
    for run_id in sorted(holders):
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            storage.free_concurrency_slots_for_run(run_id)
            freed.append(run_id)
    return freed
