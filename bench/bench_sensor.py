"""How long one tick of new_s3_objects_sensor takes on a large bucket with a few new files.

    python bench/bench_sensor.py --source /work/bench-data/b1m --new 1000
    python bench/bench_sensor.py --source s3://pe-bench --s3-endpoint http://127.0.0.1:5000

Ticks the sensor three times against a fresh database `pe_bench_sensor` and an ephemeral
Dagster instance: the first tick only records where the bucket stands; then --new files are
written (or uploaded) into the bucket, newer than everything there, and the second tick
must claim exactly them and request one run; the third finds nothing. The added files are
deleted at the end unless --keep. Dagster stops a sensor tick after 60 s by default.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import ADMIN_URL, _recreate_database, _vm_hwm  # noqa: E402

SENSOR_DATABASE = "pe_bench_sensor"
# Not a seed the bucket generator uses by default, so the new names are new.
NEW_FILES_SEED = 4242


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="bucket folder or s3://bucket")
    parser.add_argument("--s3-endpoint", help="S3 endpoint URL (moto on loopback, say)")
    parser.add_argument("--new", type=int, default=1000, help="files to add between ticks")
    parser.add_argument("--admin-url", default=ADMIN_URL)
    parser.add_argument("--keep", action="store_true", help="leave the added files in place")
    return parser.parse_args(argv)


def _tick(sensor, context):
    started = time.perf_counter()
    result = sensor(context)
    seconds = time.perf_counter() - started
    if result.cursor:
        context.update_cursor(result.cursor)
    return result, seconds


class _Bucket:
    """Adds and removes the new files in a folder or an S3 bucket."""

    def __init__(self, args: argparse.Namespace):
        self.s3 = args.source.startswith("s3://")
        if self.s3:
            import boto3

            self.name = args.source[len("s3://"):].strip("/")
            self.client = boto3.client("s3", endpoint_url=args.s3_endpoint)
        else:
            self.folder = Path(args.source).resolve()

    def add(self, clean: int, malicious: int) -> None:
        from pe_assets.samples import upload_samples_s3, write_sample_folder

        if self.s3:
            upload_samples_s3(self.client, self.name, n_clean=clean, n_malicious=malicious,
                              seed=NEW_FILES_SEED, with_index_files=False)
        else:
            write_sample_folder(self.folder, n_clean=clean, n_malicious=malicious,
                                seed=NEW_FILES_SEED, with_index_files=False)

    def remove(self, keys: list[str]) -> None:
        for key in keys:
            if self.s3:
                self.client.delete_object(Bucket=self.name, Key=key)
            else:
                (self.folder / key).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    url = _recreate_database(args.admin_url, SENSOR_DATABASE)
    os.environ.update({"PE_SOURCE_URL": args.source, "PE_DATABASE_URL": url})
    if args.s3_endpoint:
        os.environ["PE_S3_ENDPOINT_URL"] = args.s3_endpoint
    bucket = _Bucket(args)

    from dagster import DagsterInstance, build_sensor_context

    from pe_assets.definitions import build_definitions
    from pe_assets.resources import PeConfig
    from pe_assets.samples import iter_bucket_objects
    from pe_assets.sensors import new_s3_objects_sensor

    defs = build_definitions(tempfile.mkdtemp(prefix="pe-bench-sensor-"))
    instance = DagsterInstance.ephemeral()
    context = build_sensor_context(
        instance=instance, definitions=defs, resources={"pe_config": PeConfig()}
    )
    clean = args.new // 2
    added = [key for key, _, _ in iter_bucket_objects(
        n_clean=clean, n_malicious=args.new - clean, seed=NEW_FILES_SEED)]
    try:
        _, first = _tick(new_s3_objects_sensor, context)
        bucket.add(clean, args.new - clean)
        second_result, second = _tick(new_s3_objects_sensor, context)
        third_result, third = _tick(new_s3_objects_sensor, context)
    finally:
        if not args.keep:
            bucket.remove(added)

    requests = second_result.run_requests or []
    claimed = sum(
        len(request.partition_keys) for request in second_result.dynamic_partitions_requests or []
    )
    print(f"command: python {shlex.join(['bench/bench_sensor.py', *argv])}")
    print(f"bucket: {args.source}")
    print(f"first tick (records the cursor): {first:6.1f} s")
    print(f"tick with {args.new} new files:     {second:6.1f} s -> {len(requests)} run request, "
          f"{claimed} new partition keys")
    print(f"tick with nothing new:          {third:6.1f} s -> {third_result.skip_reason}")
    print(f"peak memory of this process: {_vm_hwm() / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
