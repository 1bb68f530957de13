"""A run launcher whose run processes are started ahead of time (dagster.yaml `run_launcher`).

Dagster's default launcher starts each run in a fresh process that imports Dagster, dagster-dbt and
the code location before doing anything: 4-5 s on this machine for a merge that takes under one.
This launcher keeps one process per code location waiting with all of that loaded
(`lake_assets.run_worker`); a run is handed to it and a new one starts loading for the next run. Each
run still has a process of its own, as with the default launcher, and a worker that finds the code
changed since it loaded it runs the run in a fresh process instead (`dagster api execute_run`), so a
run always executes the code on disk.

It runs where runs are launched, the daemon's run queue; other processes that open the instance
(webserver, code server, runs) only load the class and start nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Any

from dagster import Field
from dagster._core.launcher.base import LaunchRunContext, RunLauncher
from dagster._core.origin import RepositoryPythonOrigin
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, ConfigurableClassData, serialize_value

from lake_assets.run_processes import PROCESS_RUN_TAG, PROCESS_TAG, is_alive, process_tags

log = logging.getLogger(__name__)



class _Worker:
    """A `python -m lake_assets.run_worker` process: loading or loaded, waiting for its run."""

    def __init__(self, origin: RepositoryPythonOrigin):
        self.origin = origin
        cwd = origin.code_pointer.working_directory if hasattr(origin.code_pointer, "working_directory") else None
        self.process = subprocess.Popen(
            [origin.executable_path or sys.executable, "-m", "lake_assets.run_worker", serialize_value(origin)],
            stdin=subprocess.PIPE, text=True, cwd=cwd or None,
        )

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def hand(self, args: ExecuteRunArgs) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(serialize_value(args) + "\n")
        self.process.stdin.close()

    def discard(self) -> None:
        if self.alive and self.process.stdin is not None:
            self.process.stdin.close()  # a waiting worker exits when its stdin closes


class WarmProcessRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run in its own process, taken from `warm_workers` processes kept loaded per code location."""

    def __init__(self, inst_data: ConfigurableClassData | None = None, warm_workers: int = 1):
        self._inst_data = inst_data
        self.warm_workers = max(0, warm_workers)
        self._idle: dict[str, list[_Worker]] = {}  # by code location origin id
        self._running: dict[str, _Worker] = {}
        self._lock = threading.Lock()
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {"warm_workers": Field(int, is_required=False, default_value=1,
                                      description="Processes kept loaded per code location, waiting for runs")}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> WarmProcessRunLauncher:
        return cls(inst_data=inst_data, warm_workers=config_value.get("warm_workers", 1))

    def _take(self, origin: RepositoryPythonOrigin) -> _Worker:
        with self._lock:
            idle = [w for w in self._idle.get(origin.get_id(), []) if w.alive]
            worker = idle.pop(0) if idle else None
            self._idle[origin.get_id()] = idle
        return worker or _Worker(origin)

    def _refill(self, origin: RepositoryPythonOrigin) -> None:
        with self._lock:
            idle = self._idle.setdefault(origin.get_id(), [])
            while len(idle) < self.warm_workers:
                idle.append(_Worker(origin))

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = run.job_code_origin
        if origin is None:
            raise ValueError(f"run {run.run_id} has no code origin to load its job from")
        worker = self._take(origin.repository_origin)
        # Tagged before the worker starts the run: a STARTED run always names its own process.
        self._instance.add_run_tags(run.run_id, process_tags(run.run_id, worker.process.pid))
        worker.hand(ExecuteRunArgs(job_origin=origin, run_id=run.run_id, instance_ref=self._instance.get_ref()))
        with self._lock:
            self._running[run.run_id] = worker
        threading.Thread(target=self._watch, args=(run.run_id, worker), daemon=True, name=f"lake-run-{run.run_id[:8]}").start()
        self._refill(origin.repository_origin)  # loads while this run executes

    def _watch(self, run_id: str, worker: _Worker) -> None:
        """A run whose process ended without finishing it (killed, out of memory) is failed, as the
        default launcher's code server does, instead of staying STARTED for ever."""
        code = worker.process.wait()
        with self._lock:
            self._running.pop(run_id, None)
        run = self._instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            self._instance.report_run_failed(run, f"The run's process (pid {worker.process.pid}) exited with code {code} "
                                                  "before the run finished.")

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        identity = run.tags.get(PROCESS_TAG, "") if run.tags.get(PROCESS_RUN_TAG) == run_id else ""
        pid = identity.split(":")[1] if identity.count(":") >= 2 else ""
        if not pid.isdigit() or not is_alive(identity):
            return False
        self._instance.report_run_canceling(run)
        try:
            os.kill(int(pid), signal.SIGINT)  # the run process turns it into a cancellation of the run
        except ProcessLookupError:
            return False
        return True

    def join(self, timeout: int = 30) -> None:
        with self._lock:
            running = list(self._running.values())
        for worker in running:
            try:
                worker.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("run process %s still running after %ss", worker.process.pid, timeout)

    def dispose(self) -> None:
        with self._lock:
            idle = [w for ws in self._idle.values() for w in ws]
            self._idle.clear()
        for worker in idle:
            worker.discard()
