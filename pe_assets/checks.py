"""Asset checks on the `pe_metadata` table: what a person wants confirmed after a run.

process_job selects pe_metadata_table, and an asset job runs the checks of the assets it
selects, so every processing run ends with these checks; each can be run again from the
asset's Checks tab in the UI. The checks query the database, not the run's DataFrame, so
they judge the table as it stands.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    MetadataValue,
    asset_check,
)
from sqlalchemy.engine import Connection

from pe_assets.assets import file_manifest, pe_metadata_table
from pe_assets.errors import ConfigError
from pe_assets.manifest import split_n
from pe_assets.resources import PeConfig
from pe_assets.table import create_db_engine, migrate, pe_manifest, pe_metadata

MAX_FAILED_SHARE_ENV = "PE_MAX_FAILED_SHARE"
# Half the rows failing means the source or the parser is broken, not that samples are odd;
# malware buckets do hold some files that are not PEs at all, so zero is too strict a default.
DEFAULT_MAX_FAILED_SHARE = 0.5

# Duplicated paths listed in the check's metadata; the count covers all of them.
EXAMPLES_SHOWN = 5


def max_failed_share(environ: dict[str, str] | None = None) -> float:
    """The largest share of rows with a status other than `ok` that still passes (0 to 1)."""
    raw = (os.environ if environ is None else environ).get(MAX_FAILED_SHARE_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_FAILED_SHARE
    try:
        value = float(raw)
    except ValueError as e:
        raise ConfigError(f"{MAX_FAILED_SHARE_ENV}={raw!r} is not a number") from e
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{MAX_FAILED_SHARE_ENV}={raw!r} must be between 0 and 1")
    return value


@contextmanager
def _connect(pe_config: PeConfig) -> Iterator[Connection]:
    engine = create_db_engine(pe_config.settings().database_url)
    try:
        migrate(engine)
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _markdown_table(counts: dict[str, int], heading: str) -> MetadataValue:
    lines = [f"| {heading} | rows |", "|---|---:|"]
    lines += [f"| {key} | {value:,} |" for key, value in sorted(counts.items())]
    return MetadataValue.md("\n".join(lines))


def count_duplicate_paths(conn: Connection) -> tuple[int, int, list[str]]:
    """(paths stored more than once, surplus rows, a few such paths)."""
    copies = sa.func.count().label("copies")
    duplicated = (
        sa.select(pe_metadata.c.path, copies)
        .group_by(pe_metadata.c.path)
        .having(sa.func.count() > 1)
    )
    inner = duplicated.subquery()
    paths, surplus = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(inner.c.copies - 1), 0))
    ).one()
    examples = conn.execute(
        duplicated.order_by(pe_metadata.c.path).limit(EXAMPLES_SHOWN)
    ).scalars().all()
    return paths, int(surplus), list(examples)


@asset_check(
    asset=pe_metadata_table,
    description="Every path is stored once: a second row for a file would count it twice.",
)
def paths_are_unique(pe_config: PeConfig) -> AssetCheckResult:
    # The primary key forbids duplicates today; this guards the promise, not the constraint,
    # so a schema change or a table loaded by other means is caught too.
    with _connect(pe_config) as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(pe_metadata)).scalar_one()
        paths, surplus, examples = count_duplicate_paths(conn)
    metadata = {"rows": rows, "duplicated_paths": paths, "surplus_rows": surplus}
    if examples:
        metadata["examples"] = MetadataValue.json(examples)
    return AssetCheckResult(passed=paths == 0, metadata=metadata)


def sample_label_counts(conn: Connection, run_id: str) -> tuple[dict[str, int], dict[str, int]]:
    """Per label, the files a sample run claimed and how many of them are stored."""
    claimed_query = (
        sa.select(pe_manifest.c.label, sa.func.count())
        .where(pe_manifest.c.sampled_by == run_id)
        .group_by(pe_manifest.c.label)
    )
    stored_query = (
        sa.select(pe_manifest.c.label, sa.func.count())
        .select_from(pe_manifest.join(pe_metadata, pe_metadata.c.path == pe_manifest.c.path))
        .where(pe_manifest.c.sampled_by == run_id)
        .group_by(pe_manifest.c.label)
    )
    claimed = {label: count for label, count in conn.execute(claimed_query)}
    stored = {label: count for label, count in conn.execute(stored_query)}
    return claimed, stored


def _requested_n(context: AssetCheckExecutionContext, run_id: str) -> int | None:
    """The `n` the sample run was launched with; None for a paths file (or a deleted run)."""
    run = context.instance.get_run_by_id(run_id)
    if run is None:
        return None
    config = run.run_config.get("ops", {}).get("file_manifest", {}).get("config") or {}
    return config.get("n")


@asset_check(
    asset=pe_metadata_table,
    additional_deps=[file_manifest],
    description=(
        "The latest sample (file_manifest with `n`) claimed n/2 malicious and n - n/2 clean "
        "files, counted in the pe_manifest table."
    ),
)
def last_sample_is_balanced(
    context: AssetCheckExecutionContext, pe_config: PeConfig
) -> AssetCheckResult:
    event = context.instance.get_latest_materialization_event(file_manifest.key)
    if event is None:
        return AssetCheckResult(passed=True, description="No sample has been taken yet.")
    n = _requested_n(context, event.run_id)
    if n is None:
        return AssetCheckResult(
            passed=True,
            metadata={"sample_run": event.run_id},
            description="The latest sample was a paths file: it asked for no balance.",
        )

    with _connect(pe_config) as conn:
        claimed, stored = sample_label_counts(conn, event.run_id)
    expected = split_n(n)
    metadata = {
        "sample_run": event.run_id,
        "n": n,
        "expected_clean": expected["clean"],
        "expected_malicious": expected["malicious"],
        "claimed_clean": claimed.get("clean", 0),
        "claimed_malicious": claimed.get("malicious", 0),
        "stored_clean": stored.get("clean", 0),
        "stored_malicious": stored.get("malicious", 0),
    }
    balanced = all(claimed.get(label, 0) == count for label, count in expected.items())
    if balanced:
        return AssetCheckResult(passed=True, metadata=metadata)

    # The bucket running out of unprocessed files of one label is expected at the end of a
    # dataset; a count that disagrees with what the sample reported is not.
    recorded = event.asset_materialization.metadata if event.asset_materialization else {}
    explained = "shortfall" in recorded
    return AssetCheckResult(
        passed=False,
        metadata=metadata,
        severity=AssetCheckSeverity.WARN if explained else AssetCheckSeverity.ERROR,
        description=(
            "Fewer unprocessed files of a label remained than n asked for."
            if explained
            else "The claimed files do not match what n asked for."
        ),
    )


def status_counts(conn: Connection) -> dict[str, int]:
    query = sa.select(pe_metadata.c.status, sa.func.count()).group_by(pe_metadata.c.status)
    return {status: count for status, count in conn.execute(query)}


@asset_check(
    asset=pe_metadata_table,
    description=(
        f"At most {MAX_FAILED_SHARE_ENV} (default {DEFAULT_MAX_FAILED_SHARE}) of the rows have "
        "a status other than `ok`."
    ),
)
def failed_share_is_low(pe_config: PeConfig) -> AssetCheckResult:
    threshold = max_failed_share()
    with _connect(pe_config) as conn:
        by_status = status_counts(conn)
    rows = sum(by_status.values())
    failed = rows - by_status.get("ok", 0)
    share = failed / rows if rows else 0.0
    return AssetCheckResult(
        passed=share <= threshold,
        metadata={
            "rows": rows,
            "failed": failed,
            "failed_share": round(share, 4),
            "max_failed_share": threshold,
            "by_status": _markdown_table(by_status, "status"),
        },
    )


pe_metadata_table_checks = [paths_are_unique, last_sample_is_balanced, failed_share_is_low]
