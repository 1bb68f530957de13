"""Recording landed files in the ledger: route each to its registry table, skip what is known.

The landing sensor and the demo command both call `record_arrivals`; its work is bounded per call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lake_assets.core.cdc.dms import LandingKeyError, parse_landing_key
from lake_assets.core.landing import LandingZone
from lake_assets.core.ledger import FileLedger, LandedFile
from lake_assets.core.registry import Registry


@dataclass
class ArrivalReport:
    recorded: dict[str, int] = field(default_factory=dict)  # table id -> new files
    unroutable: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    duplicates: int = 0
    rerouted: int = 0
    remaining: bool = False  # more new files than this call's limit

    @property
    def total(self) -> int:
        return sum(self.recorded.values()) + len(self.unroutable)


def route(key: str, registry: Registry, folders=None) -> tuple[str | None, str | None]:
    folders = folders if folders is not None else registry.for_landing_folder()
    try:
        f = parse_landing_key(key)
    except LandingKeyError as e:
        return None, str(e)
    t = folders.get((f.source, f.schema, f.table))
    if t is None:
        return None, f"{key}: no registry table for source {f.source!r}, schema {f.schema!r}, table {f.table!r}"
    return t.identifier, None


def record_arrivals(landing: LandingZone, ledger: FileLedger, registry: Registry, limit: int = 5000) -> ArrivalReport:
    report = ArrivalReport()
    folders = registry.for_landing_folder()
    # Files that routed nowhere earlier may route now (a table was added to the registry).
    for e in ledger.unrouted():
        table_id, _ = route(e.key, registry, folders)
        if table_id:
            ledger.route(e.id, table_id)
            report.rerouted += 1
    seen = ledger.seen_versions()
    new = []
    for obj in landing.list():
        if obj.version in seen.get(obj.key, ()):
            continue
        if len(new) >= limit:
            report.remaining = True
            break
        table_id, reason = route(obj.key, registry, folders)
        new.append(LandedFile(obj.key, landing.checksum(obj.key), obj.size, obj.version, table_id, reason))
    entries, report.duplicates = ledger.record(new)
    for e in entries:
        if e.table_id:
            report.recorded[e.table_id] = report.recorded.get(e.table_id, 0) + 1
        else:
            report.unroutable.append((e.key, e.reason or "unroutable"))
    return report
