"""The pipeline end to end on real parts: S3 over HTTP (moto), PostgreSQL and Spark."""

import hashlib
import time
from collections import Counter

from dagster import AssetKey, build_sensor_context

from pe_assets.cli import run_pipeline
from pe_assets.partitions import RANGE_END_TAG, RANGE_START_TAG
from pe_assets.pe_parser import PARSED_FIELDS
from pe_assets.resources import PeConfig
from pe_assets.samples import build_pe, upload_samples_s3
from pe_assets.sensors import file_manifest_sensor, new_s3_objects_sensor
from pe_assets_tests.pefile_reference import diff_records, reference_record


def fill(pipeline, n_clean: int, n_malicious: int, seed: int = 0, corrupt_share: float = 0.0):
    summary = upload_samples_s3(
        pipeline.bucket.client, pipeline.bucket.name, n_clean=n_clean, n_malicious=n_malicious,
        seed=seed, corrupt_share=corrupt_share,
    )
    return summary.specs


def run(pipeline, **kwargs):
    summary, error = run_pipeline(pipeline.defs, pipeline.instance, **kwargs)
    assert error is None, error
    return summary


def object_bytes(pipeline, path: str) -> bytes:
    key = path.removeprefix(f"s3://{pipeline.bucket.name}/")
    return pipeline.bucket.client.get_object(Bucket=pipeline.bucket.name, Key=key)["Body"].read()


def test_n_takes_half_malicious_and_fields_match_pefile(pipeline):
    fill(pipeline, 12, 12, corrupt_share=0.0)

    summary = run(pipeline, n=10)

    rows = pipeline.rows()
    assert summary.selected == 10
    assert [r["label"] for r in rows].count("clean") == 5
    assert [r["label"] for r in rows].count("malicious") == 5
    assert {r["status"] for r in rows} == {"ok"}
    for row in rows:
        data = object_bytes(pipeline, row["path"])
        assert row["size"] == len(data)
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert diff_records({f: row[f] for f in PARSED_FIELDS}, reference_record(data)) == {}
        assert row["run_id"] and row["processed_at"] is not None


def test_odd_n_gives_the_extra_file_to_clean(pipeline):
    fill(pipeline, 6, 6)

    run(pipeline, n=7)

    labels = [r["label"] for r in pipeline.rows()]
    assert labels.count("clean") == 4 and labels.count("malicious") == 3


def test_second_run_skips_processed_files_and_reports_shortfall(pipeline):
    fill(pipeline, 8, 8)

    run(pipeline, n=10)
    second = run(pipeline, n=10)

    rows = pipeline.rows()
    assert len(rows) == 16 and len({r["path"] for r in rows}) == 16
    assert second.selected == 6
    assert second.note and "2 clean missing" in second.note and "2 malicious missing" in second.note
    third = run(pipeline, n=4)
    assert third.selected == 0 and len(pipeline.rows()) == 16


def test_index_pages_are_skipped_and_broken_files_become_rows(pipeline):
    fill(pipeline, 2, 2)
    valid = build_pe(machine="x86", imports={"kernel32.dll": ["ExitProcess"]})
    pipeline.bucket.put("1/ff-empty", b"")
    pipeline.bucket.put("1/ff-text", b"just some text, no MZ header")
    pipeline.bucket.put("1/ff-truncated", valid[:0x100])
    pipeline.bucket.put("1/ff-mz-only", b"MZ" + b"\0" * 62)

    run(pipeline, n=20)

    rows = {r["path"].rsplit("/", 1)[-1]: r for r in pipeline.rows()}
    assert not any("00Tree" in name for name in rows)
    assert len(rows) == 8
    assert rows["ff-empty"]["status"] == "not_pe" and rows["ff-empty"]["size"] == 0
    assert rows["ff-text"]["status"] == "not_pe"
    assert rows["ff-mz-only"]["status"] == "not_pe"
    assert rows["ff-truncated"]["status"] == "malformed"
    assert all(rows[name]["error"] for name in ("ff-empty", "ff-text", "ff-truncated"))


def test_paths_file_processes_exactly_the_listed_keys(pipeline, tmp_path):
    specs = fill(pipeline, 4, 4)
    keys = sorted(specs)
    clean = [k for k in keys if k.startswith("0/")][:2]
    malicious = [k for k in keys if k.startswith("1/")][:1]
    paths_file = tmp_path / "paths.txt"
    paths_file.write_text(
        "\n".join(
            [clean[0], f"s3://{pipeline.bucket.name}/{clean[1]}", malicious[0],
             "elsewhere/abc", "1/does-not-exist", ""]
        )
    )

    summary = run(pipeline, paths_file=str(paths_file))

    rows = {r["path"]: r for r in pipeline.rows()}
    expected = {f"s3://{pipeline.bucket.name}/{k}" for k in [*clean, *malicious]}
    assert expected <= set(rows)
    missing = rows[f"s3://{pipeline.bucket.name}/1/does-not-exist"]
    assert missing["status"] == "missing"
    assert len(rows) == 4
    assert summary.selected == 4


