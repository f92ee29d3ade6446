"""Resources: the project's settings, the Spark session, and the Parquet store for DataFrames."""


import atexit
import hashlib
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import replace
from functools import cache
from pathlib import Path

from dagster import (
    ConfigurableIOManager,
    ConfigurableResource,
    InitResourceContext,
    InputContext,
    OutputContext,
)
from dagster_pyspark import PySparkResource

import pe_assets
from pe_assets.config import (
    Settings,
    check_cluster_database,
    is_local_master,
    load_settings,
    normalize_source_url,
)
from pe_assets.errors import ConfigError

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
            check_cluster_database(settings.database_url, settings.spark_master)
        return settings


PYTHON_CONF = "spark.pyspark.python"


class PeSparkResource(PySparkResource):
    """dagster-pyspark's session, with Python workers that can import this project.

    With a local master the Python workers run here, from this interpreter, which has
    pe_assets installed. With a cluster master the workers' interpreter is spark.pyspark.python
    or PYSPARK_PYTHON (Spark's default: `python3` on the workers' PATH), this package reaches
    them as a zip added with addPyFile, and its third-party packages must be installed there.
    """

    def setup_for_execution(self, context: InitResourceContext) -> None:
        master = str(self.spark_config.get("spark.master", "local[*]"))
        local = is_local_master(master)
        python = executor_python(self.spark_config, local=local)
        if local:
            # The JVM binds to loopback anyway (spark_resource); saying so up front spares the
            # "hostname resolves to a loopback address" warning on every run.
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        if python:
            # PySpark takes the workers' interpreter from this variable when the session
            # starts; spark.pyspark.python on its own is read only by spark-submit.
            os.environ["PYSPARK_PYTHON"] = python
        super().setup_for_execution(context)

        if not is_local_master(self.spark_context.master):
            archive = ship_project(self.spark_context)
            context.log.info(
                "Spark master %s: shipped %s to the executors, whose Python is %s",
                self.spark_context.master, archive.name, python or "python3 on their PATH",
            )


def executor_python(spark_config: dict, local: bool) -> str | None:
    """The interpreter Spark should start Python workers with, or None for Spark's default."""
    configured = spark_config.get(PYTHON_CONF) or os.environ.get("PYSPARK_PYTHON")
    if configured:
        return str(configured)
    # A local master's workers run on this machine: this interpreter has pe_assets installed.
    return sys.executable if local else None


# Bytecode, and the C extension with its source: Python cannot import an extension module
# from a zip, so on the executors the parser counts bytes with numpy (same values).
_NOT_SHIPPED = {".pyc", ".so", ".pyd", ".c"}


@cache
def _archive_dir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="pe-analyzer-code-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def zip_project(folder: Path | None = None) -> Path:
    """Zip the installed pe_assets package; the name carries a hash of its contents.

    The same code gives the same path, so a second session setup in this process adds
    nothing new (Spark refuses two different files of one name in one application).
    """
    package = Path(pe_assets.__file__).resolve().parent
    files = sorted(
        path for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
        and path.suffix not in _NOT_SHIPPED
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())

    archive = (folder or _archive_dir()) / f"pe_assets-{digest.hexdigest()[:12]}.zip"
    if not archive.exists():
        temporary = archive.with_suffix(".part")
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as bundle:
            for path in files:
                bundle.write(path, Path("pe_assets") / path.relative_to(package))
        temporary.replace(archive)
    return archive


def ship_project(spark_context) -> Path:
    """Put this package on every executor's sys.path, ahead of any copy installed there."""
    archive = zip_project()
    if not any(Path(added).name == archive.name for added in spark_context.listFiles):
        spark_context.addPyFile(str(archive))
    return archive


def spark_resource() -> PeSparkResource:
    """A Spark session for PE_SPARK_MASTER; local[*] by default."""
    master = os.environ.get("PE_SPARK_MASTER", "").strip() or "local[*]"
    # A local session talks only to itself: keep it on loopback rather than the first NIC.
    loopback = (
        {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}
        if is_local_master(master)
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
    every executor and the driver can reach: a folder mounted at the same place on all of
    them, or a URL of a filesystem Spark can write to (hdfs://, s3a:// with hadoop-aws).
    """

    base_dir: str = str(DEFAULT_WAREHOUSE_DIR)

    def _path(self, asset_path: list[str], run_id: str) -> str:
        if "://" in self.base_dir:
            return "/".join([self.base_dir.rstrip("/"), *asset_path, f"run={run_id}"])
        return str(Path(self.base_dir).resolve().joinpath(*asset_path, f"run={run_id}"))

    def handle_output(self, context: OutputContext, obj) -> None:
        path = self._path(context.asset_key.path, context.run_id)
        obj.write.mode("overwrite").parquet(path)
        self._check_shared(path, obj.sparkSession.sparkContext.master)
        context.add_output_metadata({"parquet_path": path})

    def _check_shared(self, path: str, master: str) -> None:
        # Executors on other machines write a local folder on their own disks: the driver
        # would then read an empty table and store nothing, without any error.
        if "://" in path or is_local_master(master) or any(Path(path).glob("part-*")):
            return
        raise ConfigError(
            f"PE_WAREHOUSE_DIR={self.base_dir}: the executors' Parquet files are not visible "
            "here; with a cluster it must be a folder shared by the driver and every worker"
        )

    def load_input(self, context: InputContext):
        from pyspark.sql import SparkSession

        upstream = context.upstream_output
        path = self._path(upstream.asset_key.path, upstream.run_id)
        spark = SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()
        return spark.read.parquet(path)
