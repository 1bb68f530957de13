"""Test support: a throwaway local lake and a registry built from YAML text."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

from lake_assets.core.arrivals import record_arrivals
from lake_assets.core.cdc.inprocess import InProcessEngine
from lake_assets.core.cdc.runner import MergeOptions, TableRun, merge_pending
from lake_assets.core.deployment import LakeEnvironment, local_environment
from lake_assets.core.registry import Registry, load_registry


@dataclass
class TempLake:
    home: Path
    env: LakeEnvironment
    registry: Registry

    @property
    def landing(self) -> Path:
        return self.home / "landing"

    def ingest(self, engine=None, **options) -> tuple:
        """Record arrivals and merge every table with pending files, as the sensor + assets would.
        options: MergeOptions fields. Returns (arrival report, {table id: TableRun})."""
        report = record_arrivals(self.env.landing, self.env.ledger, self.registry)
        runs: dict[str, TableRun] = {}
        for t in self.registry.tables:
            runs[t.identifier] = merge_pending(
                t, catalog=self.env.catalog, ledger=self.env.ledger, landing=self.env.landing,
                engine=engine or InProcessEngine(), options=MergeOptions(**options),
            )
        return report, runs

    def rows(self, identifier: str, columns: list[str] | None = None) -> list[dict]:
        t = self.env.catalog.load_table(identifier).scan().to_arrow()
        if columns:
            t = t.select(columns)
        return t.to_pylist()


def make_lake(home: Path, sources_yaml: dict[str, str] | None = None, builtin: bool = False) -> TempLake:
    dirs = []
    if sources_yaml:
        sdir = home / "sources"
        sdir.mkdir(parents=True, exist_ok=True)
        for name, text in sources_yaml.items():
            (sdir / f"{name}.yaml").write_text(textwrap.dedent(text))
        dirs.append(sdir)
    if builtin:
        from lake_assets.core.registry import BUILTIN_SOURCES_DIR

        dirs.insert(0, BUILTIN_SOURCES_DIR)
    return TempLake(home, local_environment(home), load_registry(dirs))
