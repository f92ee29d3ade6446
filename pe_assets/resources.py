"""Resources: the project's settings, the Spark session, and the Parquet store for DataFrames."""


import os
import sys
from dataclasses import replace
from pathlib import Path

from dagster import (
    ConfigurableIOManager,
    ConfigurableResource,
    InitResourceContext,
    InputContext,
    OutputContext,
)
from dagster_pyspark import PySparkResource

from pe_assets.config import Settings, load_settings, normalize_source_url

DEFAULT_WAREHOUSE_DIR = Path("data") / "warehouse"


class PeConfig(ConfigurableResource):
    """Where samples are read and results written. Unset fields come from PE_* variables."""

    source_url: str | None = None
    database_url: str | None = None

    def settings(self) -> Settings:
        settings = load_settings()
        if self.source_url:
            settings = replace(settings, source_url=normalize_source_url(self.source_url))
        if self.database_url:
            settings = replace(settings, database_url=self.database_url)
        return settings


class PeSparkResource(PySparkResource):
    """dagster-pyspark's session, with Python workers that can import this project."""

    def setup_for_execution(self, context: InitResourceContext) -> None:
        # Spark starts workers with PYSPARK_PYTHON (default: `python3` on PATH), which may not
        # have pe_assets installed; the spark.pyspark.python setting does not reach local mode.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        super().setup_for_execution(context)


def spark_resource() -> PeSparkResource:
    """A Spark session for PE_SPARK_MASTER; local[*] by default."""
    master = os.environ.get("PE_SPARK_MASTER", "").strip() or "local[*]"
    # A local session talks only to itself: keep it on loopback rather than the first NIC.
    loopback = (
        {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}
        if master.startswith("local")
        else {}
    )
    return PeSparkResource(
        spark_config={
            **loopback,
            "spark.master": master,
            "spark.app.name": "pe-analyzer",
            # Rows are produced by Python workers; the JVM only moves them to Parquet.
            "spark.driver.memory": os.environ.get("PE_SPARK_DRIVER_MEMORY", "1g"),
            "spark.sql.shuffle.partitions": "8",
            "spark.ui.showConsoleProgress": "false",
            "spark.python.worker.reuse": "true",
        }
    )


class SparkParquetIOManager(ConfigurableIOManager):
    """Keeps a Spark DataFrame asset as Parquet, one folder per run.

    dagster-pyspark ships no IO manager for DataFrames; Parquet lets the next step (or a later
    run) read the parsed rows without parsing again. On a cluster, base_dir must be a path
    every executor and the driver can reach.
    """

    base_dir: str = str(DEFAULT_WAREHOUSE_DIR)

    def _path(self, asset_path: list[str], run_id: str) -> str:
        return str(Path(self.base_dir).resolve().joinpath(*asset_path, f"run={run_id}"))

    def handle_output(self, context: OutputContext, obj) -> None:
        path = self._path(context.asset_key.path, context.run_id)
        obj.write.mode("overwrite").parquet(path)
        context.add_output_metadata({"parquet_path": path})

    def load_input(self, context: InputContext):
        from pyspark.sql import SparkSession

        upstream = context.upstream_output
        path = self._path(upstream.asset_key.path, upstream.run_id)
        spark = SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()
        return spark.read.parquet(path)
