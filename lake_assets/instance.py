"""The lake's Dagster instance: run history, schedules and sensor cursors under the settings'
`dagster_home` ($DAGSTER_HOME, else $LAKE_HOME/dagster), configured by the repository's dagster.yaml
(dagster.aws.yaml with LAKE_ENV=aws).

Dagster reads its configuration from $DAGSTER_HOME/dagster.yaml only, so the repository's file is
written there (and kept current) before anything opens the instance: `make ui`, the ingest command,
the demo. A dagster.yaml there that does not carry MANAGED_MARKER belongs to its user and is left alone.

    python -m lake_assets.instance      # write it, print the directory
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from dagster import DagsterInstance

from lake_assets.core.settings import REPO_ROOT, LakeSettings, current_settings

INSTANCE_CONFIG = REPO_ROOT / "dagster.yaml"  # local: SQLite storage under the instance directory
AWS_INSTANCE_CONFIG = REPO_ROOT / "dagster.aws.yaml"  # aws: PostgreSQL storage, the ledger's server
MANAGED_MARKER = "# lake-managed:"


def prepare_dagster_home(settings: LakeSettings | None = None) -> Path:
    """The instance directory, with the repository's dagster.yaml in it; returns the directory."""
    settings = settings or current_settings()
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    wanted = instance_config(settings).read_text(encoding="utf-8")
    current = target.read_text(encoding="utf-8") if target.exists() else None
    if current != wanted and (current is None or MANAGED_MARKER in current):
        fd, tmp = tempfile.mkstemp(dir=home, prefix=".dagster-", suffix=".yaml")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(wanted)
        os.replace(tmp, target)  # a daemon reading it sees the old file or the new one
    return home


def instance_config(settings: LakeSettings) -> Path:
    """The repository's instance configuration for the deployment."""
    return AWS_INSTANCE_CONFIG if settings.env == "aws" else INSTANCE_CONFIG


def lake_instance(settings: LakeSettings | None = None) -> DagsterInstance:
    """The lake's instance, as `make ui` shows it. DAGSTER_HOME is set for this process: the
    configuration places storage under it."""
    home = prepare_dagster_home(settings)
    os.environ["DAGSTER_HOME"] = str(home)
    return DagsterInstance.get()


if __name__ == "__main__":
    print(prepare_dagster_home())
    sys.exit(0)
