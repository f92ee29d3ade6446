"""pe-analyzer: a Dagster code location that turns a bucket of PE files into a metadata table."""
