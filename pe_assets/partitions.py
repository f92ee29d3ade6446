"""Partitions: one dynamic partition per shard of the bucket, e.g. `1/3f`.

A shard is a label folder plus the first SHARD_CHARS characters of the object name. Keys are
added when a shard first receives sampled files, so the UI shows which parts of the bucket
have been processed. A materialized shard means: every file sampled from it so far is stored.
"""

from dagster import DynamicPartitionsDefinition

s3_prefix_partitions = DynamicPartitionsDefinition(name="s3_prefix")

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def partition_range_tags(all_keys: list[str], wanted: set[str]) -> dict[str, str]:
    """Tags for one run covering `wanted`: the span of `all_keys` (in insertion order).

    Dynamic keys keep their insertion order, so the span may include shards that were not
    asked for; processing those is a cheap no-op when they have nothing pending.
    """
    positions = [i for i, key in enumerate(all_keys) if key in wanted]
    if not positions:
        return {}
    return {RANGE_START_TAG: all_keys[min(positions)], RANGE_END_TAG: all_keys[max(positions)]}
