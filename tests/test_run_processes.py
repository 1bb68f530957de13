"""Runs whose process died do not block the next merge: their concurrency slots are freed."""

from __future__ import annotations

import subprocess
import uuid

from dagster import DagsterRunStatus
from dagster._core.storage.dagster_run import DagsterRun

from lake_assets.core.settings import current_settings
from lake_assets.instance import lake_instance
from lake_assets.run_processes import PROCESS_RUN_TAG, PROCESS_TAG, process_identity, reap_dead_runs

POOL = "merge_shop"


def _instance(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKE_HOME", str(tmp_path / "lake"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "lake" / "dagster"))  # restored after the test
    current_settings.cache_clear()
    instance = lake_instance()
    instance.event_log_storage.set_concurrency_slots(POOL, 1)
    return instance


def _started_run(instance, identity: str, tagged_for: str | None = None) -> str:
    run_id = str(uuid.uuid4())
    instance.add_run(DagsterRun(job_name="ingest_shop", run_id=run_id, status=DagsterRunStatus.STARTED,
                                tags={PROCESS_TAG: identity, PROCESS_RUN_TAG: tagged_for or run_id}))
    assert instance.event_log_storage.claim_concurrency_slot(POOL, run_id, "merge_shop").is_claimed
    return run_id


def _dead_process_identity() -> str:
    done = subprocess.Popen(["true"])
    done.wait()
    return process_identity(done.pid).rsplit(":", 1)[0] + ":1"  # its pid, gone; any start time


def test_a_run_whose_process_is_gone_is_failed_and_frees_its_slot(tmp_path, monkeypatch):
    instance = _instance(tmp_path, monkeypatch)
    alive = _started_run(instance, process_identity())  # this process: alive, left alone
    instance.event_log_storage.free_concurrency_slots_for_run(alive)
    dead = _started_run(instance, _dead_process_identity())
    assert reap_dead_runs(instance) == [dead]
    assert instance.get_run_by_id(dead).status == DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(alive).status == DagsterRunStatus.STARTED
    assert instance.event_log_storage.get_concurrency_info(POOL).active_slot_count == 0
    assert reap_dead_runs(instance) == []


def test_a_slot_held_by_a_run_the_instance_does_not_know_is_freed(tmp_path, monkeypatch):
    instance = _instance(tmp_path, monkeypatch)
    assert instance.event_log_storage.claim_concurrency_slot(POOL, "run-from-a-reset-storage", "merge_shop").is_claimed
    assert reap_dead_runs(instance) == ["run-from-a-reset-storage"]
    assert instance.event_log_storage.get_concurrency_info(POOL).active_slot_count == 0


def test_a_re_execution_is_not_judged_by_its_parents_process(tmp_path, monkeypatch):
    """A re-execution copies its parent's tags, which name the parent's (gone) process: left alone."""
    instance = _instance(tmp_path, monkeypatch)
    child = _started_run(instance, _dead_process_identity(), tagged_for="the-parent-run")
    assert reap_dead_runs(instance) == []
    assert instance.get_run_by_id(child).status == DagsterRunStatus.STARTED
