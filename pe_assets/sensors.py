"""Sensors: chain sampling to processing, and notice new objects in the bucket."""


import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    EventLogEntry,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset_sensor,
    sensor,
)

from pe_assets.assets import MANIFEST_SHARDS_KEY
from pe_assets.jobs import process_job
from pe_assets.manifest import claim_new_objects, labels
from pe_assets.partitions import partition_range_tags, s3_prefix_partitions
from pe_assets.resources import PeConfig
from pe_assets.source import ObjectInfo, open_source
from pe_assets.table import create_db_engine, migrate

# Runs tagged so were processed by their launcher (`python -m pe_assets run`): no second run.
PROCESSED_INLINE_TAG = "pe_assets/processed_inline"

NEW_OBJECTS_INTERVAL_SECONDS = 30


@asset_sensor(
    asset_key=AssetKey("file_manifest"),
    job=process_job,
    minimum_interval_seconds=5,
    default_status=DefaultSensorStatus.RUNNING,
    description="Processes the shards a new file_manifest sampled, in one run.",
)
def file_manifest_sensor(context: SensorEvaluationContext, asset_event: EventLogEntry):
    run = context.instance.get_run_by_id(asset_event.run_id)
    if run is not None and run.tags.get(PROCESSED_INLINE_TAG):
        yield SkipReason(f"run {asset_event.run_id} processed its own manifest")
        return
    materialization = asset_event.asset_materialization
    entry = materialization.metadata.get(MANIFEST_SHARDS_KEY) if materialization else None
    shards = set(entry.value) if entry is not None else set()
    keys = context.instance.get_dynamic_partitions(s3_prefix_partitions.name)
    tags = partition_range_tags(keys, shards)
    if not tags:
        yield SkipReason("the manifest selected no new files")
        return
    yield RunRequest(run_key=f"manifest-{asset_event.run_id}", tags=tags)


@dataclass
class ObjectCursor:
    """The newest LastModified seen, and the keys that carry it (several can share a second)."""

    newest: float
    keys_at_newest: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, text: str | None) -> "ObjectCursor | None":
        if not text:
            return None
        data = json.loads(text)
        return cls(data["newest"], set(data["keys_at_newest"]))

    def dump(self) -> str:
        return json.dumps({"newest": self.newest, "keys_at_newest": sorted(self.keys_at_newest)})

    def is_new(self, item: ObjectInfo) -> bool:
        return item.modified > self.newest or (
            item.modified == self.newest and item.key not in self.keys_at_newest
        )

    def advance(self, item: ObjectInfo) -> None:
        if item.modified > self.newest:
            self.newest, self.keys_at_newest = item.modified, {item.key}
        elif item.modified == self.newest:
            self.keys_at_newest.add(item.key)


def scan_for_new_objects(
    listing: Iterable[ObjectInfo], cursor: ObjectCursor | None
) -> tuple[list[ObjectInfo], ObjectCursor]:
    """Objects newer than the cursor, and the cursor after this listing.

    With no cursor (the first tick) nothing is new: the listing only sets the starting point.
    """
    first_tick = cursor is None
    following = ObjectCursor(float("-inf")) if first_tick else ObjectCursor(
        cursor.newest, set(cursor.keys_at_newest)
    )
    new: list[ObjectInfo] = []
    for item in listing:
        if not first_tick and cursor.is_new(item):
            new.append(item)
        following.advance(item)
    return new, following


@sensor(
    job=process_job,
    minimum_interval_seconds=NEW_OBJECTS_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description="Processes objects added to the bucket since the previous tick.",
)
def new_s3_objects_sensor(context: SensorEvaluationContext, pe_config: PeConfig):
    settings = pe_config.settings()
    source = open_source(settings)
    try:
        listing = (item for prefix in labels(settings) for item in source.list_folder(prefix))
        cursor = ObjectCursor.parse(context.cursor)
        new, following = scan_for_new_objects(listing, cursor)
    finally:
        source.close()
    if cursor is None:
        return SensorResult(
            skip_reason="first tick: recorded where the bucket stands", cursor=following.dump()
        )
    if not new:
        return SensorResult(skip_reason="no new objects", cursor=following.dump())

    engine = create_db_engine(settings.database_url)
    migrate(engine)
    try:
        summary = claim_new_objects(engine, source, settings, new, f"sensor:{context.cursor}")
    finally:
        engine.dispose()
    known = context.instance.get_dynamic_partitions(s3_prefix_partitions.name)
    added = sorted(summary.shards - set(known))
    tags = partition_range_tags([*known, *added], summary.shards)
    context.log.info("%d new objects, %d claimed, in %d shards", len(new), summary.total,
                     len(summary.shards))
    if not tags:
        return SensorResult(skip_reason="new objects were already claimed", cursor=following.dump())
    return SensorResult(
        run_requests=[RunRequest(run_key=f"new-objects-{following.newest}", tags=tags)],
        dynamic_partitions_requests=(
            [s3_prefix_partitions.build_add_request(added)] if added else []
        ),
        cursor=following.dump(),
    )
