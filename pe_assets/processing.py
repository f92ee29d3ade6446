"""What Spark executors do: download and parse a partition's files, then store the rows.

Work is planned per partition, not per file: each Spark partition opens one S3 client and one
database connection, downloads its files concurrently (latency, not CPU, bounds a real bucket)
and writes its rows in bulk. Both functions are plain iterators over plain data so they can be
tested without Spark and shipped to executors by pickling.
"""

from __future__ import annotations

import logging
import math
import threading
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pe_assets.config import Settings
from pe_assets.pe_parser import MAX_FILE_SIZE, PARSED_FIELDS, empty_record, parse_pe
from pe_assets.source import MissingObject, open_source
from pe_assets.table import METADATA_COLUMNS, create_db_engine, pending_files, utcnow, write_rows

logger = logging.getLogger(__name__)

# Concurrent downloads per Spark partition: enough to hide S3's per-request latency.
DOWNLOAD_THREADS = 16

# Files above this size are downloaded one at a time per partition, which bounds an
# executor's memory to about DOWNLOAD_THREADS * LARGE_FILE + MAX_FILE_SIZE.
LARGE_FILE = 16 * 1024 * 1024

# Spark tasks per core: several, so a slow task (a shard of large files) does not leave cores idle.
TASKS_PER_CORE = 4

# Below this, splitting work further costs more in task start-up than it saves.
MIN_FILES_PER_TASK = 50

# Rows per database write (one COPY and one INSERT on PostgreSQL).
WRITE_BATCH = 5_000

MAX_ERROR_LENGTH = 200


@dataclass(frozen=True)
class Task:
    """A slice of the pending files of some shards: those whose crc32(path) % count == index."""

    shards: tuple[str, ...]
    index: int = 0
    count: int = 1


def plan_tasks(pending: dict[str, int], cores: int) -> list[Task]:
    """Spread pending files over about cores * TASKS_PER_CORE tasks of similar size."""
    total = sum(pending.values())
    if total == 0:
        return []
    target = max(MIN_FILES_PER_TASK, math.ceil(total / (max(cores, 1) * TASKS_PER_CORE)))
    tasks: list[Task] = []
    group: list[str] = []
    group_size = 0
    for shard, count in sorted(pending.items()):
        if count > target:
            slices = math.ceil(count / target)
            tasks.extend(Task((shard,), i, slices) for i in range(slices))
            continue
        if group_size + count > target and group:
            tasks.append(Task(tuple(group)))
            group, group_size = [], 0
        group.append(shard)
        group_size += count
    if group:
        tasks.append(Task(tuple(group)))
    return tasks


def _in_slice(path: str, task: Task) -> bool:
    return task.count == 1 or zlib.crc32(path.encode()) % task.count == task.index


def _short(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text[:MAX_ERROR_LENGTH]


def _result(path: str, label: str, record: dict, run_id: str, now: datetime) -> tuple:
    return (path, label, *(record[name] for name in PARSED_FIELDS), now, run_id)


RESULT_FIELDS: tuple[str, ...] = ("path", "label", *PARSED_FIELDS, "processed_at", "run_id")


class _Downloader:
    """Fetches and parses one file; large files take turns so memory stays bounded."""

    def __init__(self, source, run_id: str):
        self.source = source
        self.run_id = run_id
        self.large_file_lock = threading.Lock()

    def __call__(self, item: tuple[str, str, str, int | None]) -> tuple:
        path, key, label, size = item
        now = utcnow()
        if size is not None and size > MAX_FILE_SIZE:
            record = empty_record(size, None, "too_large", f"{size} bytes > {MAX_FILE_SIZE}")
            return _result(path, label, record, self.run_id, now)
        if size is not None and size > LARGE_FILE:
            with self.large_file_lock:
                return self._fetch_and_parse(path, key, label, now)
        return self._fetch_and_parse(path, key, label, now)

    def _fetch_and_parse(self, path: str, key: str, label: str, now: datetime) -> tuple:
        try:
            with self.source.open_bytes(key) as data:
                record = parse_pe(data)
        except MissingObject as e:
            record = empty_record(None, None, "missing", _short(e))
        except Exception as e:  # network, permissions, throttling: retried by a later run
            logger.debug("download of %s failed", path, exc_info=True)
            record = empty_record(None, None, "download_failed", _short(e))
        return _result(path, label, record, self.run_id, now)


def process_tasks(settings: dict[str, Any], run_id: str, tasks: Iterable[Task]) -> Iterator[tuple]:
    """Spark `mapPartitions` body: yields one result tuple (RESULT_FIELDS) per pending file."""
    config = Settings.from_dict(settings)
    engine = create_db_engine(config.database_url)
    source = open_source(config)
    try:
        for task in tasks:
            with engine.connect() as conn:
                files = [f for f in pending_files(conn, task.shards) if _in_slice(f[0], task)]
            with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
                yield from pool.map(_Downloader(source, run_id), files)
    finally:
        source.close()
        engine.dispose()


def write_partition(settings: dict[str, Any], rows: Iterable[Any]) -> Iterator[tuple[int, int]]:
    """Spark `mapPartitions` body: stores rows in batches; yields (rows seen, rows written)."""
    config = Settings.from_dict(settings)
    engine = create_db_engine(config.database_url)
    seen = written = 0
    batch: list[dict] = []
    try:
        for row in rows:
            values = row.asDict() if hasattr(row, "asDict") else dict(zip(RESULT_FIELDS, row))
            batch.append({name: values.get(name) for name in METADATA_COLUMNS})
            if len(batch) >= WRITE_BATCH:
                written += _write_batch(engine, batch)
                seen += len(batch)
                batch = []
        if batch:
            written += _write_batch(engine, batch)
            seen += len(batch)
    finally:
        engine.dispose()
    yield seen, written


def _write_batch(engine, batch: list[dict]) -> int:
    with engine.begin() as conn:
        return write_rows(conn, batch)
