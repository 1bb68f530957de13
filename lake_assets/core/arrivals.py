"""Recording landed files in the ledger: route each to its registry table, skip what is known or
still being written.

The landing sensor and the demo command both call `record_arrivals`; its work is bounded per call.
Where the landing zone lists from a key (S3), the sensor passes a `ListingCursor`: each table folder
is listed after the newest CDC name already seen there, and every `full_every` passes the whole
landing zone is listed once more, for what a cursor cannot see (see `ListingCursor`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from lake_assets.core.cdc.dms import LandingKeyError, landing_folder, parse_landing_key
from lake_assets.core.cdc.formats import parse_table_key
from lake_assets.core.landing import LandingZone, ListedObject
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
    cursor: ListingCursor | None = None  # where the next call's listing resumes (given a cursor)
    listed: int = 0  # objects the listing returned
    full_listing: bool = True  # whether the whole landing zone was listed

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
        self.cursor = later.cursor
        self.listed += later.listed
        self.full_listing = self.full_listing or later.full_listing
        return self

    @property
    def duplicates(self) -> int:
        """Deliveries not merged again because their content is already recorded (identical
        re-deliveries plus copies under another key)."""
        return self.identical + len(self.content_duplicates)


FULL_LISTING_EVERY = 12  # incremental passes between two full listings
CURSOR_LAG_SECONDS = 900.0  # a folder's cursor passes only names landed at least this long ago
LISTING_SECONDS = 30.0  # an incremental pass stops after this long; the next call goes on from there


@dataclass
class ListingCursor:
    """Where the landing sensor's listing resumes, kept in the sensor's cursor.

    `after`: per table folder, the key S3 lists after (`StartAfter`). It only ever moves to a
    time-ordered CDC name (yyyyMMdd-HHmmssSSS, under date folders or not) that landed at least
    `CURSOR_LAG_SECONDS` ago and sorts before every file of that folder this call skipped. So:
    - full-load names (`LOAD…`) sort after every CDC name and are listed on every pass: a reload's
      new version of LOAD00000001 is seen;
    - a CDC file whose upload finished after a later-named one (parallel uploads) is still listed
      while the later one is within the lag;
    - what no cursor can see (a CDC file rewritten in place, a name sorting before the cursor that
      lands later than the lag, files in folders of no registry table) is found by the full listing
      every `full_every` passes, and on AWS by the SQS sensor in the first place.
    `next_folder`: where a pass whose time ran out stopped. `passes`: completed incremental passes
    since the last full listing.
    """

    after: dict[str, str] = field(default_factory=dict)
    next_folder: int = 0
    passes: int = 0
    full_listed: bool = False  # a full listing has set `after` (a new cursor starts with one)

    def to_json(self) -> dict:
        return {"after": self.after, "next_folder": self.next_folder, "passes": self.passes, "full_listed": self.full_listed}

    @classmethod
    def from_json(cls, doc: dict | None) -> ListingCursor:
        doc = doc or {}
        return cls(dict(doc.get("after", {})), int(doc.get("next_folder", 0)), int(doc.get("passes", 0)),
                   bool(doc.get("full_listed", False)))


def _cursor_name(key: str) -> bool:
    """Whether the listing may resume after this key: a time-ordered (CDC) DMS name."""
    try:
        return not parse_landing_key(key).is_load
    except LandingKeyError:
        return False


def route(
    key: str, registry: Registry, folders: dict[tuple[str, str, str], TableConfig] | None = None
) -> tuple[str | None, str | None]:
    """The table a landed key belongs to (by its folder), provided its name is a file of that table's
    format; else None and why."""
    folders = folders if folders is not None else registry.for_landing_folder()
    try:
        source, schema, folder = landing_folder(key)
    except LandingKeyError as e:
        return None, str(e)
    t = folders.get((source, schema, folder))
    if t is None:
        broken = registry.error_for_source(source)
        if broken is not None:
            return None, f"{key}: the registry file of source {source!r} is invalid, so its tables are not ingested: {broken.message}"
        try:
            parse_landing_key(key)
        except LandingKeyError as e:  # not even a DMS file name: say that first, as before
            return None, str(e)
        return None, f"{key}: no registry table for source {source!r}, schema {schema!r}, table {folder!r}"
    try:
        parse_table_key(key, t)
    except LandingKeyError as e:
        return None, f"{e} (table {t.identifier}, format {t.format})"
    return t.identifier, None


def record_arrivals(
    landing: LandingZone, ledger: FileLedger, registry: Registry, *, limit: int = 5000, settle_seconds: float = 0.0,
    now: float | None = None, cursor: ListingCursor | None = None, full_every: int = FULL_LISTING_EVERY,
    lag_seconds: float = CURSOR_LAG_SECONDS, listing_seconds: float = LISTING_SECONDS,
) -> ArrivalReport:
    """Record new landing files. A file changed less than settle_seconds before `now` (epoch
    seconds, default the clock) may still be being written: it is neither read nor recorded, only
    counted in `settling`, and picked up by a later call.

    Without `cursor` (or on a landing zone that cannot list from a key) the whole landing zone is
    listed, as the ingest command and the demo do. With one, table folders are listed after their
    cursors (see `ListingCursor`) and the returned report carries the next cursor."""
    report = ArrivalReport()
    now = time.time() if now is None else now
    folders = registry.for_landing_folder()
    # Content equal to an earlier file is no duplicate where files are states (snapshots, SQL extracts).
    snapshot_tables = {t.identifier: t.load == "snapshot" or t.format == "sql" for t in registry.tables}
    # Files that routed nowhere earlier may route now (a table was added to the registry).
    for e in ledger.unrouted():
        table_id, _ = route(e.key, registry, folders)
        if table_id:
            routed = ledger.route(e.id, table_id)
            report.rerouted += 1
            if routed.status == DUPLICATE:
                report.content_duplicates.append((routed.key, routed.duplicate_of))
    incremental = cursor is not None and landing.resumable and cursor.full_listed and cursor.passes < full_every
    if incremental:
        assert cursor is not None
        listed, next_folder, completed = _list_incrementally(landing, cursor, sorted(t.landing_prefix for t in registry.tables),
                                                             listing_seconds)
        seen = ledger.seen_versions(o.key for o in listed)  # only the keys listed, not the whole ledger
    else:
        listed, next_folder, completed = list(landing.list()), 0, False
        seen = ledger.seen_versions()
    report.listed, report.full_listing = len(listed), not incremental
    new: list[LandedFile] = []
    skipped: list[str] = []  # keys not recorded by this call although new: a cursor must not pass them
    youngest: float | None = None
    for obj in listed:
        if obj.version in seen.get(obj.key, ()):
            continue
        if settle_seconds > 0 and now - obj.modified < settle_seconds:
            report.settling += 1
            skipped.append(obj.key)
            youngest = obj.modified if youngest is None else max(youngest, obj.modified)
            continue
        if len(new) >= limit:
            report.remaining = True
            skipped.append(obj.key)
            continue
        table_id, reason = route(obj.key, registry, folders)
        snapshot = table_id is not None and snapshot_tables.get(table_id, False)
        new.append(LandedFile(obj.key, landing.checksum(obj.key), obj.size, obj.version, table_id, reason, dedupe=not snapshot))
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
    if cursor is not None and landing.resumable:
        after = _advanced(cursor.after, listed, skipped, {t.landing_prefix for t in registry.tables}, now - lag_seconds)
        if incremental:
            report.cursor = ListingCursor(after, next_folder, cursor.passes + (1 if completed else 0), True)
        else:
            report.cursor = ListingCursor(after, 0, 0, True)
    return report


def _list_incrementally(landing: LandingZone, cursor: ListingCursor, prefixes: list[str],
                        seconds: float) -> tuple[list[ListedObject], int, bool]:
    """List table folders after their cursors, from where the last pass stopped, for at most
    `seconds` (3,000 folders are 3,000 requests). Returns (objects, next folder, pass completed)."""
    if not prefixes:
        return [], 0, True
    start = cursor.next_folder % len(prefixes)
    deadline = time.monotonic() + seconds
    listed: list[ListedObject] = []
    for n in range(len(prefixes)):
        prefix = prefixes[(start + n) % len(prefixes)]
        listed += landing.list(prefix, cursor.after.get(prefix))
        if time.monotonic() >= deadline and n + 1 < len(prefixes):
            return listed, (start + n + 1) % len(prefixes), False
    return listed, start, True


def _advanced(after: dict[str, str], listed: list[ListedObject], skipped: list[str], prefixes: set[str],
              landed_before: float) -> dict[str, str]:
    """Each table folder's cursor moved to its newest listed CDC name that landed before
    `landed_before` and sorts before every key of the folder that was not recorded."""
    def folder(key: str) -> str | None:
        parts = key.split("/")
        prefix = "/".join(parts[:3]) + "/" if len(parts) > 3 else None
        return prefix if prefix in prefixes else None

    blocked: dict[str, str] = {}
    for key in skipped:
        f = folder(key)
        if f is not None and (f not in blocked or key < blocked[f]):
            blocked[f] = key
    out = {f: k for f, k in after.items() if f in prefixes}  # a table gone from the registry drops its cursor
    for obj in listed:
        f = folder(obj.key)
        if f is None or obj.modified > landed_before or not _cursor_name(obj.key):
            continue
        if f in blocked and obj.key >= blocked[f]:
            continue
        if obj.key > out.get(f, ""):
            out[f] = obj.key
    return out


def unclaimed_folders(keys: Iterable[str], registry: Registry) -> dict[str, int]:
    """Landing folders holding files that no registry table claims, with their file counts: the
    `<source>/<schema>/<table>/` folder of each key no table's folder is (a file above that depth:
    its own folder). A source whose registry file is invalid is not unclaimed: its error says why
    its files route nowhere. By folder, in order."""
    claimed = set(registry.for_landing_folder())
    broken = {e.source for e in registry.errors if e.source}
    out: dict[str, int] = {}
    for key in keys:
        parts = key.strip("/").split("/")
        if parts[0] in broken and len(parts) > 1:
            continue
        if len(parts) >= 4:
            if (parts[0], parts[1], parts[2]) in claimed:
                continue  # a claimed folder's misnamed file: routing says why, under its table
            folder = "/".join(parts[:3]) + "/"
        else:
            folder = "/".join(parts[:-1]) + "/" if len(parts) > 1 else ""
        out[folder] = out.get(folder, 0) + 1
    return dict(sorted(out.items()))


def discover_command(landing: LandingZone, folder: str) -> str:
    """The command that drafts a registry entry for a landing folder (lake_assets/discover.py)."""
    root = landing.describe()
    return f"python -m lake_assets.discover {root.rstrip('/')}/{folder}" if folder else f"python -m lake_assets.discover {root}"
