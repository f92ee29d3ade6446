"""Throughput of the parser against pefile's full load, on one core, plus field agreement.

    python bench/bench_parse.py [--rounds N] [PATH ...]

PATH is a file or a folder (searched recursively for .exe/.dll/.sys/.ocx/.efi/.drv/.cpl).
Without PATH: the test fixtures plus Wine's PE files, if libwine is installed.

Each file is read once per round (not timed), then every method runs back to back on the same
bytes, so all see the same cache state. Methods:

- pefile: `pefile.PE(data=...)` plus get_imphash() and get_overlay_data_start_offset(), the
  pefile work behind the table's fields;
- parse_structure: our reader for the same fields (everything but sha256 and entropy);
- parse_pe: the whole record, i.e. parse_structure plus SHA-256 and the byte histogram of
  the whole file, two digests pefile does not compute;
- digests: SHA-256 and the byte histogram alone, no parsing (the ceiling of parse_pe).
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

from pe_assets.pe_parser import (  # noqa: E402
    HAVE_C_BYTE_COUNTS,
    byte_histogram,
    parse_pe,
    parse_structure,
)
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

    seconds = dict.fromkeys(("pefile", "parse_structure", "parse_pe", "digests"), 0.0)
    differing_files = differing_fields = 0
    shown: list[str] = []
    for round_no in range(args.rounds):
        for path in files:
            data = path.read_bytes()
            spent, pe = time_pefile(data)
            seconds["pefile"] += spent
            start = time.perf_counter()
            parse_structure(data)
            seconds["parse_structure"] += time.perf_counter() - start
            start = time.perf_counter()
            ours = parse_pe(data)
            seconds["parse_pe"] += time.perf_counter() - start
            start = time.perf_counter()
            hashlib.sha256(data).digest()
            byte_histogram(data)
            seconds["digests"] += time.perf_counter() - start
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
    rates = {method: runs / spent for method, spent in seconds.items()}
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"files: {len(files)}, rounds: {args.rounds}, {pinning}, "
          f"byte histogram in {'C' if HAVE_C_BYTE_COUNTS else 'numpy'}")
    print(f"median file size: {statistics.median(sizes):,.0f} bytes "
          f"(mean {statistics.mean(sizes):,.0f}, max {max(sizes):,})")
    print(f"{'method':44s} {'files/s':>10s} {'vs pefile':>10s}")
    labels = {
        "pefile": "pefile full load",
        "parse_structure": "parse_structure (the fields pefile gives)",
        "parse_pe": "parse_pe (+ sha256 and entropy)",
        "digests": "sha256 + byte histogram alone",
    }
    for method, label in labels.items():
        print(f"{label:44s} {rates[method]:10.1f} {rates[method] / rates['pefile']:9.1f}x")
    print(f"digests' share of parse_pe time: {seconds['digests'] / seconds['parse_pe']:.0%}")
    print(f"agreement: {differing_fields} differing fields in {differing_files} of "
          f"{len(files)} files")
    for line in shown:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
