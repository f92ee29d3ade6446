"""Executor-side pieces without Spark: task planning, bounded downloads, counters, listing."""

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from pe_assets.config import Settings
from pe_assets.processing import (
    MAX_FILES_PER_TASK,
    TASK_STATS_DIR_ENV,
    PartitionStats,
    map_bounded,
    plan_tasks,
    report_stats,
)
from pe_assets.source import LocalSource


def test_plan_covers_every_shard_once_and_caps_task_size():
    pending = {f"1/{i:02x}": 2_000 for i in range(256)}  # half a million files

    tasks = plan_tasks(pending, cores=2)

    whole = [shard for task in tasks if task.count == 1 for shard in task.shards]
    assert sorted(whole) == sorted(pending)
    assert all(sum(pending[s] for s in task.shards) <= MAX_FILES_PER_TASK for task in tasks)
    assert len(tasks) >= 500_000 // MAX_FILES_PER_TASK


def test_plan_splits_a_shard_larger_than_a_task_into_slices():
    # One core would ask for 4 tasks of 2 * MAX_FILES_PER_TASK; the cap makes it 8.
    tasks = plan_tasks({"0/aa": 8 * MAX_FILES_PER_TASK}, cores=1)

    assert [(t.shards, t.index, t.count) for t in tasks] == [(("0/aa",), i, 8) for i in range(8)]


def test_map_bounded_keeps_order_and_limits_calls_in_flight():
    in_flight = 0
    most = 0
    lock = threading.Lock()
    release = threading.Event()

    def work(item: int) -> int:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        release.wait(0.001)
        with lock:
            in_flight -= 1
        return item * 2

    with ThreadPoolExecutor(8) as pool:
        results = list(map_bounded(pool, work, range(500), window=5))

    assert results == [i * 2 for i in range(500)]
    assert most <= 5


def test_map_bounded_submits_lazily():
    submitted = []

    def items():
        for i in range(1_000):
            submitted.append(i)
            yield i

    with ThreadPoolExecutor(2) as pool:
        results = map_bounded(pool, lambda i: i, items(), window=4)
        first = next(results)
        assert first == 0 and len(submitted) <= 5
        results.close()


def test_partition_counters_land_in_the_stats_folder_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(TASK_STATS_DIR_ENV, raising=False)
    report_stats(PartitionStats("process", files=3))
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setenv(TASK_STATS_DIR_ENV, str(tmp_path))
    report_stats(PartitionStats("write", files=7, db_seconds=0.5))

    [written] = tmp_path.iterdir()
    stats = json.loads(written.read_text())
    assert stats["step"] == "write" and stats["files"] == 7 and stats["pid"] == os.getpid()
    assert stats["peak_rss_bytes"] > 0


def test_local_listing_resumes_after_a_key_and_reports_size(tmp_path):
    for name in ("aa", "ab", "b0", "c1"):
        (tmp_path / "1").mkdir(exist_ok=True)
        (tmp_path / "1" / name).write_bytes(name.encode() * 3)
    (tmp_path / "1" / "sub").mkdir()
    (tmp_path / "1" / "sub" / "x").write_bytes(b"x")
    (tmp_path / "1" / "link").symlink_to(tmp_path / "1" / "aa")
    source = LocalSource(Settings(source_url=tmp_path.as_uri()))

    listed = list(source.list_folder("1/", after="1/ab"))

    assert [o.key for o in listed] == ["1/b0", "1/c1", "1/sub/x"]
    assert [o.size for o in listed] == [6, 6, 1]
    assert [o.key for o in source.list_folder("1/")][:2] == ["1/aa", "1/ab"]


def test_a_retried_task_reads_the_same_files_and_writes_nothing_twice(tmp_path, database_url):
    from pe_assets.manifest import sample_new_files
    from pe_assets.processing import RESULT_FIELDS, process_tasks, write_partition
    from pe_assets.samples import write_sample_folder
    from pe_assets.table import create_db_engine, pending_counts

    write_sample_folder(tmp_path / "bucket", n_clean=5, n_malicious=5)
    settings = Settings(source_url=(tmp_path / "bucket").as_uri(), database_url=database_url)
    engine = create_db_engine(database_url)
    summary = sample_new_files(engine, LocalSource(settings), settings, 10, "test")
    with engine.connect() as conn:
        tasks = plan_tasks(pending_counts(conn, sorted(summary.shards)), cores=2)

    first = list(process_tasks(settings.as_dict(), "run-1", tasks))
    retried = list(process_tasks(settings.as_dict(), "run-1", tasks))
    stored = list(write_partition(settings.as_dict(), first))
    stored_again = list(write_partition(settings.as_dict(), retried))

    path = RESULT_FIELDS.index("path")
    assert sorted(r[path] for r in first) == sorted(r[path] for r in retried)
    assert len(first) == 10
    assert stored == [(10, 10)] and stored_again == [(10, 0)]
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM pe_metadata").scalar() == 10
    engine.dispose()
