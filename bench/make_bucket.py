"""Create a sample bucket (a local folder or an S3 bucket) of N PE files and report how fast
it went.

    python bench/make_bucket.py --n 1000000 --dest /tmp/pe-bucket
    AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \\
        python bench/make_bucket.py --n 10000 --s3-endpoint http://127.0.0.1:5000 --bucket pe

Half of the files go under the clean prefix (0/), half under the malicious one (1/). Most are
synthetic (pe_assets.samples: varied i386/x64/arm64 exe and dll images plus a share of corrupt
files); `--real-share` of them are copies of real PE files: the repository's mingw-w64
fixtures, pip's vendored launchers and, when Debian's libwine is installed, Wine's DLLs and
EXEs. Each copy gets a 16-byte tail (an overlay) of its own, so every object has a distinct
hash and name, as in a real corpus; its headers and tables are untouched.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pe_assets.samples import (
    SampleBucketError,
    SampleSummary,
    upload_samples_s3,
    write_sample_folder,
)

REPO = Path(__file__).resolve().parent.parent

# Exit codes, so a wrapping script can tell bad usage from a failed write.
EXIT_OK = 0
EXIT_WRITE_FAILED = 1
EXIT_USAGE = 2

# Where real PE files are looked for; folders that do not exist are ignored.
WINE_FOLDERS = (
    Path("/usr/lib/x86_64-linux-gnu/wine/i386-windows"),
    Path("/usr/lib/x86_64-linux-gnu/wine/x86_64-windows"),
    Path("/usr/lib/i386-linux-gnu/wine/i386-windows"),
)
PE_SUFFIXES = (".exe", ".dll")

# Real files above this size are left out of the pool: a bucket of a million samples would
# otherwise take tens of GB. The pool still spans 9 KB to this size.
REAL_MAX_SIZE = 2 * 1024 * 1024

# Bytes appended to every real copy to make its hash unique.
REAL_TAIL_SIZE = 16


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
    parser.add_argument("--real-share", type=float, default=0.0,
                        help="share of the n files that are copies of real PE files")
    parser.add_argument("--real-source", type=Path, action="append",
                        help="folder of real PE files (repeatable; default: fixtures, pip's "
                             "launchers and Wine's PE folders)")
    parser.add_argument("--threads", type=int, default=16, help="S3 upload threads")
    parser.add_argument("--no-index-files", action="store_true",
                        help=f"leave out the {'00Tree.html'} file in each label folder")
    args = parser.parse_args(argv)
    if args.s3_endpoint and not args.bucket:
        parser.error("--s3-endpoint needs --bucket")
    if not 0.0 <= args.real_share <= 1.0:
        parser.error("--real-share must be between 0 and 1")
    return args


def default_real_sources() -> list[Path]:
    import pip._vendor.distlib as distlib

    folders = [REPO / "pe_assets_tests" / "fixtures" / "pe", Path(distlib.__file__).parent]
    return folders + [folder for folder in WINE_FOLDERS if folder.is_dir()]


def real_pool(folders: list[Path]) -> list[Path]:
    """Real PE files under `folders`, up to REAL_MAX_SIZE, in a stable order."""
    files = {
        path.resolve()
        for folder in folders
        for path in folder.rglob("*")
        if path.suffix.lower() in PE_SUFFIXES and path.is_file()
        and 0 < path.stat().st_size <= REAL_MAX_SIZE
    }
    return sorted(files)


def real_copies(pool: list[Path], count: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """(sha256 name, bytes) of `count` copies of pool files, each with a tail of its own."""
    rng = random.Random(seed)
    cache: dict[Path, bytes] = {}
    for _ in range(count):
        path = pool[rng.randrange(len(pool))]
        if path not in cache:
            cache[path] = path.read_bytes()
        data = cache[path] + rng.randbytes(REAL_TAIL_SIZE)
        yield hashlib.sha256(data).hexdigest(), data


def write_real_copies(put: Callable[[str, bytes], None], pool: list[Path], n_clean: int,
                      n_malicious: int, seed: int, threads: int) -> tuple[int, int]:
    """Store the real copies under 0/ and 1/; returns (files, bytes)."""
    written = [0, 0]

    def store(item: tuple[str, str, bytes]) -> None:
        prefix, name, data = item
        put(prefix + name, data)

    def items() -> Iterator[tuple[str, str, bytes]]:
        copies = real_copies(pool, n_clean + n_malicious, seed)
        for index, (name, data) in enumerate(copies):
            written[0] += 1
            written[1] += len(data)
            yield ("0/" if index < n_clean else "1/"), name, data

    with ThreadPoolExecutor(threads) as executor:
        for _ in executor.map(store, items()):
            pass
    return written[0], written[1]


def make_s3_client(args: argparse.Namespace):
    import boto3  # only the S3 target needs it; credentials come from the environment

    client = boto3.client("s3", endpoint_url=args.s3_endpoint)
    existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    if args.bucket not in existing:
        client.create_bucket(Bucket=args.bucket)
    return client


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        return make_bucket(args, argv)
    except (SampleBucketError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_WRITE_FAILED


def make_bucket(args: argparse.Namespace, argv: list[str]) -> int:
    n_real = round(args.n * args.real_share)
    n_synthetic = args.n - n_real
    n_clean = n_synthetic // 2
    n_malicious = n_synthetic - n_clean

    pool: list[Path] = []
    if n_real:
        pool = real_pool(args.real_source or default_real_sources())
        if not pool:
            print("error: no real PE files found for --real-share", file=sys.stderr)
            return EXIT_USAGE

    client = None
    if args.dest:
        summary: SampleSummary = write_sample_folder(
            args.dest, n_clean=n_clean, n_malicious=n_malicious, seed=args.seed,
            corrupt_share=args.corrupt_share, with_index_files=not args.no_index_files)
    else:
        client = make_s3_client(args)
        summary = upload_samples_s3(
            client, args.bucket, root=args.root, n_clean=n_clean, n_malicious=n_malicious,
            seed=args.seed, corrupt_share=args.corrupt_share,
            with_index_files=not args.no_index_files, threads=args.threads)

    real_files = real_bytes = 0
    real_seconds = 0.0
    if n_real:
        started = time.perf_counter()
        if args.dest:
            def put(key: str, data: bytes) -> None:
                (args.dest / key).write_bytes(data)
            threads = 4
        else:
            root = args.root.strip("/") + "/" if args.root.strip("/") else ""

            def put(key: str, data: bytes) -> None:
                client.put_object(Bucket=args.bucket, Key=root + key, Body=data)
            threads = args.threads
        real_files, real_bytes = write_real_copies(
            put, pool, n_real // 2 + n_real % 2, n_real // 2, args.seed, threads)
        real_seconds = time.perf_counter() - started

    files = summary.files_written + real_files
    seconds = summary.seconds + real_seconds
    print(f"command:       python {shlex.join(['bench/make_bucket.py', *argv])}")
    print(f"destination:   {summary.destination}")
    print(f"files written: {files} ({summary.clean + summary.malicious} synthetic: "
          f"{summary.clean} clean, {summary.malicious} malicious, {summary.corrupt} corrupt; "
          f"{real_files} real copies from a pool of {len(pool)} files; "
          f"{summary.index_files} index files)")
    total_bytes = summary.bytes_written + real_bytes
    print(f"bytes written: {total_bytes} ({total_bytes / 2**20:.1f} MiB, of which real "
          f"{real_bytes / 2**20:.1f} MiB)")
    print(f"seconds:       {seconds:.2f}")
    print(f"files/s:       {files / seconds:.0f}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
