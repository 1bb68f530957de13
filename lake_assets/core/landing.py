"""The landing zone: where producers drop files. A local directory or an S3 prefix, one interface."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


# Where archived files go (`archive: true` tables), under the landing root: a folder no source can
# be named (source names start with a letter), never listed or routed as a landed file.
ARCHIVE_FOLDER = "_archive"


def is_archived(key: str) -> bool:
    return key.split("/", 1)[0] == ARCHIVE_FOLDER


@dataclass(frozen=True)
class ListedObject:
    key: str  # relative to the landing root, '/'-separated
    size: int
    version: str  # changes when the object is rewritten (mtime+size locally, ETag on S3)
    modified: float  # epoch seconds of the last write (mtime, or ctime if later, locally; LastModified on S3)


class LandingZone(Protocol):
    # Whether `list(folder, start_after)` is cheaper than a full listing (S3 lists from a key on
    # the server). The landing sensor keeps per-folder cursors only where it is.
    resumable: bool

    def list(self, folder: str = "", start_after: str | None = None) -> Iterator[ListedObject]:
        """Objects under `folder` ('' or 'a/b/'), only keys sorting after `start_after` when given."""
        ...

    def read(self, key: str) -> bytes: ...
    def checksum(self, key: str) -> str: ...
    def describe(self) -> str: ...
    def landing_key(self, bucket: str, key: str) -> str | None:
        """The landing key of the object s3://bucket/key (an event notification's), None when it is
        outside this landing zone."""
        ...

    def archive(self, key: str, checksum: str) -> str | None:
        """Move a merged file to `<root>/_archive/<key>` when its content still has `checksum`;
        returns where it went, None when it changed since (a new version is landing under its key).
        FileNotFoundError when it is gone."""
        ...

    def delete(self, key: str, checksum: str) -> bool:
        """Delete a merged file whose retention ran out (an event stream's raw backup) when its
        content still has `checksum`; False when it changed since (a new version is landing under
        its key: it is merged, and expires, in its own time). FileNotFoundError when it is gone."""
        ...

    def write(self, key: str, data: bytes) -> ListedObject:
        """Land `data` under `key` whole (never half-written: a listing sees all of it or nothing),
        as the lake's own producers do (SQL extracts); returns it as a listing shows it."""
        ...


class LocalLandingZone:
    # A directory walk costs the same with or without a cursor, and a local file can be rewritten in
    # place at any time (still being written, a corrected re-drop): a cursor would only miss files.
    resumable = False

    def __init__(self, root: Path):
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    def landing_key(self, bucket: str, key: str) -> str | None:
        return None  # no bucket: nothing in S3 lands here

    def list(self, folder: str = "", start_after: str | None = None) -> Iterator[ListedObject]:
        top = self.root / folder if folder else self.root
        if not top.is_dir():
            return
        stack = [top]
        while stack:
            d = stack.pop()
            with os.scandir(d) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        if not (d == self.root and e.name == ARCHIVE_FOLDER):
                            stack.append(Path(e.path))
                    elif e.is_file(follow_symlinks=False) and not e.name.startswith("."):
                        st = e.stat()
                        key = Path(e.path).relative_to(self.root).as_posix()
                        if start_after is not None and key <= start_after:
                            continue
                        # A copy that keeps the source's mtime (cp -p, rsync -t) sets an old mtime
                        # when it finishes; the inode change time still says it was just written.
                        modified = max(st.st_mtime, st.st_ctime)
                        yield ListedObject(key, st.st_size, f"{st.st_mtime_ns}:{st.st_size}", modified)

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def archive(self, key: str, checksum: str) -> str | None:
        if self.checksum(key) != checksum:
            return None
        target = self.root / ARCHIVE_FOLDER / key
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.root / key, target)  # a rename: the file is in one place or the other
        return str(target)

    def delete(self, key: str, checksum: str) -> bool:
        if self.checksum(key) != checksum:
            return False
        (self.root / key).unlink()
        return True

    def write(self, key: str, data: bytes) -> ListedObject:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")  # dot files are never listed
        partial.write_bytes(data)
        os.replace(partial, target)
        st = target.stat()
        return ListedObject(key, st.st_size, f"{st.st_mtime_ns}:{st.st_size}", max(st.st_mtime, st.st_ctime))

    def checksum(self, key: str) -> str:
        h = hashlib.md5(usedforsecurity=False)
        with open(self.root / key, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()


class S3LandingZone:
    """Landing in S3 (bucket + prefix); the ETag serves as version and checksum."""

    resumable = True

    def __init__(self, bucket: str, prefix: str, client: S3Client):
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def landing_key(self, bucket: str, key: str) -> str | None:
        if bucket != self.bucket or not key.startswith(self.prefix) or key.endswith("/"):
            return None
        landed = key[len(self.prefix) :]
        return None if not landed or is_archived(landed) else landed

    def list(self, folder: str = "", start_after: str | None = None) -> Iterator[ListedObject]:
        args = {"Bucket": self.bucket, "Prefix": self.prefix + folder}
        if start_after is not None:
            args["StartAfter"] = self.prefix + start_after
        for page in self.client.get_paginator("list_objects_v2").paginate(**args):  # type: ignore[arg-type]
            for obj in page.get("Contents", []):
                key = obj["Key"][len(self.prefix) :]
                if key and not key.endswith("/") and not is_archived(key):
                    yield ListedObject(key, obj["Size"], obj["ETag"].strip('"'), obj["LastModified"].timestamp())

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

    def checksum(self, key: str) -> str:
        return self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)["ETag"].strip('"')

    def write(self, key: str, data: bytes) -> ListedObject:
        etag = self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)["ETag"].strip('"')
        head = self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        return ListedObject(key, len(data), etag, head["LastModified"].timestamp())

    def _head(self, source: str) -> dict:
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=source))
        except self.client.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(f"s3://{self.bucket}/{source}") from None
            raise

    def delete(self, key: str, checksum: str) -> bool:
        source = self.prefix + key
        if self._head(source)["ETag"].strip('"') != checksum:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=source)
        return True

    def archive(self, key: str, checksum: str) -> str | None:
        source = self.prefix + key
        head = self._head(source)
        if head["ETag"].strip('"') != checksum:
            return None
        target = f"{self.prefix}{ARCHIVE_FOLDER}/{key}"
        # Only the version that was merged is copied (CopySourceIfMatch), then removed.
        self.client.copy_object(Bucket=self.bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": source},
                                CopySourceIfMatch=head["ETag"])
        self.client.delete_object(Bucket=self.bucket, Key=source)
        return f"s3://{self.bucket}/{target}"
