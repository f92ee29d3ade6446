"""The dataset export: the `pe_metadata` table as files that ML tooling reads directly.

Two views of the same table, written under one folder (PE_EXPORT_DIR, default data/export):

- `parquet/label=clean/`, `parquet/label=malicious/`: the table itself, one row per path,
  every column, failed downloads included. Hive-style folders, so pyarrow, pandas and Spark
  give the label back as a column.
- `jsonl/part-*.json`: one JSON object per line and per sample hash, sorted by sha256:
  `{"sha256": ..., "label": ..., <every other column>, "path_count": ..., "label_conflict": ...}`.
  Every key is present in every object (missing values are `null`).

What the JSON Lines view does with rows that are not one-to-one with a sample:

- Rows without sha256 (the download failed, so there are no bytes and no features) are left
  out; they stay in the Parquet view and are counted in `rows_without_sha256`.
- Rows sharing a sha256 (the same bytes under two paths, possibly under both labels) become
  one object. Its label is `malicious` if any copy was filed as malicious: a file that also
  appears in the malware folder is treated as malware. `label_conflict` is true when the copies
  disagree, so a user can drop those hashes instead. The other fields come from one copy:
  malicious before clean, then a parsed (`ok`) row before a failed one, then the smallest path;
  `path_count` says how many paths held these bytes.

How it scales: the table is never pulled into the driver. The driver asks the database for a
few split points on the primary key (one index scan returning a path every ROWS_PER_CHUNK rows);
each Spark task then streams one key range with a server-side cursor and Spark writes the
Parquet. The JSON Lines view is computed from that Parquet (a window over sha256), so the
database is read once. On a cluster PE_EXPORT_DIR must be a folder every executor and the
driver can reach, as PE_WAREHOUSE_DIR is. The ranges are read one after another, not as one
snapshot: rows stored while an export runs may or may not be in it.
"""

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from dagster_pyspark import PySparkResource
from pydantic import Field

from pe_assets.assets import pe_metadata_table
from pe_assets.config import Settings
from pe_assets.resources import PeConfig
from pe_assets.table import METADATA_COLUMNS, create_db_engine, migrate, pe_metadata

EXPORT_DIR_ENV = "PE_EXPORT_DIR"
DEFAULT_EXPORT_DIR = Path("data") / "export"
PARQUET_DIR = "parquet"
JSONL_DIR = "jsonl"

# Rows per Spark task when reading the table: big enough that a task's start-up is noise,
# small enough that a failed task is cheap to retry and every core gets work.
ROWS_PER_CHUNK = 100_000

# Rows per round trip of the server-side cursor: bounds a task's memory, not its total.
FETCH_ROWS = 5_000

MALICIOUS = "malicious"

Chunk = tuple[str | None, str | None]


@dataclass
class ExportSummary:
    out_dir: Path
    table_rows: int = 0
    rows_without_sha256: int = 0
    samples: int = 0
    samples_by_label: dict[str, int] = field(default_factory=dict)
    label_conflicts: int = 0
    seconds: float = 0.0

    @property
    def parquet_dir(self) -> Path:
        return self.out_dir / PARQUET_DIR

    @property
    def jsonl_dir(self) -> Path:
        return self.out_dir / JSONL_DIR

    @property
    def duplicate_paths(self) -> int:
        """Rows with a sha256 that another row of the same hash stands for in the JSON Lines."""
        return self.table_rows - self.rows_without_sha256 - self.samples

    def render(self) -> str:
        labels = ", ".join(f"{n:,} {label}" for label, n in sorted(self.samples_by_label.items()))
        return "\n".join([
            f"exported {self.table_rows:,} rows in {self.seconds:.1f} s",
            f"  parquet: {self.parquet_dir}",
            f"  jsonl:   {self.jsonl_dir} ({self.samples:,} samples: {labels or 'none'})",
            f"  not in jsonl: {self.rows_without_sha256:,} without sha256, "
            f"{self.duplicate_paths:,} duplicate paths; "
            f"{self.label_conflicts:,} hashes under both labels",
        ])


