"""The three assets: the sampled manifest, the parsed DataFrame and the database table."""


import time
from functools import partial

from dagster import (
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
    Output,
    asset,
)
from dagster_pyspark import PySparkResource
from pydantic import Field

from pe_assets.errors import ConfigError
from pe_assets.manifest import ClaimSummary, claim_listed_paths, sample_new_files
from pe_assets.partitions import s3_prefix_partitions
from pe_assets.processing import plan_tasks, process_tasks, write_partition
from pe_assets.resources import PeConfig
from pe_assets.source import open_source, read_text
from pe_assets.spark_schema import RESULT_SCHEMA
from pe_assets.table import create_db_engine, migrate, pending_counts

MANIFEST_SHARDS_KEY = "shards"


class FileManifestConfig(Config):
    n: int | None = Field(
        default=None, description="Take n files not yet processed: n/2 malicious, the rest clean."
    )
    paths_file: str | None = Field(
        default=None,
        description="Text file (local path or s3:// URL), one object key or s3:// URL per line.",
    )


def _markdown_counts(counts: dict[str, int], heading: str) -> MetadataValue:
    lines = [f"| {heading} | files |", "|---|---:|"]
    lines += [f"| {key} | {value:,} |" for key, value in sorted(counts.items())]
    return MetadataValue.md("\n".join(lines))


def manifest_metadata(summary: ClaimSummary, seconds: float) -> dict:
    shortfall = summary.shortfall
    metadata = {
        "requested": sum(summary.requested.values()),
        "selected": summary.total,
        "selected_clean": summary.claimed["clean"],
        "selected_malicious": summary.claimed["malicious"],
        "skipped_already_processed": summary.already_claimed,
        "skipped_lines": len(summary.skipped_lines),
        "shard_count": len(summary.shards),
        MANIFEST_SHARDS_KEY: MetadataValue.json(sorted(summary.shards)),
        "seconds": round(seconds, 3),
    }
    if shortfall:
        metadata["shortfall"] = MetadataValue.json(shortfall)
        metadata["note"] = "fewer unprocessed files remain than requested: " + ", ".join(
            f"{wanted} {label} missing" for label, wanted in shortfall.items()
        )
    return metadata


@asset(
    group_name="pe",
    description="Files chosen for processing, claimed in the database so no run takes them twice.",
)
def file_manifest(
    context: AssetExecutionContext, config: FileManifestConfig, pe_config: PeConfig
) -> MaterializeResult:
    if (config.n is None) == (config.paths_file is None):
        raise ConfigError("file_manifest takes exactly one of `n` or `paths_file`")
    settings = pe_config.settings()
    engine = create_db_engine(settings.database_url)
    migrate(engine)
    source = open_source(settings)
    started = time.perf_counter()
    try:
        if config.n is not None:
            summary = sample_new_files(engine, source, settings, config.n, context.run.run_id)
        else:
            lines = read_text(config.paths_file, settings).splitlines()
            summary = claim_listed_paths(engine, source, settings, lines, context.run.run_id)
    finally:
        source.close()
        engine.dispose()

    known = set(context.instance.get_dynamic_partitions(s3_prefix_partitions.name))
    new_keys = sorted(summary.shards - known)
    if new_keys:
        context.instance.add_dynamic_partitions(s3_prefix_partitions.name, new_keys)
    metadata = manifest_metadata(summary, time.perf_counter() - started)
    context.log.info(
        "selected %d files (%d clean, %d malicious) in %d shards; %d already processed",
        summary.total, summary.claimed["clean"], summary.claimed["malicious"],
        len(summary.shards), summary.already_claimed,
    )
    if "note" in metadata:
        context.log.warning(metadata["note"])
    return MaterializeResult(metadata=metadata)


