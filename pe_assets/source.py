"""Where the samples live: an S3 bucket (or any S3-compatible endpoint) or a local folder.

Keys are always relative to the configured root, e.g. `1/3fa0...`; `url_for` turns a key into
the `path` stored in the table. Clients are built from plain `Settings`, so Spark executors
create their own (one per partition) instead of receiving one from the driver.
"""

from __future__ import annotations

import bisect
import logging
import mmap
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from urllib.parse import unquote, urlparse

from botocore.exceptions import BotoCoreError, ClientError

from pe_assets.config import Settings
from pe_assets.errors import SourceError

logger = logging.getLogger(__name__)

# Index pages and notes that sit beside the samples (the public dataset keeps an `00Tree.html`
# in every folder). Only these names are skipped: a tiny file without an MZ header is still a
# sample and becomes a `not_pe` row.
NOT_SAMPLE_SUFFIXES = (".html", ".htm")

# Listing splits each folder at every two-character hex prefix (256 ranges) so that pages are
# fetched in parallel; hash-named samples spread evenly over them, and keys outside [0-9a-f]
# still fall into exactly one range (ranges are bounded by key order, not by prefix).
RANGE_BOUNDARIES = "0123456789abcdef"

# Parallel listing requests per folder; S3 answers each page in tens of milliseconds.
LIST_THREADS = 16

# Local files up to this size are read with one read(); larger ones are memory-mapped, which
# saves the copy. For the typical sample (tens of KB) mmap's setup and page faults cost more:
# reading made processing ~20% faster on the synthetic bucket (see docs/performance.md).
MMAP_ABOVE = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int | None  # None when not listed (a key from a paths file)
    modified: float  # seconds since the epoch


class MissingObject(SourceError):
    """The object does not exist (a final answer, unlike a failed download)."""


def is_sample_key(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    if not name or name.startswith("."):
        return False
    return not name.lower().endswith(NOT_SAMPLE_SUFFIXES)


def _later(a: str | None, b: str | None) -> str | None:
    """The later of two exclusive lower bounds, None meaning unbounded."""
    if a is None or b is None:
        return b if a is None else a
    return max(a, b)


def key_ranges(prefix: str) -> list[tuple[str | None, str | None]]:
    """Split the keys under `prefix` into (after, up_to] ranges in key order."""
    bounds = [prefix + a + b for a in RANGE_BOUNDARIES for b in RANGE_BOUNDARIES]
    starts: list[str | None] = [None, *bounds]
    ends: list[str | None] = [*bounds, None]
    return list(zip(starts, ends, strict=True))


class S3Source:
    def __init__(self, settings: Settings, max_pool: int = 32):
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        parsed = urlparse(settings.source_url)
        self.bucket = parsed.netloc
        self.root = parsed.path.strip("/")
        self._base = f"s3://{self.bucket}/" + (self.root + "/" if self.root else "")
        config = Config(
            max_pool_connections=max_pool,
            retries={"max_attempts": 5, "mode": "standard"},
            signature_version=UNSIGNED if settings.s3_anonymous else None,
        )
        session = boto3.session.Session()
        self.client = session.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region or "us-east-1",
            config=config,
        )

    def _full(self, key: str) -> str:
        return f"{self.root}/{key}" if self.root else key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.root) + 1:] if self.root else full_key

    def url_for(self, key: str) -> str:
        return self._base + key

    def key_for(self, url: str) -> str | None:
        """The relative key of an s3:// URL in this bucket and root, or None."""
        return url[len(self._base):] if url.startswith(self._base) else None

    def list_range(
        self, prefix: str, after: str | None = None, up_to: str | None = None
    ) -> Iterator[ObjectInfo]:
        """Objects under `prefix` with after < key <= up_to, in key order, page by page."""
        kwargs = {"Bucket": self.bucket, "Prefix": self._full(prefix)}
        if after is not None:
            kwargs["StartAfter"] = self._full(after)
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(**kwargs):
                for item in page.get("Contents", ()):
                    key = self._relative(item["Key"])
                    if up_to is not None and key > up_to:
                        return
                    yield ObjectInfo(key, item["Size"], item["LastModified"].timestamp())
        except (BotoCoreError, ClientError) as e:
            where = f"s3://{self.bucket}/{self._full(prefix)}"
            raise SourceError(f"cannot list {where}: {e}") from e

    def list_folder(self, prefix: str, after: str | None = None) -> Iterator[ObjectInfo]:
        """Every object under `prefix` after `after`, in key order.

        The folder is cut into key ranges that are listed in parallel, a window of
        LIST_THREADS ranges ahead of the consumer, so a caller that stops early (a small
        sample) lists little more than it uses.
        """
        ranges = [
            (_later(start, after), end) for start, end in key_ranges(prefix)
            if after is None or end is None or end > after
        ]
        pool = ThreadPoolExecutor(LIST_THREADS)
        todo = iter(ranges)
        window = deque(pool.submit(self._list_all, prefix, r) for r in islice(todo, LIST_THREADS))
        try:
            while window:
                items = window.popleft().result()
                following = next(todo, None)
                if following is not None:
                    window.append(pool.submit(self._list_all, prefix, following))
                yield from items
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _list_all(self, prefix: str, bounds: tuple[str | None, str | None]) -> list[ObjectInfo]:
        return list(self.list_range(prefix, *bounds))

    @contextmanager
    def open_bytes(self, key: str):
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
            data = response["Body"].read()
        except self.client.exceptions.NoSuchKey as e:
            raise MissingObject(f"no such key: {key}") from e
        yield data

    def close(self) -> None:
        self.client.close()


