"""Jobs: sampling, and processing a range of shards in one run with one Spark session."""

from dagster import AssetSelection, define_asset_job, in_process_executor

sample_job = define_asset_job(
    "sample_job",
    selection=AssetSelection.assets("file_manifest"),
    description="Choose files not yet processed and claim them (config: n or paths_file).",
)

# In-process: both steps share one Spark session instead of starting a JVM each.
process_job = define_asset_job(
    "process_job",
    selection=AssetSelection.assets("pe_metadata", "pe_metadata_table"),
    executor_def=in_process_executor,
    description="Download, parse and store the pending files of a range of shards.",
)