def default_export_dir() -> Path:
    return Path(os.environ.get(EXPORT_DIR_ENV, "").strip() or DEFAULT_EXPORT_DIR)


def table_schema():
    """The Spark schema of the table's rows, from the SQLAlchemy column types."""
    from pyspark.sql.types import (
        BooleanType,
        DoubleType,
        LongType,
        StringType,
        StructField,
        StructType,
        TimestampType,
    )

    def spark_type(column: sa.Column):
        if isinstance(column.type, sa.Boolean):
            return BooleanType()
        if isinstance(column.type, sa.Integer):
            return LongType()
        if isinstance(column.type, sa.Float):
            return DoubleType()
        if isinstance(column.type, sa.DateTime):
            return TimestampType()
        return StringType()

    return StructType([
        StructField(name, spark_type(pe_metadata.c[name]), True) for name in METADATA_COLUMNS
    ])


def plan_chunks(conn: sa.Connection, rows_per_chunk: int = ROWS_PER_CHUNK) -> list[Chunk]:
    """Path ranges (low, high] of about rows_per_chunk rows each; None is an open end."""
    numbered = sa.select(
        pe_metadata.c.path,
        sa.func.row_number().over(order_by=pe_metadata.c.path).label("n"),
    ).subquery()
    query = (
        sa.select(numbered.c.path)
        .where(numbered.c.n % rows_per_chunk == 0)
        .order_by(numbered.c.path)
    )
    bounds: list[str | None] = [None, *conn.execute(query).scalars(), None]
    return list(pairwise(bounds))


def read_chunks(settings: dict[str, Any], chunks: Iterable[Chunk]) -> Iterator[tuple]:
    """Spark `mapPartitions` body: streams the rows of some path ranges (METADATA_COLUMNS)."""
    config = Settings.from_dict(settings)
    engine = create_db_engine(config.database_url)
    columns = [pe_metadata.c[name] for name in METADATA_COLUMNS]
    try:
        for low, high in chunks:
            query = sa.select(*columns).order_by(pe_metadata.c.path)
            if low is not None:
                query = query.where(pe_metadata.c.path > low)
            if high is not None:
                query = query.where(pe_metadata.c.path <= high)
            with engine.connect() as conn:
                result = conn.execution_options(yield_per=FETCH_ROWS).execute(query)
                for row in result:
                    yield tuple(row)
    finally:
        engine.dispose()


def read_table(spark, settings: Settings, rows_per_chunk: int = ROWS_PER_CHUNK):
    """The whole `pe_metadata` table as a DataFrame, read by the executors in key ranges."""
    engine = create_db_engine(settings.database_url)
    try:
        migrate(engine)
        with engine.connect() as conn:
            chunks = plan_chunks(conn, rows_per_chunk)
    finally:
        engine.dispose()
    rdd = spark.sparkContext.parallelize(chunks, len(chunks))
    rows = rdd.mapPartitions(partial(read_chunks, settings.as_dict()))
    return spark.createDataFrame(rows, table_schema())


