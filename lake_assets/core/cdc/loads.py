"""Full loads: which LOAD files make up a table's current load, and when a batch starts a new one.

A table's *current load* is the set of LOAD files merged since its last reload, recorded in every
lake commit's snapshot summary (`lake.current-load`, as ranges of LOAD numbers).

- A LOAD file whose name is not yet in the current load joins it, whatever its number or arrival
  order (LOAD00000002 before LOAD00000001 is normal with parallel uploads).
- A reload starts only when a new version of a LOAD file already in the current load arrives
  (DMS rewrites LOAD00000001 on a table reload), or when an operator asked for one. A reload
  replaces the table with the new load's rows and the CDC that follows; nothing of the old load
  survives. A number comparison never starts a reload.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyiceberg.table import Table

from lake_assets.core.cdc.iceberg import BATCH_ID, lake_snapshots

CURRENT_LOAD = "lake.current-load"
RELOAD = "lake.reload"


def encode_load_set(numbers: set[int]) -> str:
    """LOAD numbers as ranges, '1-4,7': a load of thousands of files stays a short summary value."""
    out: list[str] = []
    run: list[int] = []
    for n in sorted(numbers):
        if run and n == run[-1] + 1:
            run.append(n)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [n]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def decode_load_set(text: str) -> set[int]:
    out: set[int] = set()
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def current_load(tbl: Table) -> set[int]:
    """LOAD numbers of the table's current load, from its newest lake commit.

    Walks back past commits the lake did not make (compaction, maintenance), which carry no lake
    properties."""
    for snap in lake_snapshots(tbl):
        props = snap.summary.additional_properties if snap.summary else {}
        if BATCH_ID in props and CURRENT_LOAD in props:
            return decode_load_set(props[CURRENT_LOAD])
    return set()


@dataclass(frozen=True)
class LoadDecision:
    reload: bool
    current: set[int]  # the current load after this batch
    reason: str | None = None  # why the batch reloads

    def summary(self) -> dict[str, str]:
        return {CURRENT_LOAD: encode_load_set(self.current), RELOAD: str(self.reload).lower()}


def decide_load(current: set[int], batch_loads: list[int], *, reload_requested: bool) -> LoadDecision:
    """Whether a batch with these LOAD files reloads the table, and the current load after it."""
    loads = set(batch_loads)
    if not loads:
        return LoadDecision(False, set(current))
    again = sorted(loads & current)
    if again:
        names = ", ".join(f"LOAD{n:08X}" for n in again[:3]) + (" ..." if len(again) > 3 else "")
        return LoadDecision(True, loads, f"a new version of {names}, already in the current load, arrived")
    if reload_requested:
        return LoadDecision(True, loads, "an operator requested a reload")
    return LoadDecision(False, current | loads)
