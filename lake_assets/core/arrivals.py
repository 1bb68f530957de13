"""Recording landed files in the ledger: route each to its registry table, skip what is known or
still being written.

The landing sensor and the demo command both call `record_arrivals`; its work is bounded per call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lake_assets.core.cdc.dms import LandingKeyError, parse_landing_key
from lake_assets.core.landing import LandingZone
from lake_assets.core.ledger import DUPLICATE, FileLedger, LandedFile
from lake_assets.core.registry import Registry, TableConfig


@dataclass
class ArrivalReport:
    recorded: dict[str, int] = field(default_factory=dict)  # table id -> new files to merge
    unroutable: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    content_duplicates: list[tuple[str, str | None]] = field(default_factory=list)  # (key, duplicate_of): same content, another key
    identical: int = 0  # identical re-deliveries (same key, same content): nothing recorded
    rerouted: int = 0
    remaining: bool = False  # more new files than this call's limit
    settling: int = 0  # files changed less than settle_seconds ago: not read yet
    settled_at: float | None = None  # epoch seconds when the youngest settling file will have settled

    @property
    def total(self) -> int:
        return sum(self.recorded.values()) + len(self.unroutable)

    def add(self, later: ArrivalReport) -> ArrivalReport:
        """This report followed by a later call's (the settling files it waited for)."""
        for table, n in later.recorded.items():
            self.recorded[table] = self.recorded.get(table, 0) + n
        self.unroutable += later.unroutable
        self.content_duplicates += later.content_duplicates
        self.identical += later.identical
        self.rerouted += later.rerouted
        self.remaining = later.remaining
        self.settling, self.settled_at = later.settling, later.settled_at
        return self

    @property
    def duplicates(self) -> int:
        """Deliveries not merged again because their content is already recorded (identical
        re-deliveries plus copies under another key)."""
        return self.identical + len(self.content_duplicates)


def route(
    key: str, registry: Registry, folders: dict[tuple[str, str, str], TableConfig] | None = None
) -> tuple[str | None, str | None]:
    folders = folders if folders is not None else registry.for_landing_folder()
    try:
        f = parse_landing_key(key)
    except LandingKeyError as e:
        return None, str(e)
    t = folders.get((f.source, f.schema, f.table))
    if t is None:
        broken = registry.error_for_source(f.source)
        if broken is not None:
            return None, f"{key}: the registry file of source {f.source!r} is invalid, so its tables are not ingested: {broken.message}"
        return None, f"{key}: no registry table for source {f.source!r}, schema {f.schema!r}, table {f.table!r}"
    return t.identifier, None


def record_arrivals(
    landing: LandingZone, ledger: FileLedger, registry: Registry, *, limit: int = 5000, settle_seconds: float = 0.0,
    now: float | None = None,
) -> ArrivalReport:
    """Record new landing files. A file changed less than settle_seconds before `now` (epoch
    seconds, default the clock) may still be being written: it is neither read nor recorded, only
    counted in `settling`, and picked up by a later call."""
    report = ArrivalReport()
    now = time.time() if now is None else now
    folders = registry.for_landing_folder()
    # Files that routed nowhere earlier may route now (a table was added to the registry).
    for e in ledger.unrouted():
        table_id, _ = route(e.key, registry, folders)
        if table_id:
            routed = ledger.route(e.id, table_id)
            report.rerouted += 1
            if routed.status == DUPLICATE:
                report.content_duplicates.append((routed.key, routed.duplicate_of))
    seen = ledger.seen_versions()
    new: list[LandedFile] = []
    youngest: float | None = None
    for obj in landing.list():
        if obj.version in seen.get(obj.key, ()):
            continue
        if settle_seconds > 0 and now - obj.modified < settle_seconds:
            report.settling += 1
            youngest = obj.modified if youngest is None else max(youngest, obj.modified)
            continue
        if len(new) >= limit:
            report.remaining = True
            break
        table_id, reason = route(obj.key, registry, folders)
        new.append(LandedFile(obj.key, landing.checksum(obj.key), obj.size, obj.version, table_id, reason))
    if youngest is not None:
        report.settled_at = youngest + settle_seconds
    # By key: when the same content lands under two names at once, the earlier name is the original
    # (the listing's order is the file system's, which is no order at all).
    recorded = ledger.record(sorted(new, key=lambda f: f.key))
    report.identical = recorded.identical
    for e in recorded.entries:
        if e.table_id:
            report.recorded[e.table_id] = report.recorded.get(e.table_id, 0) + 1
        else:
            report.unroutable.append((e.key, e.reason or "unroutable"))
    report.content_duplicates += [(e.key, e.duplicate_of) for e in recorded.duplicates]
    return report
