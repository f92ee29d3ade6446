"""Choosing which files a run processes, and claiming them in the database.

Sampling walks each label folder in key order from a per-folder watermark (the last key up to
which every file is claimed), so choosing N files lists about N keys whatever the table holds.
Samples are named by their hash, so key order is a random order and the first N unclaimed keys
are a uniform sample of what is left. Files are claimed with one insert-if-absent per batch:
two runs sampling at once never get the same file.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

from sqlalchemy.engine import Engine

from pe_assets.config import Settings
from pe_assets.errors import ConfigError
from pe_assets.source import LocalSource, ObjectInfo, S3Source, is_sample_key
from pe_assets.table import advance_watermark, claim_files, get_watermark, utcnow

logger = logging.getLogger(__name__)

# Characters of the object name that, after the label folder, make a shard (a partition key):
# 2 hex characters give 256 shards per label, 512 partitions in all for hash-named samples,
# far below Dagster's advice of at most 100,000 partitions per asset.
SHARD_CHARS = 2

# Keys claimed per INSERT statement while sampling.
CLAIM_BATCH = 5_000


def labels(settings: Settings) -> dict[str, str]:
    return {settings.clean_prefix: "clean", settings.malicious_prefix: "malicious"}


def label_of(key: str, settings: Settings) -> tuple[str, str] | None:
    """(label prefix, label) for a key under one of the two label folders, else None."""
    for prefix, label in labels(settings).items():
        if key.startswith(prefix) and len(key) > len(prefix):
            return prefix, label
    return None


def shard_of(key: str, label_prefix: str) -> str:
    name = key[len(label_prefix):]
    return label_prefix + name[:SHARD_CHARS]


@dataclass
class ClaimSummary:
    requested: dict[str, int] = field(default_factory=dict)
    claimed: Counter = field(default_factory=Counter)
    shards: set[str] = field(default_factory=set)
    skipped_lines: list[str] = field(default_factory=list)
    already_claimed: int = 0

    @property
    def total(self) -> int:
        return sum(self.claimed.values())

    @property
    def shortfall(self) -> dict[str, int]:
        return {
            label: wanted - self.claimed[label]
            for label, wanted in self.requested.items()
            if self.claimed[label] < wanted
        }


def split_n(n: int) -> dict[str, int]:
    """n/2 malicious and n/2 clean; for odd n the extra one is clean."""
    if n < 0:
        raise ConfigError(f"n must be positive, got {n}")
    return {"clean": n - n // 2, "malicious": n // 2}


def _claim_rows(source, items: Iterable[ObjectInfo], prefix: str, label: str, sampled_by: str):
    now = utcnow()
    return [
        {
            "path": source.url_for(item.key),
            "key": item.key,
            "label": label,
            "shard": shard_of(item.key, prefix),
            "size": item.size,
            "sampled_by": sampled_by,
            "sampled_at": now,
        }
        for item in items
    ]


def _sample_folder(
    engine: Engine,
    source: S3Source | LocalSource,
    prefix: str,
    label: str,
    wanted: int,
    sampled_by: str,
    summary: ClaimSummary,
) -> None:
    with engine.connect() as conn:
        after = get_watermark(conn, prefix)
    candidates: Iterator[ObjectInfo] = (
        item for item in source.list_folder(prefix, after=after) if is_sample_key(item.key)
    )
    remaining = wanted
    while remaining > 0:
        batch = list(islice(candidates, min(remaining, CLAIM_BATCH)))
        if not batch:
            break
        rows = _claim_rows(source, batch, prefix, label, sampled_by)
        with engine.begin() as conn:
            claimed = set(claim_files(conn, rows))
            # Every key up to the end of this batch is now claimed by someone.
            advance_watermark(conn, prefix, batch[-1].key)
        summary.already_claimed += len(batch) - len(claimed)
        summary.claimed[label] += len(claimed)
        summary.shards.update(row["shard"] for row in rows if row["path"] in claimed)
        remaining -= len(claimed)
    logger.info("sampled %d of %d %s files under %s", wanted - remaining, wanted, label, prefix)


def sample_new_files(
    engine: Engine, source: S3Source | LocalSource, settings: Settings, n: int, sampled_by: str
) -> ClaimSummary:
    """Claim up to n files not yet claimed: n/2 malicious, the rest clean."""
    summary = ClaimSummary(requested=split_n(n))
    for prefix, label in labels(settings).items():
        _sample_folder(engine, source, prefix, label, summary.requested[label], sampled_by, summary)
    return summary


def claim_listed_paths(
    engine: Engine,
    source: S3Source | LocalSource,
    settings: Settings,
    lines: Iterable[str],
    sampled_by: str,
) -> ClaimSummary:
    """Claim the files named in a paths file: keys relative to the root, or full URLs."""
    summary = ClaimSummary()
    rows: list[dict] = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key = source.key_for(line) if "://" in line else line.lstrip("/")
        found = label_of(key, settings) if key else None
        if key is None or found is None or not is_sample_key(key):
            summary.skipped_lines.append(line)
            continue
        prefix, label = found
        rows.extend(_claim_rows(source, [ObjectInfo(key, None, 0.0)], prefix, label, sampled_by))
    for label in ("clean", "malicious"):
        summary.requested[label] = sum(1 for row in rows if row["label"] == label)
    _claim_all(engine, rows, summary)
    if summary.skipped_lines:
        logger.warning(
            "%d lines are under neither label folder and were skipped, e.g. %r",
            len(summary.skipped_lines), summary.skipped_lines[0],
        )
    return summary


def claim_new_objects(
    engine: Engine,
    source: S3Source | LocalSource,
    settings: Settings,
    items: Iterable[ObjectInfo],
    sampled_by: str,
) -> ClaimSummary:
    """Claim objects a sensor noticed; those already claimed are left alone."""
    summary = ClaimSummary()
    rows = []
    for item in items:
        found = label_of(item.key, settings)
        if found and is_sample_key(item.key):
            rows.extend(_claim_rows(source, [item], found[0], found[1], sampled_by))
    _claim_all(engine, rows, summary)
    return summary


def _claim_all(engine: Engine, rows: list[dict], summary: ClaimSummary) -> None:
    for start in range(0, len(rows), CLAIM_BATCH):
        batch = rows[start:start + CLAIM_BATCH]
        with engine.begin() as conn:
            claimed = set(claim_files(conn, batch))
        summary.already_claimed += len(batch) - len(claimed)
        for row in batch:
            if row["path"] in claimed:
                summary.claimed[row["label"]] += 1
                summary.shards.add(row["shard"])