@asset(
    group_name="pe",
    partitions_def=s3_prefix_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    io_manager_key="parquet_io_manager",
    deps=[file_manifest],
    description="Parsed PE metadata of the pending files of each shard (a Spark DataFrame).",
)
def pe_metadata(
    context: AssetExecutionContext, pe_config: PeConfig, pyspark: PySparkResource
) -> Output:
    settings = pe_config.settings()
    engine = create_db_engine(settings.database_url)
    migrate(engine)
    with engine.connect() as conn:
        pending = pending_counts(conn, context.partition_keys)
    engine.dispose()

    spark = pyspark.spark_session
    tasks = plan_tasks(pending, spark.sparkContext.defaultParallelism)
    total = sum(pending.values())
    context.log.info(
        "%d pending files in %d of %d shards, %d Spark tasks",
        total, len(pending), len(context.partition_keys), len(tasks),
    )
    if tasks:
        body = partial(process_tasks, settings.as_dict(), context.run.run_id)
        rdd = spark.sparkContext.parallelize(tasks, len(tasks)).mapPartitions(body)
        # Rows are built by process_tasks with the types of RESULT_SCHEMA by construction, so
        # Spark's per-row type check (about 5 us a row in the Python workers) is skipped.
        frame = spark.createDataFrame(rdd, RESULT_SCHEMA, verifySchema=False)
    else:
        frame = spark.createDataFrame([], RESULT_SCHEMA)
    return Output(
        frame,
        metadata={
            "pending_files": total,
            "shards_with_work": len(pending),
            "spark_tasks": len(tasks),
            "started_at": time.time(),
        },
    )


def _parse_started_at(context: AssetExecutionContext) -> float:
    """When this run's pe_metadata step began: files/s counts download, parse and write."""
    event = context.instance.get_latest_materialization_event(AssetKey("pe_metadata"))
    if event is not None and event.run_id == context.run.run_id:
        entry = event.asset_materialization.metadata.get("started_at")
        if entry is not None:
            return float(entry.value)
    run = context.instance.get_run_record_by_id(context.run.run_id)
    return run.start_time if run and run.start_time else time.time()


_COUNTED_COLUMNS = ("label", "status", "architecture")


def _group_counts(frame) -> dict[str, dict[str, int]]:
    """Rows per value of each of _COUNTED_COLUMNS, from one Spark job over the frame."""
    counts: dict[str, dict[str, int]] = {column: {} for column in _COUNTED_COLUMNS}
    for row in frame.groupBy(*_COUNTED_COLUMNS).count().collect():
        for column in _COUNTED_COLUMNS:
            value = str(row[column])
            counts[column][value] = counts[column].get(value, 0) + row["count"]
    return counts


@asset(
    group_name="pe",
    partitions_def=s3_prefix_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    description="The `pe_metadata` database table: one row per file, never written twice.",
)
def pe_metadata_table(
    context: AssetExecutionContext, pe_metadata, pe_config: PeConfig
) -> MaterializeResult:
    settings = pe_config.settings()
    started = time.perf_counter()
    stats = pe_metadata.rdd.mapPartitions(partial(write_partition, settings.as_dict())).collect()
    seen = sum(s for s, _ in stats)
    written = sum(w for _, w in stats)
    write_seconds = time.perf_counter() - started

    elapsed = time.time() - _parse_started_at(context)
    counts = _group_counts(pe_metadata)
    by_status = counts["status"]
    metadata = {
        "rows_seen": seen,
        "rows_written": written,
        "rows_already_present": seen - written,
        "by_label": _markdown_counts(counts["label"], "label"),
        "by_status": _markdown_counts(by_status, "status"),
        "by_architecture": _markdown_counts(counts["architecture"], "architecture"),
        "failed": seen - by_status.get("ok", 0),
        # Totals of the whole run: one run covers every shard in its range.
        "files_per_second": round(seen / elapsed, 1) if elapsed > 0 else 0.0,
        "write_rows_per_second": round(written / write_seconds, 1) if write_seconds > 0 else 0.0,
    }
    context.log.info(
        "stored %d of %d rows (%d were already present) at %.1f files/s",
        written, seen, seen - written, metadata["files_per_second"],
    )
    return MaterializeResult(metadata=metadata)
