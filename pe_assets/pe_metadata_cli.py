"""`pe-metadata FILE...`: print one JSON line of PE metadata per file.

Each line holds "path" plus every field of pe_assets.pe_parser.PARSED_FIELDS. Files are
memory-mapped rather than read, so a large file is never copied into memory. A file that
cannot be opened or mapped gets a line with status "unreadable" and makes the exit code 1.
"""

from __future__ import annotations

import argparse
import json
import mmap
import sys
from typing import Any

from pe_assets.pe_parser import empty_record, parse_pe

EXIT_OK = 0
EXIT_UNREADABLE = 1


def describe_file(path: str) -> dict[str, Any]:
    """The metadata record of one file, with its path first."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size == 0:
                record = parse_pe(b"")  # mmap refuses empty files
            else:
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                    record = parse_pe(mapped)
    except OSError as e:
        reason = f"{type(e).__name__}: {e.strerror or e}"
        record = empty_record(0, None, "unreadable", reason[:200])
        record["size"] = None
    return {"path": path, **record}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pe-metadata", description="Print PE metadata as one JSON object per line."
    )
    parser.add_argument("files", nargs="+", metavar="FILE")
    args = parser.parse_args(argv)

    status = EXIT_OK
    for path in args.files:
        record = describe_file(path)
        if record["status"] == "unreadable":
            status = EXIT_UNREADABLE
        print(json.dumps(record), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
