"""Create a sample bucket (a local folder or an S3 bucket) of N synthetic PE files and report
how fast it went.

    python bench/make_bucket.py --n 1000000 --dest /tmp/pe-bucket
    AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \\
        python bench/make_bucket.py --n 10000 --s3-endpoint http://127.0.0.1:5000 --bucket pe

Half of the files go under the clean prefix (0/), half under the malicious one (1/).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from pe_assets.samples import SampleSummary, upload_samples_s3, write_sample_folder

# Exit codes, so a wrapping script can tell bad usage from a failed write.
EXIT_OK = 0
EXIT_USAGE = 2


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, required=True, help="number of sample files")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--dest", type=Path, help="write a folder bucket here")
    target.add_argument("--s3-endpoint", help="S3 endpoint URL, e.g. http://127.0.0.1:5000")
    parser.add_argument("--bucket", help="S3 bucket name (created if missing)")
    parser.add_argument("--root", default="", help="key prefix inside the S3 bucket")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corrupt-share", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=16, help="S3 upload threads")
    parser.add_argument("--no-index-files", action="store_true",
                        help=f"leave out the {'00Tree.html'} file in each label folder")
    args = parser.parse_args(argv)
    if args.s3_endpoint and not args.bucket:
        parser.error("--s3-endpoint needs --bucket")
    return args


def make_s3_bucket(args: argparse.Namespace, n_clean: int, n_malicious: int) -> SampleSummary:
    import boto3  # only the S3 target needs it; credentials come from the environment

    client = boto3.client("s3", endpoint_url=args.s3_endpoint)
    existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    if args.bucket not in existing:
        client.create_bucket(Bucket=args.bucket)
    return upload_samples_s3(client, args.bucket, root=args.root, n_clean=n_clean,
                             n_malicious=n_malicious, seed=args.seed,
                             corrupt_share=args.corrupt_share,
                             with_index_files=not args.no_index_files, threads=args.threads)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    n_clean = args.n // 2
    n_malicious = args.n - n_clean

    if args.dest:
        summary = write_sample_folder(args.dest, n_clean=n_clean, n_malicious=n_malicious,
                                      seed=args.seed, corrupt_share=args.corrupt_share,
                                      with_index_files=not args.no_index_files)
    else:
        summary = make_s3_bucket(args, n_clean, n_malicious)

    print(f"command:       python {shlex.join(['bench/make_bucket.py', *argv])}")
    print(f"destination:   {summary.destination}")
    print(f"files written: {summary.files_written} ({summary.clean} clean, "
          f"{summary.malicious} malicious, {summary.corrupt} corrupt, "
          f"{summary.index_files} index files)")
    print(f"bytes written: {summary.bytes_written} ({summary.bytes_written / 2**20:.1f} MiB)")
    print(f"seconds:       {summary.seconds:.2f}")
    print(f"files/s:       {summary.files_per_second:.0f}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
