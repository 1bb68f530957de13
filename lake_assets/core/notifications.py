"""S3 event notifications from an SQS queue: what a message says landed, recorded in the file ledger
before the message is deleted.

Delivery is at least once (SQS redelivers a message whose receiver died before deleting it); the
ledger makes it exactly once by key + ETag: a redelivered notification is an identical re-delivery,
no new file version. A message that cannot be read (a poison message) is never deleted here: it
comes back after the queue's visibility timeout until the queue's RedrivePolicy moves it to the
dead-letter queue after `maxReceiveCount` receives. No Dagster here; the SQS sensor is a thin layer.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from lake_assets.core.arrivals import route
from lake_assets.core.landing import LandingZone
from lake_assets.core.ledger import FileLedger, LandedFile
from lake_assets.core.registry import Registry

RECEIVE_BATCH = 10  # SQS returns at most 10 messages per ReceiveMessage


@dataclass(frozen=True)
class QueueMessage:
    id: str
    receipt: str
    body: str
    receive_count: int  # ApproximateReceiveCount: how close a poison message is to the dead-letter queue


class ArrivalQueue(Protocol):
    def describe(self) -> str: ...
    def receive(self, max_messages: int, wait_seconds: int) -> list[QueueMessage]: ...
    def delete(self, messages: list[QueueMessage]) -> list[tuple[QueueMessage, str]]:
        """Delete messages; returns those SQS refused, with its reason."""
        ...


class SqsArrivalQueue:
    """The queue the landing bucket's ObjectCreated notifications are sent to."""

    def __init__(self, url: str, client: Any):  # a boto3 SQS client (no SQS type stubs are installed)
        self.url = url
        self.client = client

    def describe(self) -> str:
        return self.url

    def receive(self, max_messages: int, wait_seconds: int) -> list[QueueMessage]:
        response = self.client.receive_message(
            QueueUrl=self.url, MaxNumberOfMessages=max(1, min(RECEIVE_BATCH, max_messages)), WaitTimeSeconds=wait_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        return [QueueMessage(m["MessageId"], m["ReceiptHandle"], m.get("Body", ""),
                             int(m.get("Attributes", {}).get("ApproximateReceiveCount", 0)))
                for m in response.get("Messages", [])]

    def delete(self, messages: list[QueueMessage]) -> list[tuple[QueueMessage, str]]:
        failed: list[tuple[QueueMessage, str]] = []
        for i in range(0, len(messages), RECEIVE_BATCH):
            chunk = {str(n): m for n, m in enumerate(messages[i : i + RECEIVE_BATCH])}
            response = self.client.delete_message_batch(
                QueueUrl=self.url, Entries=[{"Id": n, "ReceiptHandle": m.receipt} for n, m in chunk.items()])
            failed += [(chunk[f["Id"]], f"{f.get('Code', '')}: {f.get('Message', '')}") for f in response.get("Failed", [])]
        return failed


class PoisonMessage(ValueError):
    """A message that is not an S3 event notification this sensor can read; names what is wrong."""


@dataclass(frozen=True)
class ObjectCreated:
    bucket: str
    key: str  # the S3 key, URL-decoded
    size: int
    etag: str
    event: str  # e.g. ObjectCreated:Put


@dataclass(frozen=True)
class Notification:
    created: list[ObjectCreated]
    ignored: list[tuple[str, str]]  # (key, why): events other than ObjectCreated
    test_event: bool = False  # s3:TestEvent, sent once when the bucket notification is configured


def parse_notification(body: str) -> Notification:
    """An S3 event notification as SQS delivers it (directly, or wrapped by SNS); PoisonMessage
    when it is not one."""
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise PoisonMessage(f"body is not JSON ({e}): {body[:200]!r}") from None
    if isinstance(doc, dict) and doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        return parse_notification(doc["Message"])  # S3 -> SNS -> SQS without raw message delivery
    if not isinstance(doc, dict):
        raise PoisonMessage(f"body is JSON but not an object: {body[:200]!r}")
    if doc.get("Event") == "s3:TestEvent":
        return Notification([], [], test_event=True)
    records = doc.get("Records")
    if not isinstance(records, list) or not records:
        raise PoisonMessage(f"no 'Records' list in the body: {body[:200]!r}")
    created: list[ObjectCreated] = []
    ignored: list[tuple[str, str]] = []
    for n, r in enumerate(records):
        try:
            event = str(r["eventName"])
            s3 = r["s3"]
            bucket = str(s3["bucket"]["name"])
            key = urllib.parse.unquote_plus(str(s3["object"]["key"]))  # S3 URL-encodes keys, '+' for a space
        except (KeyError, TypeError) as e:
            raise PoisonMessage(f"record {n}: missing field {e} (needs eventName, s3.bucket.name, s3.object.key)") from None
        if r.get("eventSource") not in (None, "aws:s3") or not event.startswith("ObjectCreated:"):
            ignored.append((key, f"{r.get('eventSource')} {event}: not an object creation"))
            continue
        obj = s3["object"]
        try:
            size, etag = int(obj["size"]), str(obj["eTag"]).strip('"')
        except (KeyError, TypeError, ValueError) as e:
            raise PoisonMessage(f"record {n} ({key}): {event} without a valid size and eTag ({type(e).__name__}: {e})") from None
        if not etag:
            raise PoisonMessage(f"record {n} ({key}): {event} with an empty eTag")
        created.append(ObjectCreated(bucket, key, size, etag, event))
    return Notification(created, ignored)


@dataclass
class NotificationReport:
    received: int = 0  # messages handled this call (a message received twice counts once)
    deleted: int = 0
    test_events: int = 0
    recorded: dict[str, int] = field(default_factory=dict)  # table id -> new files to merge
    unroutable: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    content_duplicates: list[tuple[str, str | None]] = field(default_factory=list)
    identical: int = 0  # redelivered notifications (or a file the listing recorded first)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (key, why): not landing files
    poison: list[tuple[str, int, str]] = field(default_factory=list)  # (message id, receive count, reason)
    delete_failures: list[tuple[str, str]] = field(default_factory=list)  # (message id, SQS's reason)
    remaining: bool = False  # stopped at the cap of messages or time: more may be waiting

    @property
    def total(self) -> int:
        return sum(self.recorded.values()) + len(self.unroutable)


@dataclass
class ReceivedBatch:
    """Messages received and read, not yet recorded or deleted: `record` then `acknowledge`."""

    files: list[LandedFile]
    done: list[QueueMessage]  # to delete once `files` are recorded
    report: NotificationReport


def receive_batch(queue: ArrivalQueue, landing: LandingZone, registry: Registry, *, max_messages: int = RECEIVE_BATCH,
                  wait_seconds: int = 1, seen: set[str] | None = None) -> ReceivedBatch | None:
    """One ReceiveMessage, read: None when the queue returned nothing new. `seen`: message ids
    handled earlier in this tick (a message not deleted comes back once its visibility timeout
    passes); they are neither read nor counted again."""
    seen = seen if seen is not None else set()
    messages = queue.receive(max_messages, wait_seconds)
    fresh = [m for m in messages if m.id not in seen]
    if not fresh:
        return None
    report = NotificationReport(received=len(fresh))
    folders = registry.for_landing_folder()
    files: list[LandedFile] = []
    done: list[QueueMessage] = []
    for m in fresh:
        seen.add(m.id)
        try:
            note = parse_notification(m.body)
        except PoisonMessage as e:
            report.poison.append((m.id, m.receive_count, str(e)))
            continue  # not deleted: SQS redrives it to the dead-letter queue after maxReceiveCount receives
        report.test_events += note.test_event
        report.ignored += note.ignored
        for obj in note.created:
            key = landing.landing_key(obj.bucket, obj.key)
            if key is None:
                report.ignored.append((obj.key, f"s3://{obj.bucket}/{obj.key} is outside the landing zone {landing.describe()}"))
                continue
            table_id, reason = route(key, registry, folders)
            # The ETag is the S3 listing's version and checksum too, so the listing sensor sees these as known.
            files.append(LandedFile(key, obj.etag, obj.size, obj.etag, table_id, reason))
        done.append(m)
    return ReceivedBatch(files, done, report)


def record_batch(batch: ReceivedBatch, ledger: FileLedger) -> None:
    """Record the batch's files in one ledger transaction (raises LedgerError when it cannot)."""
    # By key, as the listing records them: of two keys with the same content the first is the original.
    recorded = ledger.record(sorted(batch.files, key=lambda f: f.key))
    r = batch.report
    r.identical += recorded.identical
    for e in recorded.entries:
        if e.table_id:
            r.recorded[e.table_id] = r.recorded.get(e.table_id, 0) + 1
        else:
            r.unroutable.append((e.key, e.reason or "unroutable"))
    r.content_duplicates += [(e.key, e.duplicate_of) for e in recorded.duplicates]


def acknowledge(batch: ReceivedBatch, queue: ArrivalQueue) -> None:
    """Delete the messages whose files are recorded. A delete SQS refuses is reported: the message
    comes back and is recorded again as an identical re-delivery."""
    failed = queue.delete(batch.done)
    batch.report.deleted += len(batch.done) - len(failed)
    batch.report.delete_failures += [(m.id, why) for m, why in failed]


def record_notifications(queue: ArrivalQueue, landing: LandingZone, ledger: FileLedger, registry: Registry, *,
                         max_messages: int = 1000, max_seconds: float = 30.0, wait_seconds: int = 1,
                         clock: Callable[[], float] = time.monotonic) -> NotificationReport:
    """Receive, record and delete notifications until the queue is empty, `max_messages` were
    handled or `max_seconds` passed (a sensor tick has 60 s). Each batch is recorded before any of
    its messages is deleted; a ledger error propagates with nothing of that batch deleted."""
    deadline = clock() + max_seconds
    total = NotificationReport()
    seen: set[str] = set()
    while True:
        left = max_messages - total.received
        if left <= 0 or clock() >= deadline:
            total.remaining = True
            break
        batch = receive_batch(queue, landing, registry, max_messages=left, wait_seconds=wait_seconds, seen=seen)
        if batch is None:
            break
        record_batch(batch, ledger)
        acknowledge(batch, queue)
        _add(total, batch.report)
    return total


def _add(total: NotificationReport, part: NotificationReport) -> None:
    total.received += part.received
    total.deleted += part.deleted
    total.test_events += part.test_events
    for t, n in part.recorded.items():
        total.recorded[t] = total.recorded.get(t, 0) + n
    total.unroutable += part.unroutable
    total.content_duplicates += part.content_duplicates
    total.identical += part.identical
    total.ignored += part.ignored
    total.poison += part.poison
    total.delete_failures += part.delete_failures