class LocalSource:
    """A folder laid out like the bucket: `<root>/0/<sample>` and `<root>/1/<sample>`."""

    def __init__(self, settings: Settings):
        self.root = Path(unquote(urlparse(settings.source_url).path))
        self._base = self.root.as_uri() + "/"

    def url_for(self, key: str) -> str:
        return self._base + key

    def key_for(self, url: str) -> str | None:
        return url[len(self._base):] if url.startswith(self._base) else None

    def _walk(self, folder: str, relative: str) -> Iterator[str]:
        """Keys of the regular files under `folder`, from directory entries alone (no stat)."""
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return
        for entry in entries:
            key = relative + entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(entry.path, key + "/")
            elif entry.is_file(follow_symlinks=False):
                yield key

    def list_folder(self, prefix: str, after: str | None = None) -> Iterator[ObjectInfo]:
        """Files under `prefix` after `after`, in key order.

        Names are read and sorted first; size and mtime are looked up only for the files the
        caller takes, so a small sample from a folder of a million files costs one directory
        read, not a million stat calls.
        """
        if not self.root.is_dir():
            raise SourceError(f"sample folder {self.root} does not exist")
        folder = prefix.rstrip("/")
        keys = sorted(self._walk(os.path.join(self.root, folder), folder + "/"))
        start = 0 if after is None else bisect.bisect_right(keys, after)
        root = str(self.root)
        for key in islice(keys, start, None):
            try:
                stat = os.lstat(os.path.join(root, key))
            except FileNotFoundError:  # deleted since the directory was read
                continue
            yield ObjectInfo(key, stat.st_size, stat.st_mtime)

    @contextmanager
    def open_bytes(self, key: str):
        """The file's bytes: read into memory when small, else a read-only memory map."""
        path = os.path.join(self.root, key)
        try:
            handle = open(path, "rb", buffering=0)
        except FileNotFoundError as e:
            raise MissingObject(f"no such file: {path}") from e
        with handle:
            size = os.fstat(handle.fileno()).st_size
            if size <= MMAP_ABOVE:
                yield handle.readall()
                return
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                yield mapped

    def close(self) -> None:
        pass


def open_source(settings: Settings) -> S3Source | LocalSource:
    return S3Source(settings) if settings.is_s3 else LocalSource(settings)


def read_text(location: str, settings: Settings) -> str:
    """A small text file from a local path or an s3:// URL (a paths file, say)."""
    if location.startswith("s3://"):
        parsed = urlparse(location)
        reader = S3Source(replace(settings, source_url=f"s3://{parsed.netloc}"))
        try:
            with reader.open_bytes(parsed.path.lstrip("/")) as data:
                return bytes(data).decode("utf-8")
        except (BotoCoreError, ClientError, MissingObject, UnicodeDecodeError) as e:
            raise SourceError(f"cannot read {location}: {e}") from e
        finally:
            reader.close()
    path = Path(unquote(urlparse(location).path)) if location.startswith("file://") else Path(
        location
    )
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"cannot read {location}: {e}") from e
