"""The CDC contract of DESIGN.md written out plainly, one change at a time: the one oracle every
engine test compares with.

`TableOracle` is what a batch of files does to a table (positions, winners, tombstones, loads and
reloads, history); `LandingOracle` is what the ledger makes of what lands (identical re-deliveries,
duplicate content under another name, file versions). Nothing here shares code with the lake: it
compares typed Python values where the lake compares encoded strings.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
LOAD_NAME = re.compile(r"^LOAD([0-9A-F]{8})$")


@dataclass(frozen=True)
class OracleFile:
    """One file of a batch: its landing key, its version and its rows as written (CDC rows carry "Op")."""

    key: str
    rows: tuple[dict, ...]
    version: int = 1

    @property
    def base(self) -> str:
        return self.key.rsplit("/", 1)[-1].split(".", 1)[0]

    @property
    def load_number(self) -> int | None:
        m = LOAD_NAME.match(self.base)
        return int(m.group(1), 16) if m else None


class BadValue(ValueError):
    pass


def sequence_value(kind: str, v):
    """The comparable value of a sequence_by value of the table's declared type, or BadValue."""
    if v is None:
        return None
    if kind in ("long", "int"):
        if isinstance(v, bool):
            raise BadValue(v)
        if isinstance(v, int):
            return Decimal(v)
        text = str(v).strip()
        if not re.fullmatch(r"[+-]?\d+", text):
            raise BadValue(v)
        n = int(text)
        if not -(2**63) <= n < 2**63:
            raise BadValue(v)
        return Decimal(n)
    if kind == "string" or kind.startswith("decimal"):
        text = str(v).strip()
        if not _NUMBER.match(text):
            raise BadValue(v)
        try:
            return Decimal(text)
        except InvalidOperation:
            raise BadValue(v) from None
    if kind in ("timestamp", "timestamptz"):
        if isinstance(v, str):
            try:
                v = dt.datetime.fromisoformat(v.strip())
            except ValueError:
                raise BadValue(v) from None
        return v if v.tzinfo is not None else v.replace(tzinfo=dt.UTC)
    if kind == "date":
        if isinstance(v, str):
            try:
                return dt.date.fromisoformat(v.strip())
            except ValueError:
                raise BadValue(v) from None
        return v
    raise AssertionError(f"unknown sequence kind {kind}")


DEBEZIUM_OPS = {"c": "I", "r": "I", "u": "U", "d": "D", "t": "T"}


def debezium_change(line):
    """(op, phase, image, sequence) of a Debezium line, or None when it is a bad row. The sequence is
    source.lsn, else the tuple (source.ts_ms, source.pos, source.row); r rows rank like full-load rows."""
    if not isinstance(line, dict):
        return None
    event = line["payload"] if "op" not in line and isinstance(line.get("payload"), dict) else line
    op = event.get("op")
    if op not in DEBEZIUM_OPS:
        return None
    source = event.get("source") or {}
    if source.get("lsn") is not None:
        seq = (source["lsn"],)
    elif source.get("ts_ms") is not None and source.get("pos") is not None:
        seq = (source["ts_ms"], source["pos"], source.get("row") or 0)
    else:
        return None
    image = {} if op == "t" else event.get("before" if op == "d" else "after")
    if not isinstance(image, dict):
        return None
    return DEBEZIUM_OPS[op], (0 if op == "r" else 1), image, seq


def snapshot_row_is_bad(r: dict, keys: tuple[str, ...]) -> bool:
    """A file-drop row the lake quarantines: a null key, or a `val` that is not a whole number."""
    if any(r.get(k) is None for k in keys):
        return True
    v = r.get("val")
    return v is not None and not (isinstance(v, int) or (isinstance(v, str) and re.fullmatch(r"-?\d+", v)))


@dataclass
class Counts:
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    stale_skipped: int = 0
    tombstone_rejected: int = 0
    appended: int = 0
    quarantined: int = 0
    reload: bool = False