def test_paths_file_from_s3(pipeline):
    specs = fill(pipeline, 2, 2)
    pipeline.bucket.put("lists/today.txt", "\n".join(sorted(specs)).encode())

    run(pipeline, paths_file=f"s3://{pipeline.bucket.name}/lists/today.txt")

    assert len(pipeline.rows()) == 4


def test_manifest_sensor_launches_one_run_over_the_sampled_shards(pipeline):
    fill(pipeline, 5, 5)
    sample = pipeline.defs.resolve_job_def("sample_job").execute_in_process(
        run_config={"ops": {"file_manifest": {"config": {"n": 6}}}}, instance=pipeline.instance
    )
    context = build_sensor_context(instance=pipeline.instance, definitions=pipeline.defs)

    requests = list(file_manifest_sensor(context))

    assert len(requests) == 1
    request = requests[0]
    keys = pipeline.instance.get_dynamic_partitions("s3_prefix")
    assert request.tags[RANGE_START_TAG] == keys[0] and request.tags[RANGE_END_TAG] == keys[-1]
    assert request.run_key == f"manifest-{sample.run_id}"
    process = pipeline.defs.resolve_job_def("process_job").execute_in_process(
        instance=pipeline.instance, tags=request.tags
    )
    assert process.success
    assert len(pipeline.rows()) == 6
    assert {r["label"] for r in pipeline.rows()} == {"clean", "malicious"}


def test_new_objects_sensor_processes_only_what_arrives(pipeline):
    fill(pipeline, 3, 3)
    context = build_sensor_context(
        instance=pipeline.instance, definitions=pipeline.defs, resources={"pe_config": PeConfig()}
    )

    first = new_s3_objects_sensor(context)
    assert not first.run_requests and first.cursor
    context.update_cursor(first.cursor)
    arrived = {"0/aa-new-clean": build_pe(machine="x64"), "1/bb-new-bad": build_pe(dll=True)}
    for key, data in arrived.items():
        pipeline.bucket.put(key, data)

    second = new_s3_objects_sensor(context)
    assert len(second.run_requests) == 1
    added = [key for req in second.dynamic_partitions_requests for key in req.partition_keys]
    assert sorted(added) == ["0/aa", "1/bb"]
    for request in second.dynamic_partitions_requests:
        pipeline.instance.add_dynamic_partitions(
            request.partitions_def_name, request.partition_keys
        )
    process = pipeline.defs.resolve_job_def("process_job").execute_in_process(
        instance=pipeline.instance, tags=second.run_requests[0].tags
    )
    assert process.success
    paths = [r["path"].rsplit("/", 2)[-2] + "/" + r["path"].rsplit("/", 1)[-1]
             for r in pipeline.rows()]
    assert sorted(paths) == sorted(arrived)

    context.update_cursor(second.cursor)
    third = new_s3_objects_sensor(context)
    assert not third.run_requests


def test_table_metadata_counts_labels_statuses_and_architectures(pipeline):
    fill(pipeline, 3, 3)
    pipeline.bucket.put("1/ff-text", b"just some text, no MZ header")

    run(pipeline, n=8)

    event = pipeline.instance.get_latest_materialization_event(AssetKey("pe_metadata_table"))
    metadata = event.asset_materialization.metadata
    rows = pipeline.rows()

    def table_of(counts: Counter) -> str:
        lines = [f"| {value} | {count:,} |" for value, count in sorted(counts.items())]
        return "\n".join(lines)

    assert table_of(Counter(r["label"] for r in rows)) in metadata["by_label"].value
    assert table_of(Counter(r["status"] for r in rows)) in metadata["by_status"].value
    architectures = Counter(str(r["architecture"]) for r in rows)
    assert "None" in architectures  # the text file has no architecture
    assert table_of(architectures) in metadata["by_architecture"].value
    assert metadata["rows_written"].value == len(rows) == 7
    assert metadata["failed"].value == 1
    assert metadata["files_per_second"].value > 0


def _slow_partition(rows):
    time.sleep(0.5)
    yield sum(1 for _ in rows)


def test_cli_progress_reports_spark_tasks(spark, caplog):
    from pe_assets.cli import SparkProgress

    caplog.set_level("INFO", logger="pe_assets")
    with SparkProgress(interval=0.2):
        counts = spark.sparkContext.parallelize(range(8), 8).mapPartitions(_slow_partition)
        assert counts.sum() == 8

    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Spark:")]
    assert lines, "no progress line while an 8-task job ran for about 2 s"
    assert all(line.endswith("of 8 tasks done") for line in lines)
