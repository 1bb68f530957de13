"""Event streams (`load: events`) as an operator meets them: Firehose-layout files (some gzipped)
of random event histories land, are redelivered, and a merge fails or dies on the way; the lake
holds every good event exactly once and `<table>__errors` every bad line exactly once. Plus the
registry's rules, bad files, the partition spec, the raw files' expiry and the Dagster metadata."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dagster import materialize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake_assets.core.arrivals import record_arrivals, route
from lake_assets.core.cdc.inprocess import InProcessEngine
from lake_assets.core.cdc.pipeline import EngineInterrupted
from lake_assets.core.cdc.runner import MergeOptions, merge_pending
from lake_assets.core.ledger import COMMITTED, FAILED, QUARANTINED
from lake_assets.core.maintenance import EXPIRED, maintain
from lake_assets.core.registry import load_registry
from tests.lakehelpers import TempLake, make_lake
from tests.test_ingest_command import ingest as ingest_command

EXAMPLE = Path(__file__).parent / "data" / "sources" / "clickstream.yaml"
TABLE = "clickstream.clicks"
ERRORS = "clickstream.clicks__errors"
FOLDER = "clickstream/firehose/clicks"
T0 = dt.datetime(2026, 11, 21, 22, 0, tzinfo=dt.UTC)


def lake_of(home: Path, text: str | None = None) -> TempLake:
    return make_lake(home, {"clickstream": text or EXAMPLE.read_text()})


def firehose_key(hour: int, n: int, gz: bool) -> str:
    """Where Firehose writes its n-th file of an hour after T0: YYYY/MM/DD/HH/<stream>-1-<time>-<id>[.gz]."""
    at = T0 + dt.timedelta(hours=hour, minutes=n % 60)
    return f"{FOLDER}/{at:%Y/%m/%d/%H}/clicks-1-{at:%Y-%m-%d-%H-%M-%S}-{n:08d}" + (".gz" if gz else "")


def land(lake: TempLake, key: str, lines: list[str], gz: bool | None = None) -> None:
    data = "\n".join(lines).encode() + (b"\n" if lines else b"")
    path = lake.landing / key
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0: the same events give the same bytes (a redelivery is the same content, as on S3)
    path.write_bytes(gzip.compress(data, mtime=0) if (key.endswith(".gz") if gz is None else gz) else data)


def merge(lake: TempLake, failpoint=lambda name: None, **options):
    """Record arrivals and merge the table, as the sensor and its asset would."""
    record_arrivals(lake.env.landing, lake.env.ledger, lake.registry)
    return merge_pending(lake.registry.get("clickstream", "clicks"), catalog=lake.env.catalog, ledger=lake.env.ledger,
                         landing=lake.env.landing, engine=InProcessEngine(), options=MergeOptions(**options), failpoint=failpoint)


def events_in_lake(lake: TempLake) -> list[tuple]:
    if not lake.env.catalog.table_exists(TABLE):
        return []
    return sorted((r["event_id"], r["user_id"], r["event_time"], r["page"]) for r in lake.rows(TABLE))


def errors_in_lake(lake: TempLake) -> list[tuple]:
    if not lake.env.catalog.table_exists(ERRORS):
        return []
    return sorted((r["file"], r["row"], r["raw"]) for r in lake.rows(ERRORS))


def good(event_id: str, user_id: int, at: dt.datetime, page: str = "home", zone: str = "Z") -> str:
    shown = at.isoformat().replace("+00:00", "Z") if zone == "Z" else at.astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat()
    return json.dumps({"event_id": event_id, "user_id": user_id, "event_time": shown, "page": page})


# --- the registry --------------------------------------------------------------------------------


def test_the_example_yaml_loads_as_an_hourly_or_daily_partitioned_history_table():
    (t,) = load_registry([EXAMPLE.parent], strict=True, cache=False).by_source()["clickstream"]
    assert (t.format, t.load, t.mode, t.quarantine_identifier) == ("jsonl", "events", "history", ERRORS)
    assert [(p.column, p.transform) for p in t.partition_by] == [("event_time", "day")]
    assert t.events is not None and (t.events.required, t.events.raw_retention_days) == (("user_id",), 7)


BASE = "  - name: clicks\n    schema: firehose\n    primary_key: [event_id]\n    format: jsonl\n    mode: history\n"


@pytest.mark.parametrize("entry, message", [
    ("    load: events\n", "field events: load events needs an events block"),
    ("    load: append\n    events: {time_field: at}\n", "field events: only a load events table has an events block"),
    ("    load: events\n    events: {time_field: at, partition: week}\n", "field events.partition"),
    ("    load: events\n    events: {time_field: At}\n", "events.time_field 'At' is not a valid lake identifier"),
    ("    load: events\n    sequence_by: at\n    events: {time_field: at}\n", "field sequence_by: events are appended in file order"),
    ("    load: events\n    partition_by: [{column: at, transform: hour}]\n    events: {time_field: at}\n",
     "field partition_by: an events table is partitioned by events.partition"),
    ("    load: events\n    events: {time_field: at}\n    columns: [{name: event_id}, {name: at, type: string}]\n",
     "field events.time_field: column 'at' has type string"),
    ("    load: events\n    events: {time_field: at, required: [user]}\n    columns: [{name: event_id}, {name: at, type: timestamptz}]\n",
     "field events: field(s) ['user'] are not in columns"),
    ("    load: events\n    events: {time_field: at, raw_retention_days: -1}\n", "field events.raw_retention_days"),
])
def test_an_events_table_that_does_not_fit_fails_at_load_naming_file_table_and_field(tmp_path, entry, message):
    text = f"source: bad\ntables:\n{BASE}{entry}"
    (tmp_path / "bad.yaml").write_text(text)
    (error,) = load_registry([tmp_path], cache=False).errors
    assert error.message.startswith(f"{tmp_path / 'bad.yaml'}: table 'clicks': ") and message in error.message, error.message


def test_a_format_or_mode_that_does_not_fit_events_fails(tmp_path):
    for entry, message in [("format: json", "load events reads newline-delimited JSON events: it needs format jsonl"),
                           ("mode: current", "field mode: load events appends every row once: it needs mode history")]:
        text = f"source: bad\ntables:\n{BASE}    load: events\n    events: {{time_field: at}}\n".replace(
            "format: jsonl" if entry.startswith("format") else "mode: history", entry)
        (tmp_path / "bad.yaml").write_text(text)
        (error,) = load_registry([tmp_path], cache=False).errors
        assert message in error.message, error.message


def test_an_errors_table_name_is_reserved(tmp_path):
    (tmp_path / "bad.yaml").write_text("source: bad\ntables:\n  - {name: x__errors, schema: s, primary_key: [id]}\n")
    (error,) = load_registry([tmp_path], cache=False).errors
    assert "reserved for the lake's own tables" in error.message


def test_only_the_firehose_layout_routes_to_an_events_table(tmp_path):
    lake = lake_of(tmp_path)
    assert route(f"{FOLDER}/2026/11/21/10/clicks-1-2026-11-21-10-00-00-abc.gz", lake.registry) == (TABLE, None)
    assert route(f"{FOLDER}/2026/11/21/10/clicks-1-2026-11-21-10-00-00-abc", lake.registry) == (TABLE, None)
    for key, why in [(f"{FOLDER}/2026/11/21/x.gz", "YYYY/MM/DD/HH/<name>[.gz]"),
                     (f"{FOLDER}/clicks.jsonl", "YYYY/MM/DD/HH/<name>[.gz]"),
                     (f"{FOLDER}/2026/02/30/10/a.gz", "not a calendar hour"),
                     (f"{FOLDER}/2026/11/21/24/a.gz", "not a calendar hour")]:
        table, reason = route(key, lake.registry)
        assert table is None and why in reason and f"table {TABLE}" in reason, reason


# --- random histories against the oracle ---------------------------------------------------------

BAD_LINES = {
    "broken": lambda i: '{"event_id": "b' + str(i) + '", "user_id": ',
    "array": lambda i: f"[{i}, 2, 3]",  # every line differs: no two files are one content (a duplicate delivery)
    "scalar": lambda i: f'"just text {i}"',
    "no_user": lambda i: json.dumps({"event_id": f"b{i}", "event_time": "2026-11-21T10:00:00Z"}),
    "null_time": lambda i: json.dumps({"event_id": f"b{i}", "user_id": 1, "event_time": None}),
    "bad_time": lambda i: json.dumps({"event_id": f"b{i}", "user_id": 1, "event_time": "yesterday at noon"}),
    "naive_time": lambda i: json.dumps({"event_id": f"b{i}", "user_id": 1, "event_time": "2026-11-21T10:00:00"}),
    "bad_user": lambda i: json.dumps({"event_id": f"b{i}", "user_id": "bob", "event_time": "2026-11-21T10:00:00Z"}),
    "bad_name": lambda i: json.dumps({"event_id": f"b{i}", "user_id": 1, "event_time": "2026-11-21T10:00:00Z", "_x": 1}),
}

line_kinds = st.one_of(
    st.tuples(st.just("good"), st.integers(0, 9), st.integers(0, 72 * 60), st.sampled_from(["Z", "+02:00"]),
              st.sampled_from(["home", "cart", "ünïcode"])),
    st.tuples(st.sampled_from(sorted(BAD_LINES)), st.just(0), st.just(0), st.just(""), st.just("")),
)
files = st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.lists(line_kinds, min_size=1, max_size=8),
                           st.integers(0, 2)),  # (hour, gzipped, lines, the round it lands in)
                 min_size=1, max_size=6)
crashes = st.one_of(st.none(), st.tuples(st.sampled_from(["raise", "die"]), st.sampled_from(["before_commit", "after_commit", "before_ledger"]),
                                         st.integers(0, 2)))


def _history_files(drawn) -> list[tuple[str, list[str], list[tuple], list[tuple]]]:
    """(key, lines, good events as the lake holds them, bad lines as (row, raw)) per file."""
    out, n = [], 0
    for f, (hour, gz, kinds, _) in enumerate(drawn):
        lines, events, bad = [], [], []
        for number, (kind, user, minute, zone, page) in enumerate(kinds, start=1):
            n += 1
            if kind == "good":
                at = T0 + dt.timedelta(minutes=minute, microseconds=n)
                lines.append(good(f"e{n}", user, at, page, zone))
                events.append((f"e{n}", user, at, page))
            else:
                lines.append(BAD_LINES[kind](n))
                bad.append((number, lines[-1]))
        out.append((firehose_key(hour, f, gz), lines, events, bad))
    return out


@settings(max_examples=int(os.environ.get("LAKE_EVENTS_EXAMPLES", "15")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(drawn=files, redeliver=st.sets(st.integers(0, 5), max_size=3), crash=crashes)
def test_random_event_histories_land_exactly_once_and_bad_lines_go_to_errors_once(drawn, redeliver, crash):
    home = Path(tempfile.mkdtemp(prefix="events-"))
    try:
        lake = lake_of(home)
        history = _history_files(drawn)
        landed: set[int] = set()
        for round_ in range(3):
            for i, (key, lines, _, _) in enumerate(history):
                if drawn[i][3] == round_:
                    land(lake, key, lines)
                    landed.add(i)
            for i in redeliver:  # Firehose retries: the same content again, under the same key
                if i in landed and i < len(history):
                    land(lake, history[i][0], history[i][1])
            if crash is not None and crash[2] == round_:
                how, point = crash[0], crash[1]

                def failpoint(name: str, point: str = point, how: str = how) -> None:
                    if name == point:  # "die": the process is gone, its batch stays claimed; "raise": the merge fails
                        raise EngineInterrupted(f"died at {name}") if how == "die" else RuntimeError(f"failed at {name}")

                try:
                    merge(lake, failpoint=failpoint)
                except (EngineInterrupted, RuntimeError):
                    pass  # after the merge's own handling (before_ledger is outside it): the batch stays claimed
            merge(lake, retry_failed=True)
        merge(lake, retry_failed=True)  # nothing new: nothing changes
        expected = sorted(e for i in landed for e in history[i][2])
        assert events_in_lake(lake) == expected
        assert errors_in_lake(lake) == sorted((history[i][0], row, raw) for i in landed for row, raw in history[i][3])
        statuses = {e.key: e.status for e in lake.env.ledger.entries(TABLE)}
        assert set(statuses.values()) <= {COMMITTED, QUARANTINED}, statuses
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_a_merge_that_fails_after_writing_errors_leaves_none_behind_and_its_retry_writes_them_once(tmp_path):
    """The errors of a batch are written before its commit; a batch that fails is undone (its error
    rows deleted by batch id) and one that dies is resumed under the same id (written once)."""
    lake = lake_of(tmp_path)
    key = firehose_key(0, 1, True)
    land(lake, key, [good("e1", 1, T0), "{broken", good("e2", 2, T0)])

    def fail(name: str) -> None:
        if name == "before_commit":
            raise RuntimeError("the catalog went away")

    merge(lake, failpoint=fail)
    assert errors_in_lake(lake) == [] and events_in_lake(lake) == []
    assert {e.status for e in lake.env.ledger.entries(TABLE)} == {FAILED}
    merge(lake, retry_failed=True)
    assert errors_in_lake(lake) == [(key, 2, "{broken")] and [e[0] for e in events_in_lake(lake)] == ["e1", "e2"]

    land(lake, firehose_key(1, 2, False), ["[]", good("e3", 3, T0)])

    def die(name: str) -> None:
        if name == "before_commit":
            raise EngineInterrupted("killed")

    with pytest.raises(EngineInterrupted):
        merge(lake, failpoint=die)
    assert len(errors_in_lake(lake)) == 2  # written before the commit that never came
    merge(lake)  # resumed with the same batch id: the errors are not written again
    assert len(errors_in_lake(lake)) == 2 and [e[0] for e in events_in_lake(lake)] == ["e1", "e2", "e3"]


@pytest.mark.parametrize("failpoint", ["before_commit", "after_commit"])
def test_the_ingest_command_killed_mid_merge_lands_events_and_errors_once(tmp_path, failpoint):
    """A real SIGKILL (LAKE_FAILPOINT) between the errors write and the commit, or after it."""
    home, sdir = tmp_path / "lake", tmp_path / "sources"
    sdir.mkdir()
    shutil.copy(EXAMPLE, sdir / "clickstream.yaml")
    lake = lake_of(home)
    land(lake, firehose_key(0, 1, True), [good("e1", 1, T0), '{"event_id": "x"}', good("e2", 2, T0 + dt.timedelta(days=1))])
    out = ingest_command(home, sdir, LAKE_FAILPOINT=failpoint)
    assert out.returncode != 0
    out = ingest_command(home, sdir)  # exits non-zero: one bad event in three crosses quarantine_max_rate
    assert "clickstream.clicks" in out.stdout + out.stderr, out.stdout + out.stderr[-2000:]
    lake = lake_of(home)
    assert [e[0] for e in events_in_lake(lake)] == ["e1", "e2"]
    assert [(row, raw) for _, row, raw in errors_in_lake(lake)] == [(2, '{"event_id": "x"}')]


# --- bad files, partitions, expiry, Dagster ----------------------------------------------------


def test_bad_files_fail_alone_and_the_other_files_keep_flowing(tmp_path):
    lake = lake_of(tmp_path)
    keys = {name: firehose_key(0, n, gz) for n, (name, gz) in enumerate(
        [("ok", True), ("empty", False), ("corrupt", True), ("blank", True), ("binary", False), ("later", False)])}
    land(lake, keys["ok"], [good("e1", 1, T0)])
    land(lake, keys["empty"], [])  # zero bytes: an upload still in progress, or a failed write
    (lake.landing / keys["corrupt"]).write_bytes(gzip.compress(b'{"a": 1}\n' * 100)[:-12])  # truncated gzip
    land(lake, keys["blank"], ["", "  "])  # a gzip of blank lines: no events, nothing to merge
    (lake.landing / keys["binary"]).write_bytes(b"PAR1\x00\x01binary")
    land(lake, keys["later"], [good("e2", 2, T0)])
    run = merge(lake)
    assert [e[0] for e in events_in_lake(lake)] == ["e1", "e2"]
    entries = {e.key: e for e in lake.env.ledger.entries(TABLE)}
    assert entries[keys["ok"]].status == entries[keys["later"]].status == COMMITTED
    assert entries[keys["blank"]].status == QUARANTINED and "no rows" in entries[keys["blank"]].reason
    reasons = run.failed_files
    assert "zero-byte file" in reasons[keys["empty"]]
    assert "truncated or corrupt gzip" in reasons[keys["corrupt"]]
    assert "starts with Parquet magic" in reasons[keys["binary"]]
    assert all(entries[keys[k]].status == FAILED for k in ("empty", "corrupt", "binary"))
    # A corrected delivery of the corrupt file (new content, same key) is merged as its new version.
    land(lake, keys["corrupt"], [good("e3", 3, T0)])
    merge(lake)
    assert [e[0] for e in events_in_lake(lake)] == ["e1", "e2", "e3"]


def test_every_bad_line_goes_to_errors_with_its_reason_and_raw_text(tmp_path):
    lake = lake_of(tmp_path)
    key = firehose_key(0, 0, False)
    land(lake, key, [good("e1", 1, T0)] + [BAD_LINES[k](i) for i, k in enumerate(sorted(BAD_LINES))])
    run = merge(lake)
    (result,) = run.results
    assert (result.appended, result.quarantined) == (1, len(BAD_LINES))
    reasons = {r["row"]: r["reason"] for r in lake.rows(ERRORS)}
    want = {"array": "event is a JSON list, not an object", "bad_name": "field '_x' is not a valid lake column name",
            "bad_time": "time field event_time: value 'yesterday at noon' is not ISO 8601 text with a zone",
            "bad_user": "value 'bob' does not fit column user_id", "broken": "line is not JSON",
            "naive_time": "time field event_time: value '2026-11-21T10:00:00' is not ISO 8601",
            "no_user": "required field user_id is missing", "null_time": "required field event_time is null",
            "scalar": "event is a JSON str, not an object"}
    for row, kind in enumerate(sorted(BAD_LINES), start=2):
        assert want[kind] in reasons[row], (kind, reasons[row])
    assert set(lake.rows(ERRORS)[0]) == {"file", "file_version", "row", "reason", "raw", "batch_id", "quarantined_at"}


def _partition_check(lake: TempLake, transform: str, width: dt.timedelta) -> set:
    tbl = lake.env.catalog.load_table(TABLE)
    (field,) = tbl.spec().fields
    assert str(field.transform) == transform and tbl.schema().find_field(field.source_id).name == "event_time"
    seen = set()
    for task in tbl.scan().plan_files():
        value = task.file.partition[0]  # days (or hours) since the epoch
        start = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + value * width
        times = pq.read_table(task.file.file_path.removeprefix("file://")).column("event_time").to_pylist()
        assert all(start <= t < start + width for t in times), (value, times)
        seen.add(value)
    return seen


@pytest.mark.parametrize("partition, width", [("day", dt.timedelta(days=1)), ("hour", dt.timedelta(hours=1))])
def test_the_table_is_partitioned_by_the_event_time_not_the_arrival_hour(tmp_path, partition, width):
    lake = lake_of(tmp_path, EXAMPLE.read_text().replace("partition: day", f"partition: {partition}"))
    # One Firehose file (one arrival hour) holding events of three days and late events of earlier hours.
    times = [T0 - dt.timedelta(hours=30), T0, T0 + dt.timedelta(hours=1), T0 + dt.timedelta(hours=26)]
    land(lake, firehose_key(0, 0, True), [good(f"e{i}", i, t, zone="+02:00") for i, t in enumerate(times)])
    merge(lake)
    seen = _partition_check(lake, partition, width)
    assert len(seen) == len({int((t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) / width) for t in times})


def test_epoch_millis_event_times(tmp_path):
    text = EXAMPLE.read_text().replace("time_field: event_time ", "time_format: epoch_millis\n      time_field: event_time ")
    lake = lake_of(tmp_path, text)
    ms = int(T0.timestamp() * 1000)
    land(lake, firehose_key(0, 0, False), [json.dumps({"event_id": "a", "user_id": 1, "event_time": ms}),
                                             json.dumps({"event_id": "b", "user_id": 1, "event_time": ms + 1.5}),
                                             json.dumps({"event_id": "c", "user_id": 1, "event_time": "soon"})])
    merge(lake)
    assert [(r["event_id"], r["event_time"]) for r in sorted(lake.rows(TABLE), key=lambda r: r["event_id"])] == [
        ("a", T0), ("b", T0 + dt.timedelta(microseconds=1500))]
    (err,) = lake.rows(ERRORS)
    assert err["row"] == 3 and "is not a number (epoch millis)" in err["reason"]


def test_raw_files_expire_after_their_retention_only_when_merged_and_a_redelivery_stays_once(tmp_path):
    lake = lake_of(tmp_path)
    merged, failed, errors_only = firehose_key(0, 0, True), firehose_key(0, 1, True), firehose_key(0, 2, False)
    land(lake, merged, [good("e1", 1, T0)])
    (lake.landing / failed).write_bytes(b"\x1f\x8b not really gzip")
    land(lake, errors_only, ["{broken"])
    merge(lake)
    table = lake.registry.get("clickstream", "clicks")
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=6)
    report = maintain(lake.env.catalog, lake.env.ledger, table, now=soon, landing=lake.env.landing)
    assert report.raw_files_expired == 0 and all((lake.landing / k).exists() for k in (merged, failed, errors_only))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=8)
    report = maintain(lake.env.catalog, lake.env.ledger, table, now=later, landing=lake.env.landing)
    assert report.raw_files_expired == 2
    assert not (lake.landing / merged).exists() and not (lake.landing / errors_only).exists()
    assert (lake.landing / failed).exists()  # not merged: kept for its retry
    entries = {e.key: e for e in lake.env.ledger.entries(TABLE)}
    assert entries[merged].archived_to.startswith(f"{EXPIRED} ") and "raw_retention_days 7" in entries[merged].archived_to
    assert entries[failed].archived_to is None
    # Firehose redelivers the expired file: the ledger still knows its content, nothing is merged twice.
    land(lake, merged, [good("e1", 1, T0)])
    merge(lake)
    assert [e[0] for e in events_in_lake(lake)] == ["e1"]
    assert maintain(lake.env.catalog, lake.env.ledger, table, now=later, landing=lake.env.landing).raw_files_expired == 0


def test_raw_files_are_kept_without_a_retention(tmp_path):
    lake = lake_of(tmp_path, EXAMPLE.read_text().replace("raw_retention_days: 7", "raw_retention_days: null"))
    land(lake, firehose_key(0, 0, True), [good("e1", 1, T0)])
    merge(lake)
    far = dt.datetime.now(dt.UTC) + dt.timedelta(days=3650)
    table = lake.registry.get("clickstream", "clicks")
    assert maintain(lake.env.catalog, lake.env.ledger, table, now=far, landing=lake.env.landing).raw_files_expired == 0
    assert (lake.landing / firehose_key(0, 0, True)).exists()


def test_the_materialization_reports_events_and_errors(tmp_path, monkeypatch):
    from lake_assets.definitions import build_definitions

    monkeypatch.setenv("LAKE_HOME", str(tmp_path))
    lake = lake_of(tmp_path)
    land(lake, firehose_key(0, 0, True), [good("e1", 1, T0), "nope", good("e2", 1, T0)])
    record_arrivals(lake.env.landing, lake.env.ledger, lake.registry)
    defs = build_definitions(lake.registry, with_dbt=False)
    result = materialize(list(defs.assets), resources=dict(defs.resources), raise_on_error=False)
    (md,) = [e.materialization.metadata for e in result.get_asset_materialization_events()
             if e.materialization.asset_key.to_user_string() == "source_aligned/clickstream/clicks"]
    assert (md["appended"].value, md["errors"].value, md["errors_table"].value) == (2, 1, ERRORS)


PAYLOADS = {
    "clean": [good("e1", 1, T0), good("e2", 2, T0, zone="+02:00")],
    "extra fields": [json.dumps({"event_id": "e1", "user_id": 1, "event_time": "2026-11-21T10:00:00Z", "score": 1}),
                     json.dumps({"event_id": "e2", "user_id": 2, "event_time": "2026-11-21T10:00:00.5+01:00", "score": 2.5, "flag": True})],
    "required null or missing": [good("e1", 1, T0), json.dumps({"event_id": "e2", "user_id": None, "event_time": "2026-11-21T10:00:00Z"}),
                                 json.dumps({"event_id": "e3", "event_time": "2026-11-21T10:00:00Z"})],
    "bad values": [good("e1", 1, T0), json.dumps({"event_id": "e2", "user_id": 1, "event_time": "2026-11-21T10:00:00"}),
                   json.dumps({"event_id": "e3", "user_id": 1.5, "event_time": "2026-11-21T10:00:00Z"})],
    "blank line": [good("e1", 1, T0), " ", good("e2", 1, T0)],
    "CRLF": [good("e1", 1, T0) + "\r", good("e2", 1, T0) + "\r"],
    "upper case and CRLF": [json.dumps({"Event_Id": "e1", "USER_ID": 7, "event_time": "2026-11-21T10:00:00Z"}) + "\r"],
    "undeclared time text": [json.dumps({"event_id": "e1", "user_id": 1, "event_time": "2026-11-21T10:00:00Z", "at": "2026-11-21 10:00:00"})],
    "nested": [json.dumps({"event_id": "e1", "user_id": 1, "event_time": "2026-11-21T10:00:00Z", "ctx": {"a": [1]}})],
    "every line bad": ["{", "[]"],
}


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_the_arrow_reader_and_the_line_reader_give_the_same_rows_and_errors(tmp_path, name, monkeypatch):
    """Clean files are read by Arrow at once; anything else line by line. Both must agree exactly."""
    from lake_assets.core.cdc import events

    table = lake_of(tmp_path).registry.get("clickstream", "clicks")
    f = events.parse_key(firehose_key(0, 0, False))
    data = ("\n".join(PAYLOADS[name]) + "\n").encode()
    required = ("event_time", "event_id", "user_id")
    took_arrow = events._read_clean("where", data, table, required) is not None
    assert took_arrow == (name not in ("nested", "every line bad", "undeclared time text", "upper case and CRLF",
                                       "blank line"))
    fast = events.read_events_file(f, data, table)
    monkeypatch.setattr(events, "_read_clean", lambda *args: None)
    slow = events.read_events_file(f, data, table)
    assert fast.table.sort_by(ROW_SORT).to_pylist() == slow.table.sort_by(ROW_SORT).to_pylist()
    assert set(fast.table.schema.names) == set(slow.table.schema.names)
    assert {f.name: f.type for f in fast.table.schema} == {f.name: f.type for f in slow.table.schema}
    assert [(q.row, q.reason, q.raw) for q in fast.quarantined] == [(q.row, q.reason, q.raw) for q in slow.quarantined]


ROW_SORT = [("_row", "ascending")]


def test_an_s3_landing_zone_deletes_an_expired_file_only_while_its_content_is_the_merged_one(monkeypatch, moto_endpoint):
    import boto3

    from lake_assets.core.landing import S3LandingZone

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    bucket = f"landing-{uuid.uuid4().hex[:8]}"  # the session's server is shared
    s3.create_bucket(Bucket=bucket)
    zone = S3LandingZone(bucket, "raw/", s3)
    key = firehose_key(0, 0, True)
    etag = s3.put_object(Bucket=bucket, Key="raw/" + key, Body=b"merged")["ETag"].strip('"')
    s3.put_object(Bucket=bucket, Key="raw/" + key, Body=b"a new version")
    assert zone.delete(key, etag) is False and [o.key for o in zone.list()] == [key]
    assert zone.delete(key, zone.checksum(key)) is True and list(zone.list()) == []
    with pytest.raises(FileNotFoundError):
        zone.delete(key, etag)


def test_the_sources_maintenance_job_expires_raw_files_and_reports_them(tmp_path, monkeypatch):
    import dagster as dg

    from lake_assets.definitions import build_definitions

    monkeypatch.setenv("LAKE_HOME", str(tmp_path))
    monkeypatch.setenv("LAKE_SOURCES_DIR", str(tmp_path / "sources"))
    lake = lake_of(tmp_path, EXAMPLE.read_text().replace("raw_retention_days: 7", "raw_retention_days: 0"))
    key = firehose_key(0, 0, True)
    land(lake, key, [good("e1", 1, T0)])
    merge(lake)
    defs = build_definitions(lake.registry, with_dbt=False)
    with dg.DagsterInstance.ephemeral() as instance:
        result = defs.resolve_job_def("maintain_clickstream").execute_in_process(instance=instance)
        assert result.success
        [obs] = [e.asset_observation_data.asset_observation for e in result.all_events
                 if e.event_type == dg.DagsterEventType.ASSET_OBSERVATION]
    assert obs.metadata["raw_files_expired"].value == 1 and not (lake.landing / key).exists()
    assert [e[0] for e in events_in_lake(lake)] == ["e1"]
