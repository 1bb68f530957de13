"""Exactly once under SIGKILL: the merging process dies at each dangerous point, a re-run yields
exactly the source's state, and re-running with nothing new changes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from demo.generate import generate_travel
from lake_assets.core.deployment import REPO_ROOT, local_environment
from lake_assets.core.registry import load_registry
from lake_assets.core.settings import current_settings

FAILPOINTS = ["after_claim", "before_commit", "after_commit", "before_ledger", "after_ledger"]
TRAVEL = REPO_ROOT / "lake_assets" / "sources" / "travel.yaml"


def _merge_on_read(tmp_path: Path, monkeypatch) -> None:
    """The demo's travel source with every table `write: merge_on_read`, as the lake's only source."""
    sources = tmp_path / "sources"
    sources.mkdir()
    text = TRAVEL.read_text()
    assert "\ndefaults:\n" in text
    (sources / "travel.yaml").write_text(text.replace("\ndefaults:\n", "\ndefaults:\n  write: merge_on_read\n", 1))
    monkeypatch.setenv("LAKE_SOURCES_DIR", str(sources))
    current_settings.cache_clear()


def _ingest(home: Path, failpoint: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "LAKE_FAILPOINT")}
    env |= {"LAKE_HOME": str(home), "LAKE_ENV": "local", "PYTHONWARNINGS": "ignore"}
    if failpoint:
        env["LAKE_FAILPOINT"] = failpoint
    return subprocess.run([sys.executable, "-m", "lake_assets.ingest"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _state(home: Path) -> dict[str, list]:
    env = local_environment(home)
    out = {}
    for t in load_registry().by_source()["travel"]:
        cols = [c.name for c in t.columns if t.lands(c.name)]
        rows = env.catalog.load_table(t.identifier).scan().to_arrow().to_pylist()
        if t.mode == "scd2":  # its current versions are the source's rows (every version: tests/test_cdc_contract.py)
            rows = [r for r in rows if r["_is_current"]]
        out[t.name] = sorted(tuple(str(r[c]) if isinstance(r[c], Decimal) else r[c] for c in cols) for r in rows)
    return out


def _expected(source, round_index: int) -> dict[str, list]:
    out = {}
    for t in load_registry().by_source()["travel"]:
        cols = [c.name for c in t.columns if t.lands(c.name)]
        rows = source.expected_after(round_index)[t.name]
        out[t.name] = sorted(tuple(str(r[c]) if isinstance(r[c], Decimal) else r[c] for c in cols) for r in rows)
    return out


# Every failpoint with the demo's tables as they are (write: auto); the two around the commit also
# with every table merge-on-read, where a commit adds delete files.
CASES = [(f, "auto") for f in FAILPOINTS] + [(f, "merge_on_read") for f in ("before_commit", "after_commit")]


@pytest.mark.parametrize(("failpoint", "write"), CASES)
def test_sigkill_then_rerun_gives_exactly_the_source_state(tmp_path, failpoint, write, monkeypatch):
    if write == "merge_on_read":
        _merge_on_read(tmp_path, monkeypatch)
    source = generate_travel(tmp_path / "source", customers=60, hotels=10, bookings=200, cdc_rounds=2)
    source.deliver(0, tmp_path / "landing")
    assert _ingest(tmp_path).returncode == 0
    source.deliver(1, tmp_path / "landing")

    crashed = _ingest(tmp_path, failpoint)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]

    rerun = _ingest(tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-2000:]
    assert _state(tmp_path) == _expected(source, 1)
    if write == "merge_on_read":  # the crash hit a batch that removed rows with delete files
        env = local_environment(tmp_path)
        assert any(t.delete_files for tbl in load_registry().by_source()["travel"]
                   for t in env.catalog.load_table(tbl.identifier).scan().plan_files())
    ledger = local_environment(tmp_path).ledger
    for t in load_registry().by_source()["travel"]:
        counts = ledger.status_counts(t.identifier)
        assert counts["processing"] == 0 and counts["landed"] == 0, (t.identifier, counts)


def test_rerun_with_nothing_new_changes_nothing(tmp_path):
    source = generate_travel(tmp_path / "source", customers=60, hotels=10, bookings=200, cdc_rounds=1)
    source.deliver(0, tmp_path / "landing")
    source.deliver(1, tmp_path / "landing")
    assert _ingest(tmp_path).returncode == 0
    env = local_environment(tmp_path)
    snapshots = {t.identifier: env.catalog.load_table(t.identifier).current_snapshot().snapshot_id for t in load_registry().by_source()["travel"]}
    again = _ingest(tmp_path)
    assert again.returncode == 0
    assert "0 new files recorded" in again.stdout
    after = {t.identifier: env.catalog.load_table(t.identifier).current_snapshot().snapshot_id for t in load_registry().by_source()["travel"]}
    assert after == snapshots
    assert _state(tmp_path) == _expected(source, 1)
