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


@dataclass(frozen=True)
class ListedObject:
    key: str  # relative to the landing root, '/'-separated
    size: int
    version: str  # changes when the object is rewritten (mtime+size locally, ETag on S3)
    modified: float  # epoch seconds of the last write (mtime, or ctime if later, locally; LastModified on S3)


class LandingZone(Protocol):
    def list(self) -> Iterator[ListedObject]: ...
    def read(self, key: str) -> bytes: ...
    def checksum(self, key: str) -> str: ...
    def describe(self) -> str: ...


class LocalLandingZone:
    def __init__(self, root: Path):
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    def list(self) -> Iterator[ListedObject]:
        if not self.root.is_dir():
            return
        stack = [self.root]
        while stack:
            d = stack.pop()
            with os.scandir(d) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
                    elif e.is_file(follow_symlinks=False) and not e.name.startswith("."):
                        st = e.stat()
                        key = Path(e.path).relative_to(self.root).as_posix()
                        # A copy that keeps the source's mtime (cp -p, rsync -t) sets an old mtime
                        # when it finishes; the inode change time still says it was just written.
                        modified = max(st.st_mtime, st.st_ctime)
                        yield ListedObject(key, st.st_size, f"{st.st_mtime_ns}:{st.st_size}", modified)

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def checksum(self, key: str) -> str:
        h = hashlib.md5(usedforsecurity=False)
        with open(self.root / key, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()


class S3LandingZone:
    """Landing in S3 (bucket + prefix); the ETag serves as version and checksum."""

    def __init__(self, bucket: str, prefix: str, client: S3Client):
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def list(self) -> Iterator[ListedObject]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                key = obj["Key"][len(self.prefix) :]
                if key and not key.endswith("/"):
                    yield ListedObject(key, obj["Size"], obj["ETag"].strip('"'), obj["LastModified"].timestamp())

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

    def checksum(self, key: str) -> str:
        return self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)["ETag"].strip('"')
