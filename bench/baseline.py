"""The naive job the pipeline is measured against: the obvious way to write it.

    python bench/bench_pipeline.py ... --baseline-n 2000   (runs it after the pipeline)

Same Spark session, same files (the first N the pipeline stored, by path), same fields: a
Python UDF that builds a new S3 client for every file (opens the file, for a folder
bucket), loads it fully with pefile and reads the fields from it; then one INSERT and one
commit per row into `pe_metadata_baseline`. The key list is handed to it, so listing and
selection cost it nothing.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from pe_assets.config import Settings
from pe_assets.pe_parser import PARSED_FIELDS
from pe_assets.source import LocalSource
from pe_assets.spark_schema import RESULT_SCHEMA
from pe_assets.table import METADATA_COLUMNS, create_db_engine, pe_metadata

BASELINE_TABLE = "pe_metadata_baseline"


def _read_naively(settings: dict, key: str) -> bytes:
    if not settings["source_url"].startswith("s3://"):
        path = LocalSource(Settings.from_dict(settings)).root / key
        with open(path, "rb") as handle:
            return handle.read()
    import boto3

    bucket, _, root = settings["source_url"][len("s3://"):].partition("/")
    client = boto3.client("s3", endpoint_url=settings["s3_endpoint_url"])
    full_key = f"{root}/{key}" if root else key
    return client.get_object(Bucket=bucket, Key=full_key)["Body"].read()


def _parse_naively(settings: dict, key: str) -> tuple:
    from pe_assets_tests.pefile_reference import reference_record

    record = reference_record(_read_naively(settings, key))
    return tuple(record[name] for name in PARSED_FIELDS)


def _insert_one_by_one(database_url: str, rows) -> None:
    engine = create_db_engine(database_url)
    table = sa.table(BASELINE_TABLE, *[sa.column(name) for name in METADATA_COLUMNS])
    with engine.connect() as conn:
        for row in rows:
            values = row.asDict()
            conn.execute(table.insert().values(
                {name: values.get(name) for name in METADATA_COLUMNS}
            ))
            conn.commit()
    engine.dispose()


def run_baseline(spark, settings: Settings, database_url: str, n: int) -> dict:
    """Run the naive job on n of the files already stored by the pipeline; return figures."""
    from functools import partial

    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType

    engine = create_db_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {BASELINE_TABLE}")
        conn.exec_driver_sql(f"CREATE TABLE {BASELINE_TABLE} (LIKE pe_metadata)")
        files = conn.execute(
            sa.select(pe_metadata.c.path, pe_metadata.c.label).order_by(pe_metadata.c.path).limit(n)
        ).all()
    source_base = settings.source_url.rstrip("/") + "/"
    if not settings.is_s3:
        source_base = LocalSource(settings).url_for("")
    keys = [(path, path[len(source_base):], label) for path, label in files]

    parsed_type = StructType([f for f in RESULT_SCHEMA.fields if f.name in PARSED_FIELDS])
    parse = F.udf(partial(_parse_naively, settings.as_dict()), parsed_type)
    started = time.perf_counter()
    frame = spark.createDataFrame(keys, "path string, key string, label string", )
    frame = frame.repartition(spark.sparkContext.defaultParallelism)
    frame = frame.withColumn("parsed", parse("key")).select(
        "path", "label", "parsed.*",
        F.current_timestamp().alias("processed_at"), F.lit("baseline").alias("run_id"),
    )
    frame.foreachPartition(partial(_insert_one_by_one, database_url))
    seconds = time.perf_counter() - started

    with engine.connect() as conn:
        stored = conn.exec_driver_sql(f"SELECT count(*) FROM {BASELINE_TABLE}").scalar()
        mean_size = conn.exec_driver_sql(f"SELECT avg(size) FROM {BASELINE_TABLE}").scalar()
        agree = conn.exec_driver_sql(
            f"SELECT count(*) FROM {BASELINE_TABLE} b JOIN pe_metadata p USING (path) "
            "WHERE b.sha256 IS NOT DISTINCT FROM p.sha256 "
            "AND b.import_count IS NOT DISTINCT FROM p.import_count"
        ).scalar()
    engine.dispose()
    return {"files": stored, "seconds": seconds, "files_per_s": stored / seconds,
            "mean_size": float(mean_size or 0), "agree_with_pipeline": agree}
