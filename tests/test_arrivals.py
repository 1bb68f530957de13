"""Recording arrivals: settle time, content duplicates and identical re-deliveries, as the landing
sensor and the ingest command see them (a real landing directory, S3 through moto's server)."""

from __future__ import annotations

import datetime as dt
import os
import textwrap
import time
import uuid

import pytest

from lake_assets.core.arrivals import record_arrivals
from lake_assets.core.landing import LocalLandingZone, S3LandingZone
from lake_assets.core.ledger import DUPLICATE, LANDED, sqlite_ledger
from lake_assets.core.registry import load_registry

SOURCE = """
source: shop
tables:
  - name: orders
    schema: app
    primary_key: [id]
    columns: [{name: id, type: long}]
"""
ORDERS = "shop.orders"
A, B, C = (f"shop/app/orders/20261121-1015{i:05d}.parquet" for i in (0, 1, 2))


class CountingLanding(LocalLandingZone):
    """The local landing zone, counting the files it hashes (hashing reads the whole file)."""

    def __init__(self, root):
        super().__init__(root)
        self.hashed: list[str] = []

    def checksum(self, key: str) -> str:
        self.hashed.append(key)
        return super().checksum(key)


@pytest.fixture
def lake(tmp_path):
    (tmp_path / "sources").mkdir()
    (tmp_path / "sources" / "shop.yaml").write_text(textwrap.dedent(SOURCE))
    return CountingLanding(tmp_path / "landing"), sqlite_ledger(tmp_path / "ledger.db"), load_registry([tmp_path / "sources"])


def land(landing, key: str, data: bytes, mtime: float | None = None) -> float:
    p = landing.root / key
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    if mtime is not None:
        os.utime(p, (mtime, mtime))
    return max(p.stat().st_mtime, p.stat().st_ctime)


def test_a_file_still_settling_is_neither_read_nor_recorded(lake):
    landing, ledger, registry = lake
    t_a = land(landing, A, b"a")
    time.sleep(0.02)
    t_b = land(landing, B, b"b")

    report = record_arrivals(landing, ledger, registry, settle_seconds=30, now=t_b + 5)
    assert (report.settling, report.settled_at, report.recorded) == (2, t_b + 30, {})
    assert landing.hashed == [] and ledger.entries() == []

    report = record_arrivals(landing, ledger, registry, settle_seconds=30, now=t_a + 30.001)  # A settled, B not yet
    assert (report.settling, report.settled_at, report.recorded) == (1, t_b + 30, {ORDERS: 1})
    assert landing.hashed == [A]

    report = record_arrivals(landing, ledger, registry, settle_seconds=30, now=t_b + 31)
    assert (report.settling, report.settled_at, report.recorded) == (0, None, {ORDERS: 1})
    assert [e.key for e in ledger.entries()] == [A, B]


def test_without_a_settle_time_a_file_is_recorded_at_once(lake):
    landing, ledger, registry = lake
    t = land(landing, A, b"a")
    land(landing, B, b"b", mtime=t + 3600)  # a clock ahead of ours
    report = record_arrivals(landing, ledger, registry, now=t)
    assert (report.recorded, report.settling, report.settled_at) == ({ORDERS: 2}, 0, None)


def test_a_copy_that_keeps_an_old_mtime_still_settles(lake):
    landing, ledger, registry = lake
    land(landing, A, b"a", mtime=time.time() - 86_400)  # cp -p of yesterday's file, just finished
    [obj] = landing.list()
    assert obj.modified > time.time() - 60
    assert record_arrivals(landing, ledger, registry, settle_seconds=30).settling == 1


def test_content_duplicates_and_identical_redeliveries_are_reported(lake):
    landing, ledger, registry = lake
    land(landing, A, b"same")
    land(landing, B, b"same")
    report = record_arrivals(landing, ledger, registry)
    assert report.recorded == {ORDERS: 1} and report.content_duplicates == [(B, A)]
    assert {e.key: e.status for e in ledger.entries()} == {A: LANDED, B: DUPLICATE}

    land(landing, A, b"same", mtime=time.time() + 5)  # re-delivered: a new listing version, same bytes
    land(landing, C, b"same")
    report = record_arrivals(landing, ledger, registry)
    assert (report.recorded, report.identical, report.content_duplicates) == ({}, 1, [(C, A)])
    assert report.duplicates == 2 and report.total == 0
    assert ledger.claim(ORDERS)[1][0].key == A and ledger.claim(ORDERS)[1] == []


def test_s3_objects_report_their_last_modified_time(monkeypatch, moto_endpoint):
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    bucket = f"landing-{uuid.uuid4().hex[:8]}"  # moto's server is the session's: other tests' buckets live on
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=f"dms/{A}", Body=b"a")
    head = s3.head_object(Bucket=bucket, Key=f"dms/{A}")
    [obj] = S3LandingZone(bucket, "dms", s3).list()
    assert (obj.key, obj.modified) == (A, head["LastModified"].timestamp())
    assert abs(obj.modified - dt.datetime.now(dt.UTC).timestamp()) < 60


def test_a_local_landing_zone_is_listed_whole_even_with_a_cursor(lake):
    """A directory walk costs the same with a cursor, and a local file may be rewritten in place:
    the landing sensor's cursor does not narrow a local listing."""
    from lake_assets.core.arrivals import ListingCursor

    landing, ledger, registry = lake
    land(landing, B, b"b")
    first = record_arrivals(landing, ledger, registry, cursor=ListingCursor(), lag_seconds=0)
    assert (first.recorded, first.full_listing, first.cursor) == ({ORDERS: 1}, True, None)
    land(landing, A, b"a")  # sorts before B, lands after it
    land(landing, B, b"b2", mtime=time.time() + 5)  # rewritten in place
    second = record_arrivals(landing, ledger, registry, cursor=ListingCursor(after={"shop/app/orders/": B}, full_listed=True),
                             lag_seconds=0)
    assert (second.recorded, second.full_listing) == ({ORDERS: 2}, True)
    assert sorted((e.key, e.file_version) for e in ledger.entries()) == [(A, 1), (B, 1), (B, 2)]
