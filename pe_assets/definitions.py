"""The code location: every asset, job, sensor and resource of pe-analyzer."""

import os

from dagster import Definitions

from pe_assets.assets import file_manifest, pe_metadata, pe_metadata_table
from pe_assets.checks import pe_metadata_table_checks
from pe_assets.export import pe_dataset_export
from pe_assets.jobs import process_job, sample_job
from pe_assets.resources import (
    DEFAULT_WAREHOUSE_DIR,
    PeConfig,
    SparkParquetIOManager,
    spark_resource,
)
from pe_assets.sensors import file_manifest_sensor, new_s3_objects_sensor


def build_definitions(warehouse_dir: str | None = None) -> Definitions:
    """Definitions whose settings come from PE_* variables at run time."""
    warehouse = warehouse_dir or os.environ.get("PE_WAREHOUSE_DIR") or str(DEFAULT_WAREHOUSE_DIR)
    return Definitions(
        assets=[file_manifest, pe_metadata, pe_metadata_table, pe_dataset_export],
        asset_checks=pe_metadata_table_checks,
        jobs=[sample_job, process_job],
        sensors=[file_manifest_sensor, new_s3_objects_sensor],
        resources={
            "pe_config": PeConfig(),
            "pyspark": spark_resource(),
            "parquet_io_manager": SparkParquetIOManager(base_dir=warehouse),
        },
    )


defs = build_definitions()
