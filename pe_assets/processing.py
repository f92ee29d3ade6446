"""What Spark executors do: download and parse a partition's files, then store the rows.

Work is planned per partition, not per file: each Spark partition opens one S3 client and one
database connection, downloads its files concurrently (latency, not CPU, bounds a real bucket)
and writes its rows in bulk. Both functions are plain iterators over plain data so they can be
tested without Spark and shipped to executors by pickling.

Each partition also counts its own work (files, bytes, seconds per step, peak memory) in a
PartitionStats. Nothing reads them in production; when PE_TASK_STATS_DIR is set (the
benchmark sets it), every partition leaves its counters there as one small JSON file, so
per-step figures come from the executors themselves without changing what they return.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from pe_assets.config import Settings
from pe_assets.pe_parser import MAX_FILE_SIZE, PARSED_FIELDS, empty_record, parse_pe
from pe_assets.source import LocalSource, MissingObject, open_source
from pe_assets.table import METADATA_COLUMNS, create_db_engine, pending_files, utcnow, write_rows

logger = logging.getLogger(__name__)

# Concurrent downloads per Spark partition: enough to hide S3's per-request latency.
DOWNLOAD_THREADS = 16

# Files submitted ahead of the one being yielded, per download thread: enough to keep every
# thread busy, few enough that a 100,000-file task holds a few hundred results, not all.
WINDOW_PER_THREAD = 4

# Files above this size are downloaded one at a time per partition, which bounds an
# executor's memory to about DOWNLOAD_THREADS * LARGE_FILE + MAX_FILE_SIZE.
LARGE_FILE = 16 * 1024 * 1024

# Spark tasks per core: several, so a slow task (a shard of large files) does not leave cores idle.
TASKS_PER_CORE = 4

# Below this, splitting work further costs more in task start-up than it saves.
MIN_FILES_PER_TASK = 50

# Above this, a task is split even when the cores are few: a failed task that Spark retries
# then repeats at most this many files, and Spark's progress stays fine-grained at a million.
MAX_FILES_PER_TASK = 20_000

# Where each partition leaves its PartitionStats as JSON, when set (the benchmark sets it).
TASK_STATS_DIR_ENV = "PE_TASK_STATS_DIR"

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
    """Spread pending files over about cores * TASKS_PER_CORE tasks of similar size.

    Tasks hold between MIN_FILES_PER_TASK and MAX_FILES_PER_TASK files where the shards allow
    (a shard is split only when it alone is larger than a task).
    """
    total = sum(pending.values())
    if total == 0:
        return []
    per_core = math.ceil(total / (max(cores, 1) * TASKS_PER_CORE))
    target = min(MAX_FILES_PER_TASK, max(MIN_FILES_PER_TASK, per_core))
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


@dataclass
class PartitionStats:
    """What one Spark partition did. Seconds of download and parse are summed over threads."""

    step: str  # "process" or "write"
    pid: int = field(default_factory=os.getpid)
    tasks: int = 0
    files: int = 0
    bytes: int = 0
    db_seconds: float = 0.0  # reading the pending files, or writing rows
    download_seconds: float = 0.0  # wall time in open_bytes, summed over threads
    parse_seconds: float = 0.0  # CPU time in parse_pe, summed over threads
    wall_seconds: float = 0.0
    peak_rss_bytes: int = 0


def peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM), from /proc or getrusage."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def report_stats(stats: PartitionStats) -> None:
    """Leave the counters in PE_TASK_STATS_DIR, if set; never fails the task."""
    folder = os.environ.get(TASK_STATS_DIR_ENV)
    if not folder:
        return
    stats.peak_rss_bytes = peak_rss_bytes()
    path = Path(folder) / f"{stats.step}-{stats.pid}-{uuid.uuid4().hex[:12]}.json"
    try:
        path.write_text(json.dumps(asdict(stats)))
    except OSError:
        logger.warning("cannot write task stats to %s", path, exc_info=True)


_T = TypeVar("_T")
_R = TypeVar("_R")


def map_bounded(
    pool: Executor, fn: Callable[[_T], _R], items: Iterable[_T], window: int
) -> Iterator[_R]:
    """Like pool.map, in order, but with at most `window` calls submitted and not yet yielded.

    Executor.map submits every item at once, so a task of 100,000 files would hold 100,000
    futures and, when the consumer is slower, as many results.
    """
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _Downloader:
    """Fetches and parses one file; large files take turns so memory stays bounded."""

    def __init__(self, source, run_id: str, stats: PartitionStats):
        self.source = source
        self.run_id = run_id
        self.stats = stats
        self.large_file_lock = threading.Lock()
        self._stats_lock = threading.Lock()

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
        started = time.perf_counter()
        fetched = None
        parse_cpu = 0.0
        size = 0
        try:
            with self.source.open_bytes(key) as data:
                fetched = time.perf_counter()
                size = len(data)
                cpu = time.thread_time()
                record = parse_pe(data)
                parse_cpu = time.thread_time() - cpu
        except MissingObject as e:
            record = empty_record(None, None, "missing", _short(e))
        except Exception as e:  # network, permissions, throttling: retried by a later run
            logger.debug("download of %s failed", path, exc_info=True)
            record = empty_record(None, None, "download_failed", _short(e))
        download = (fetched or time.perf_counter()) - started
        with self._stats_lock:
            self.stats.files += 1
            self.stats.bytes += size
            self.stats.download_seconds += download
            self.stats.parse_seconds += parse_cpu
        return _result(path, label, record, self.run_id, now)


def process_tasks(settings: dict[str, Any], run_id: str, tasks: Iterable[Task]) -> Iterator[tuple]:
    """Spark `mapPartitions` body: yields one result tuple (RESULT_FIELDS) per pending file."""
    started = time.perf_counter()
    config = Settings.from_dict(settings)
    engine = create_db_engine(config.database_url)
    source = open_source(config)
    stats = PartitionStats("process")
    try:
        for task in tasks:
            queried = time.perf_counter()
            with engine.connect() as conn:
                files = [f for f in pending_files(conn, task.shards) if _in_slice(f[0], task)]
            stats.db_seconds += time.perf_counter() - queried
            stats.tasks += 1
            fetch = _Downloader(source, run_id, stats)
            if isinstance(source, LocalSource):
                # No latency to hide: threads would only contend for the GIL (16 threads gave
                # ~27% fewer files/s than this one, see docs/performance.md); Spark's cores
                # give the parallelism.
                yield from map(fetch, files)
                continue
            with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
                yield from map_bounded(pool, fetch, files, DOWNLOAD_THREADS * WINDOW_PER_THREAD)
    finally:
        source.close()
        engine.dispose()
        stats.wall_seconds = time.perf_counter() - started
        report_stats(stats)


def write_partition(settings: dict[str, Any], rows: Iterable[Any]) -> Iterator[tuple[int, int]]:
    """Spark `mapPartitions` body: stores rows in batches; yields (rows seen, rows written)."""
    started = time.perf_counter()
    config = Settings.from_dict(settings)
    engine = create_db_engine(config.database_url)
    stats = PartitionStats("write", tasks=1)
    seen = written = 0
    batch: list[dict] = []
    try:
        for row in rows:
            if hasattr(row, "asDict"):
                values = row.asDict()
            else:
                values = dict(zip(RESULT_FIELDS, row, strict=True))
            batch.append({name: values.get(name) for name in METADATA_COLUMNS})
            if len(batch) >= WRITE_BATCH:
                written += _write_batch(engine, batch, stats)
                seen += len(batch)
                batch = []
        if batch:
            written += _write_batch(engine, batch, stats)
            seen += len(batch)
    finally:
        engine.dispose()
        stats.files = seen
        stats.wall_seconds = time.perf_counter() - started
        report_stats(stats)
    yield seen, written


def _write_batch(engine, batch: list[dict], stats: PartitionStats) -> int:
    started = time.perf_counter()
    with engine.begin() as conn:
        written = write_rows(conn, batch)
    stats.db_seconds += time.perf_counter() - started
    return written