def samples_frame(table):
    """One row per sha256, by the rule in this module's docstring, in JSON Lines column order."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    hashed = table.where(F.col("sha256").isNotNull())
    same_hash = Window.partitionBy("sha256")
    preferred = Window.partitionBy("sha256").orderBy(
        (F.col("label") == MALICIOUS).desc(), (F.col("status") == "ok").desc(), F.col("path")
    )
    ranked = (
        hashed.withColumn("_rank", F.row_number().over(preferred))
        .withColumn("path_count", F.count(F.lit(1)).over(same_hash))
        .withColumn("label_conflict", F.size(F.collect_set("label").over(same_hash)) > 1)
    )
    rest = [name for name in METADATA_COLUMNS if name not in ("sha256", "label")]
    return (
        ranked.where(F.col("_rank") == 1)
        .select("sha256", "label", *rest, "path_count", "label_conflict")
    )


def export_dataset(
    spark, settings: Settings, out_dir: Path, rows_per_chunk: int = ROWS_PER_CHUNK
) -> ExportSummary:
    """Write both views under out_dir (replacing an earlier export) and count what went where."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    started = time.perf_counter()
    summary = ExportSummary(out_dir=Path(out_dir).resolve())
    parquet = str(summary.parquet_dir)

    table = read_table(spark, settings, rows_per_chunk)
    table.write.mode("overwrite").partitionBy("label").parquet(parquet)

    # Read back with the schema given, so an empty export (no label folders) still loads.
    stored = spark.read.schema(table_schema()).parquet(parquet)
    totals = stored.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count(F.when(F.col("sha256").isNull(), 1)).alias("without_sha256"),
    ).first()
    summary.table_rows = totals["rows"]
    summary.rows_without_sha256 = totals["without_sha256"]

    samples = samples_frame(stored).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        (
            samples.orderBy("sha256").write.mode("overwrite")
            .option("ignoreNullFields", "false")
            .option("timeZone", "UTC")
            .json(str(summary.jsonl_dir))
        )
        by_label = samples.groupBy("label").agg(
            F.count(F.lit(1)).alias("samples"),
            F.count(F.when(F.col("label_conflict"), 1)).alias("conflicts"),
        ).collect()
    finally:
        samples.unpersist()
    summary.samples_by_label = {row["label"]: row["samples"] for row in by_label}
    summary.samples = sum(summary.samples_by_label.values())
    summary.label_conflicts = sum(row["conflicts"] for row in by_label)
    summary.seconds = time.perf_counter() - started
    return summary


class DatasetExportConfig(Config):
    out_dir: str | None = Field(
        default=None,
        description=f"Folder for parquet/ and jsonl/; default ${EXPORT_DIR_ENV} or "
        f"{DEFAULT_EXPORT_DIR}. On a cluster, a folder every executor can reach.",
    )


@asset(
    group_name="pe",
    deps=[pe_metadata_table],
    description="The pe_metadata table as Parquet by label and JSON Lines by sha256, for ML.",
)
def pe_dataset_export(
    context: AssetExecutionContext,
    config: DatasetExportConfig,
    pe_config: PeConfig,
    pyspark: PySparkResource,
) -> MaterializeResult:
    out_dir = Path(config.out_dir) if config.out_dir else default_export_dir()
    summary = export_dataset(pyspark.spark_session, pe_config.settings(), out_dir)
    context.log.info(
        "exported %d rows: %d samples to JSON Lines, %d rows without sha256, "
        "%d duplicate paths, %d hashes under both labels",
        summary.table_rows, summary.samples, summary.rows_without_sha256,
        summary.duplicate_paths, summary.label_conflicts,
    )
    lines = ["| label | samples |", "|---|---:|"]
    lines += [f"| {k} | {v:,} |" for k, v in sorted(summary.samples_by_label.items())]
    return MaterializeResult(
        metadata={
            "parquet_path": MetadataValue.path(str(summary.parquet_dir)),
            "jsonl_path": MetadataValue.path(str(summary.jsonl_dir)),
            "table_rows": summary.table_rows,
            "samples": summary.samples,
            "samples_by_label": MetadataValue.md("\n".join(lines)),
            "rows_without_sha256": summary.rows_without_sha256,
            "duplicate_paths": summary.duplicate_paths,
            "label_conflicts": summary.label_conflicts,
            "seconds": round(summary.seconds, 3),
        }
    )


def export_with_own_session(settings: Settings, out_dir: Path) -> ExportSummary:
    """For the command line: the same Spark session the assets get (PE_SPARK_MASTER).

    Stops the session afterwards unless one was already running in this process.
    """
    from dagster import build_resources
    from pyspark.sql import SparkSession

    from pe_assets.resources import spark_resource

    running = SparkSession.getActiveSession() is not None
    with build_resources({"pyspark": spark_resource()}) as resources:
        spark = resources.pyspark.spark_session
        try:
            return export_dataset(spark, settings, out_dir)
        finally:
            if not running:
                spark.stop()
