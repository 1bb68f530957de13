"""A run process started ahead of its run (lake_assets/run_launcher.py): it loads Dagster, the code
location and what merges and dbt builds import, then waits on stdin for the one run it executes.

    python -m lake_assets.run_worker <serialized RepositoryPythonOrigin>

If the code changed on disk while it waited (its files' sizes and times), it hands the run to a
fresh `dagster api execute_run` instead, so a run never executes code older than the run.
"""

from __future__ import annotations

import gc
import hashlib
import os
import sys
from pathlib import Path

from lake_assets.core.settings import REPO_ROOT, current_settings

CODE_DIRS = ("lake_assets", "resources", "dbt_project/models", "dbt_project/macros", "dbt_project/tests",
             "dbt_project/governance")
CODE_FILES = ("dbt_project/dbt_project.yml", "dbt_project/profiles.yml", "workspace.yaml")


def code_fingerprint() -> str:
    """What the code location is built from: this checkout's code and dbt project, and the registry."""
    h = hashlib.blake2b(digest_size=16)
    paths: list[Path] = [REPO_ROOT / f for f in CODE_FILES]
    for folder in CODE_DIRS:
        paths += sorted(p for p in (REPO_ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for sources in current_settings().sources_dirs:
        paths += sorted(sources.glob("*.y*ml"))
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        h.update(f"{p}:{st.st_mtime_ns}:{st.st_size};".encode())
    return h.hexdigest()


def _warm(origin_json: str) -> None:
    """Everything a run would load first: the repository with its jobs, the merge and dbt imports."""
    from dagster._core.origin import RepositoryPythonOrigin
    from dagster._serdes import deserialize_value
    from dagster._utils.hosted_user_process import recon_repository_from_origin

    origin = deserialize_value(origin_json, RepositoryPythonOrigin)
    repository = recon_repository_from_origin(origin).get_definition()
    for job in repository.get_all_jobs():
        job.get_job_snapshot()
    import duckdb  # noqa: F401 - imported now rather than in the run
    import pyiceberg.catalog.sql  # noqa: F401

    import lake_assets.core.cdc.inprocess  # noqa: F401


def main(argv: list[str]) -> int:
    _warm(argv[0])  # may regenerate dbt files from the registry (only when their content changes)
    loaded = code_fingerprint()
    gc.freeze()  # what is loaded lives as long as the process: later collections skip it
    line = sys.stdin.readline().strip()
    if not line:
        return 0  # the launcher went away, or discarded this worker
    if code_fingerprint() != loaded:
        # The code changed while this process waited: run in a process that loads it afresh.
        os.execv(sys.executable, [sys.executable, "-m", "dagster", "api", "execute_run", line])
    from dagster._cli.api import execute_run_command

    execute = execute_run_command.callback  # the function behind `dagster api execute_run`
    assert execute is not None
    execute(line, None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
