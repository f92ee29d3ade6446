"""Throughput of parse_pe against pefile's full load, on one core, plus field agreement.

    python bench/bench_parse.py [--rounds N] [PATH ...]

PATH is a file or a folder (searched recursively for .exe/.dll/.sys/.ocx/.efi/.drv/.cpl).
Without PATH: the test fixtures plus Wine's PE files, if libwine is installed.

Each file is read once per round (not timed), then pefile and parse_pe run back to back on
the same bytes, so both see the same cache state. The pefile side is timed as
`pefile.PE(data=...)` plus get_imphash() and get_overlay_data_start_offset(): the pefile work
behind the same fields, without the SHA-256 and entropy that parse_pe also computes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import pefile

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pe_assets.pe_parser import byte_histogram, parse_pe  # noqa: E402
from pe_assets_tests.pefile_reference import (  # noqa: E402
    diff_records,
    reference_from_pe,
    reference_record,
)

PE_SUFFIXES = {".exe", ".dll", ".sys", ".ocx", ".efi", ".drv", ".cpl", ".acm", ".ax"}
DEFAULT_SOURCES = (
    REPO / "pe_assets_tests" / "fixtures" / "pe",
    Path("/usr/lib/x86_64-linux-gnu/wine/i386-windows"),
    Path("/usr/lib/x86_64-linux-gnu/wine/x86_64-windows"),
    Path("/usr/lib/i386-linux-gnu/wine/i386-windows"),
)
# Differences listed in full; the rest are only counted.
SHOWN_DIFFS = 10


def collect_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PE_SUFFIXES
            )
        elif path.is_file():
            files.append(path)
    return files


def pin_to_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    return "not pinned (no sched_setaffinity)"


def time_pefile(data: bytes) -> tuple[float, pefile.PE | None]:
    start = time.perf_counter()
    try:
        pe = pefile.PE(data=data)
        pe.get_imphash()
        pe.get_overlay_data_start_offset()
    except pefile.PEFormatError:
        pe = None
    return time.perf_counter() - start, pe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    files = collect_files(args.paths or [p for p in DEFAULT_SOURCES if p.exists()])
    if not files:
        print("no PE files found", file=sys.stderr)
        return 1
    pinning = pin_to_one_core()
    sizes = [f.stat().st_size for f in files]

    pefile_seconds = ours_seconds = floor_seconds = 0.0
    differing_files = differing_fields = 0
    shown: list[str] = []
    for round_no in range(args.rounds):
        for path in files:
            data = path.read_bytes()
            spent, pe = time_pefile(data)
            pefile_seconds += spent
            start = time.perf_counter()
            ours = parse_pe(data)
            ours_seconds += time.perf_counter() - start
            # The part of parse_pe that touches every byte: SHA-256 and the byte histogram.
            start = time.perf_counter()
            hashlib.sha256(data).digest()
            byte_histogram(data)
            floor_seconds += time.perf_counter() - start
            if round_no == 0:  # agreement, untimed, from the same pefile load
                reference = reference_from_pe(pe, data) if pe else reference_record(data)
                diffs = diff_records(ours, reference)
                if (ours["status"] in ("ok", "partial")) != (reference["status"] == "ok"):
                    diffs["status"] = (ours["status"], reference["status"])
                if diffs:
                    differing_files += 1
                    differing_fields += len(diffs)
                    if len(shown) < SHOWN_DIFFS:
                        shown.append(f"  {path}: {diffs}")
            if pe is not None:
                pe.close()

    runs = len(files) * args.rounds
    pefile_rate = runs / pefile_seconds
    ours_rate = runs / ours_seconds
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"files: {len(files)}, rounds: {args.rounds}, {pinning}")
    print(f"median file size: {statistics.median(sizes):,.0f} bytes "
          f"(mean {statistics.mean(sizes):,.0f}, max {max(sizes):,})")
    print(f"pefile full load: {pefile_rate:10.1f} files/s")
    print(f"parse_pe:         {ours_rate:10.1f} files/s")
    print(f"ratio:            {ours_rate / pefile_rate:10.1f}x")
    print(f"sha256 + byte histogram alone: {runs / floor_seconds:.1f} files/s "
          f"({floor_seconds / ours_seconds:.0%} of parse_pe time; ceiling for the ratio: "
          f"{runs / floor_seconds / pefile_rate:.1f}x)")
    structure_seconds = ours_seconds - floor_seconds
    if structure_seconds > 0:
        print(f"parse_pe less the digests: {runs / structure_seconds:.1f} files/s "
              f"({runs / structure_seconds / pefile_rate:.1f}x; parse_pe time minus the "
              "line above, i.e. reading headers, imports and exports)")
    print(f"agreement: {differing_fields} differing fields in {differing_files} of "
          f"{len(files)} files")
    for line in shown:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