@dataclass
class TableOracle:
    """A source-aligned table under the contract. keys: primary key columns; sequence: the declared
    type of the sequence_by column `seq` (None: no sequence_by); columns: the data columns kept."""

    columns: tuple[str, ...]
    keys: tuple[str, ...] = ("id",)
    sequence: str | None = None
    mode: str = "current"
    rows: dict = field(default_factory=dict)  # key -> (position, row)
    tombstones: dict = field(default_factory=dict)  # key -> position of the delete
    current_load: set = field(default_factory=set)
    history: list = field(default_factory=list)
    quarantine: list = field(default_factory=list)  # (file key, version, row number)
    track_history_on: tuple[str, ...] | None = None  # scd2: None tracks every column but seq
    era: int = 0  # scd2: reloads so far; every change of a later era follows every earlier one
    log: dict = field(default_factory=dict)  # scd2: key -> [(order, op, row)], every change ever merged
    truncated_below: tuple | None = None  # position of the newest truncate merged
    snapshot_file: tuple | None = None  # (name, version) of the newest snapshot file merged

    def _position(self, f: OracleFile, n: int, r: dict):
        """(phase, sequence, name, version, row, key); raises BadValue for a bad row."""
        is_load = f.load_number is not None
        seq = ()
        if self.sequence is not None:
            value = sequence_value(self.sequence, r.get("seq"))
            if value is None and not is_load:
                raise BadValue("null sequence")
            seq = (0,) if value is None else (1, value)
        return (0 if is_load else 1, seq, f.base, f.version, n, f.key)

    def merge(self, files: list[OracleFile], *, reload_requested: bool = False) -> Counts:
        counts = Counts()
        changes = []
        for f in files:
            for n, r in enumerate(f.rows, start=1):
                op = r.get("Op", "I") if f.load_number is None else "I"
                try:
                    if any(r.get(k) is None for k in self.keys):
                        raise BadValue("null key")
                    pos = self._position(f, n, r)
                except BadValue:
                    self.quarantine.append((f.key, f.version, n))
                    counts.quarantined += 1
                    continue
                row = {c: r.get(c) for c in self.columns}
                changes.append((pos, op, row, f, n))
        loads = {f.load_number for f in files if f.load_number is not None}
        if loads and (loads & self.current_load or reload_requested):
            counts.reload, self.current_load = True, set(loads)
        else:
            self.current_load |= loads
        if self.mode == "scd2":
            self._merge_scd2(changes, counts)
            return counts
        if self.mode == "history":
            for _pos, op, row, f, n in changes:
                self.history.append({**row, "_lake_op": op, "_lake_file": f.key, "_lake_row": n})
            counts.appended = len(changes)
            return counts
        if counts.reload:
            self.rows, self.tombstones = {}, {}
        self._apply(changes, counts)
        return counts

    def _apply(self, changes: list, counts: Counts) -> None:
        """Current mode: truncates first (every row below the newest one goes, and so does every
        change below it, now or late), then each key's newest change against the table's row."""
        cuts = [pos for pos, op, _, _, _ in changes if op == "T"]
        newest_cut = max(cuts, default=None)
        if newest_cut is not None and (self.truncated_below is None or newest_cut > self.truncated_below):
            for key in [k for k, (pos, _) in self.rows.items() if pos < newest_cut]:
                del self.rows[key]
                self.tombstones[key] = newest_cut
                counts.deleted += 1
            self.truncated_below = newest_cut
        kept = []
        for change in changes:
            if change[1] == "T":
                continue
            if self.truncated_below is not None and change[0] < self.truncated_below:
                counts.tombstone_rejected += 1
                continue
            kept.append(change)
        changes = kept
        win: dict = {}
        for pos, op, row, _, _ in changes:
            key = tuple(row[k] for k in self.keys)
            if key not in win or pos > win[key][0]:
                win[key] = (pos, op, row)
        for key, (pos, op, row) in win.items():
            if not counts.reload and key in self.tombstones and pos < self.tombstones[key]:
                counts.tombstone_rejected += 1
                continue
            held = self.rows.get(key)
            if held is None:
                if op == "D":
                    self.tombstones[key] = pos
                else:
                    self.rows[key] = (pos, row)
                    self.tombstones.pop(key, None)
                    counts.inserted += 1
            elif pos > held[0]:
                if op == "D":
                    del self.rows[key]
                    self.tombstones[key] = pos
                    counts.deleted += 1
                else:
                    self.rows[key] = (pos, row)
                    self.tombstones.pop(key, None)
                    counts.updated += 1
            else:
                counts.stale_skipped += 1

    def merge_debezium(self, files: list[OracleFile]) -> Counts:
        """Files of Debezium lines (a dict envelope, None for a tombstone, text for a broken line)."""
        counts = Counts()
        changes = []
        for f in files:
            for n, line in enumerate(f.rows, start=1):
                if line is None:
                    continue  # a tombstone
                change = debezium_change(line)
                if change is None or (change[0] != "T" and any(change[2].get(k) is None for k in self.keys)):
                    self.quarantine.append((f.key, f.version, n))
                    counts.quarantined += 1
                    continue
                op, phase, row, seq = change
                pos = (phase, seq, f.base, f.version, n, f.key)
                changes.append((pos, op, {c: row.get(c) for c in self.columns}, f, n))
        if self.mode == "history":
            for _pos, op, row, f, n in changes:
                self.history.append({**row, "_lake_op": op, "_lake_file": f.key, "_lake_row": n})
            counts.appended = len(changes)
            return counts
        self._apply(changes, counts)
        return counts

    def merge_snapshots(self, files: list[OracleFile], *, allow_empty: bool = False) -> Counts:
        """Snapshot files: the newest (name, version) is the table, unless an earlier merge took a newer one.
        A file with no good row fails (it is not merged at all) unless empty snapshots are allowed."""
        counts = Counts()
        readable = []
        for f in files:
            good, bad = [], []
            for n, r in enumerate(f.rows, start=1):
                (bad if snapshot_row_is_bad(r, self.keys) else good).append((n, r))
            if not good and not allow_empty:
                continue  # the file fails alone: nothing of it is merged or quarantined
            readable.append((f, good, bad))
        for f, _good, bad in readable:
            for n, _ in bad:
                self.quarantine.append((f.key, f.version, n))
                counts.quarantined += 1
        if not readable:
            return counts
        f, good, bad = max(readable, key=lambda x: (x[0].base, x[0].version))
        if self.snapshot_file is not None and (f.base, f.version) <= self.snapshot_file:
            return counts
        self.snapshot_file = (f.base, f.version)
        new = {}
        for n, r in good:
            new[tuple(r[k] for k in self.keys)] = (n, {c: r.get(c) for c in self.columns})
        protected = {tuple(r.get(k) for k in self.keys) for _, r in bad}
        for key in list(self.rows):
            if key not in new and key not in protected:
                del self.rows[key]
                counts.deleted += 1
        for key, (n, row) in new.items():
            held = self.rows.get(key)
            if held is None:
                counts.inserted += 1
            elif held[1] != row:
                counts.updated += 1
            else:
                continue
            self.rows[key] = ((f.base, f.version, n), row)
        return counts

    def _tracked(self, row: dict) -> tuple:
        track = self.track_history_on or tuple(c for c in self.columns if c != "seq")
        return tuple(row.get(c) for c in track)

    def versions_of(self, events: list) -> list[dict]:
        """A key's versions, replaying its changes in order: a change whose tracked columns differ
        opens a version (closing the open one), one whose tracked columns are the same updates it."""
        versions: list[dict] = []
        current = None
        for order, op, row in sorted(events, key=lambda e: e[0]):
            value = row.get("seq")
            if op == "D":
                if current is not None:
                    versions.append({**current, "_valid_to": value, "_is_current": False})
                    current = None
            elif current is not None and self._tracked(current) == self._tracked(row):
                current = {**current, **row, "_last": order}
            else:
                if current is not None:
                    versions.append({**current, "_valid_to": value, "_is_current": False})
                current = {**row, "_valid_from": value, "_from": order, "_last": order}
        if current is not None:
            versions.append({**current, "_valid_to": None, "_is_current": True})
        return versions

    def _merge_scd2(self, changes: list, counts: Counts) -> None:
        if counts.reload:
            self.era += 1
            loaded = [(pos, row) for pos, _, row, f, _ in changes if f.load_number is not None]
            valued = [(pos, row["seq"]) for pos, row in loaded if row.get("seq") is not None]
            closing = max(valued, key=lambda pv: pv[0])[1] if valued else None
            in_load = {tuple(row[k] for k in self.keys) for _, row in loaded}
            for key, events in self.log.items():
                versions = self.versions_of(events)
                if versions and versions[-1]["_is_current"] and key not in in_load:
                    events.append(((self.era, (-1,)), "D", {"seq": closing}))  # below every change of the era
        before = {key: self.versions_of(events) for key, events in self.log.items()}
        for pos, op, row, f, n in changes:
            key = tuple(row[k] for k in self.keys)
            order = (self.era, pos)
            # The one change the lake cannot place exactly: inside a version updated in place after it.
            if any(v["_from"] < order < v["_last"] for v in before.get(key, [])):
                self.quarantine.append((f.key, f.version, n))
                counts.quarantined += 1
                continue
            self.log.setdefault(key, []).append((order, op, row))  # a delete's row: its sequence value closes

    def scd2_rows(self) -> list[dict]:
        """Every version of every key: the data columns, _valid_from, _valid_to, _is_current."""
        out = []
        for key in sorted(self.log):
            for v in self.versions_of(self.log[key]):
                out.append({**{c: v.get(c) for c in self.columns},
                            **{c: v[c] for c in ("_valid_from", "_valid_to", "_is_current")}})
        return out

    def current_rows(self) -> list[dict]:
        return [row for _, (_, row) in sorted(self.rows.items(), key=lambda kv: kv[0])]


@dataclass
class LandingOracle:
    """What the ledger makes of the landing zone's state at each ingest."""

    recorded: set = field(default_factory=set)  # (key, checksum)
    checksums: set = field(default_factory=set)  # content recorded for the table
    versions: dict = field(default_factory=dict)  # key -> highest version
    dedupe: bool = True  # False for snapshot loads: the same content under a new name is a new snapshot

    def arrivals(self, landed: dict[str, tuple[str, tuple[dict, ...]]]) -> list[OracleFile]:
        """landed: key -> (checksum, rows) as the landing zone holds them now. Returns the files the
        next merge takes: new content under a key becomes its next version; content already
        recorded for the table (under any name) is no new change."""
        out = []
        for key in sorted(landed):
            checksum, rows = landed[key]
            if (key, checksum) in self.recorded:
                continue  # identical re-delivery
            self.recorded.add((key, checksum))
            version = self.versions.get(key, 0) + 1
            self.versions[key] = version
            if self.dedupe and checksum in self.checksums:
                continue  # the same content under another name: a duplicate delivery
            self.checksums.add(checksum)
            out.append(OracleFile(key, rows, version))
        return out
